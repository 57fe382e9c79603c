"""Importance: how much each channel class and each residual unit matters, from BatchNorm γ.

Network slimming's criterion is |γ|: after sparsity training, a channel whose BN scale is near
zero outputs (almost) the constant act(β) whatever its input, so it carries no information.
A class of channels merged by shortcuts is as important as its most important member (the OR
of the members' masks), and a residual unit as the mean |γ| of the convolution whose output
the shortcut adds.
"""

from __future__ import annotations

import math

import numpy as np

from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.prune.groups import ChannelGroups


def bn_gammas(model: Darknet) -> dict[int, np.ndarray]:
    """|γ| of every convolution with BatchNorm, by layer index (float64)."""
    return {i: block.bn.weight.detach().abs().double().cpu().numpy()
            for i, block in model.conv_blocks() if block.bn is not None}


def class_importance(groups: ChannelGroups, gammas: dict[int, np.ndarray]) -> np.ndarray:
    """Max |γ| over the members of each class; fixed classes (and those without γ) are +inf."""
    imp = np.full(groups.n_classes, -np.inf)
    for i, cls in groups.conv_classes.items():
        if i in gammas:
            np.maximum.at(imp, cls, gammas[i])
        else:
            imp[cls] = np.inf
    imp[groups.fixed] = np.inf
    return imp


def prunable_gammas(groups: ChannelGroups, gammas: dict[int, np.ndarray]) -> np.ndarray:
    """|γ| of every channel that may be pruned (BN convolutions, classes not fixed)."""
    parts = [gammas[i][~groups.fixed[cls]] for i, cls in groups.conv_classes.items() if i in gammas]
    return np.concatenate(parts) if parts else np.zeros(0)


def global_threshold(values: np.ndarray, percent: float) -> float:
    """The |γ| at and below which a channel goes: the ⌈N·percent⌉-th smallest of the N ``values``.

    Channels with |γ| <= threshold are selected, so at least ⌈N·percent⌉ go whatever the ties:
    channels tied at the threshold (exact zeros after masked training, equal tiny values, all γ
    equal) go together. The original projects keep ``|γ| >= sorted[⌊N·percent⌋]``, which on a
    tie at that value removes nothing at all; on distinct values both remove the same channels
    but for the rounding of N·percent, which here is up (at least the asked fraction).
    """
    if not 0.0 < percent < 1.0:
        raise SlimYoloError(f"global percent must be between 0 and 1 (exclusive), got {percent}")
    if values.size == 0:
        raise SlimYoloError("the model has no prunable BatchNorm channel")
    count = max(math.ceil(len(values) * percent - 1e-9), 1)  # the tolerance: 0.3 * 10 is 3.0000000000000004
    return float(np.sort(values)[count - 1])


def unit_importance(gammas: dict[int, np.ndarray], units: list[int]) -> dict[int, float]:
    """Mean |γ| of the convolution right before each residual unit's shortcut."""
    return {s: float(gammas[s - 1].mean()) for s in units}
