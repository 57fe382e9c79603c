"""Sparsity training (network slimming): an L1 penalty on the prunable BatchNorm γ.

After each backward pass ``s·sign(γ)`` is added to the gradient of every prunable γ (Liu et
al. 2017, as tanluren/yolov3-channel-and-layer-pruning's ``BNOptimizer.updateBN``), which
drives the γ of unimportant channels towards zero so that channel pruning can remove them
with little loss. Which BN layers are prunable:

- mode 0: every BN layer;
- mode 1: every BN layer except those of the convolutions whose output feeds a
  ``[shortcut]`` (their channels are tied across a whole residual chain, so they are
  usually left to layer pruning).

The penalty may decay over training (``constant``; ``step``: s/10 for the second half;
``cosine``: from s down to s/100), and the γ distribution is summarised per epoch (fraction
of |γ| < 0.01, TensorBoard histogram, PNGs) to show whether sparsity is sufficient.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from slimyolo.darknet.graph import Conv, Shortcut
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_path
from slimyolo.prune.importance import bn_gammas
from slimyolo.train.options import SPARSITY_SCHEDULES

SMALL_GAMMA = 0.01


def prunable_bn_layers(model: Darknet, mode: int = 0) -> list[int]:
    """Layer indices of the convolutions whose BN γ sparsity training penalises (see the module docstring)."""
    if mode not in (0, 1):
        raise SlimYoloError(f"prune mode must be 0 (every BN layer) or 1 (all but shortcut inputs), got {mode}")
    graph = model.graph
    users = graph.consumers()
    out = []
    for i, spec in enumerate(graph.specs):
        if not isinstance(spec, Conv) or not spec.batch_normalize:
            continue
        if mode == 1 and any(isinstance(graph.specs[j], Shortcut) for j in users[i]):
            continue
        out.append(i)
    return out


def layer_gammas(model: Darknet, layers: list[int]) -> np.ndarray:
    """|γ| of the given layers' BN, concatenated (float32), as the pruner reads them (:func:`bn_gammas`)."""
    if not layers:
        return np.zeros(0, np.float32)
    gammas = bn_gammas(model)
    return np.concatenate([gammas[i] for i in layers]).astype(np.float32)


def fraction_below(gammas: np.ndarray, threshold: float = SMALL_GAMMA) -> float:
    return float((gammas < threshold).mean()) if gammas.size else 0.0


class Sparsity:
    """Adds the L1 subgradient to the prunable γ after ``backward()``."""

    def __init__(self, model: Darknet, s: float, mode: int = 0, schedule: str = "constant") -> None:
        if s < 0:
            raise SlimYoloError(f"sparsity rate s must not be negative, got {s}")
        if schedule not in SPARSITY_SCHEDULES:
            raise SlimYoloError(f"unknown sparsity schedule {schedule!r}; choose one of "
                                f"{', '.join(SPARSITY_SCHEDULES)}")
        self.s, self.schedule = s, schedule
        self.layers = prunable_bn_layers(model, mode)
        self.weights = [model.module_list[i].bn.weight for i in self.layers]

    def rate(self, epoch: int, epochs: int) -> float:
        """s at 0-based ``epoch`` of ``epochs``."""
        if self.schedule == "step":
            return self.s if epoch < epochs / 2 else self.s * 0.1
        if self.schedule == "cosine":
            return self.s * (0.01 + 0.99 * (1 + math.cos(math.pi * epoch / max(epochs, 1))) / 2)
        return self.s

    @torch.no_grad()
    def apply(self, s: float) -> None:
        for w in self.weights:
            if w.grad is not None:
                w.grad.add_(torch.sign(w.detach()), alpha=s)


def plot_gammas(gammas: np.ndarray, path: str | Path, title: str) -> None:
    """Histogram of |γ| as a PNG (written atomically)."""
    # a Figure of its own, not pyplot's: pyplot's figures are process-global state, and two stages plot at once
    # when the pipeline trains its reference in a thread beside the others
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    top = max(float(gammas.max()) if gammas.size else 1.0, 1e-3)
    ax.hist(gammas, bins=100, range=(0, top), color="tab:blue")
    ax.axvline(SMALL_GAMMA, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("|γ| of prunable BatchNorm channels")
    ax.set_ylabel("channels")
    ax.set_title(f"{title}: {gammas.size} channels, {100 * fraction_below(gammas):.1f}% below {SMALL_GAMMA}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
