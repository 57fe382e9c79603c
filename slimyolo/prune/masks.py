"""Channel masks: from a global |γ| threshold to a keep decision per channel class.

A class goes when its importance (max |γ| of its members, i.e. the OR of their masks) is at or
below the threshold, so channels tied at the threshold go together. Then three kinds of
constraints top it up, each by keeping the most important classes not yet kept, until all
hold at once:

- the floor: every prunable convolution keeps at least ``max(⌈layer_keep·channels⌉, 1)``;
- ``round_to``: every convolution keeps a multiple of R channels (or all of them), so pruned
  widths stay friendly to SIMD kernels;
- route groups: each chunk a ``[route] groups=G`` layer slices keeps the same count.

Each step only adds kept classes, so the loop ends (at worst with everything kept, which
satisfies every constraint), and a constraint can only keep channels back: it never makes
the pruner remove a channel above the threshold instead. Which constraint kept each class back
is recorded for the asked-against-removed report (:mod:`slimyolo.prune.report`).
"""

from __future__ import annotations

import math

import numpy as np

from slimyolo.prune.groups import ChannelGroups
from slimyolo.prune.options import KeepOptions

CONSTRAINTS = ("layer floor", "round-to", "route groups")  # the top-ups, in the order they are applied


def keep_classes(groups: ChannelGroups, importance: np.ndarray, threshold: float,
                 options: KeepOptions) -> tuple[np.ndarray, np.ndarray]:
    """(bool per class: kept, int per class: the index in :data:`CONSTRAINTS` + 1 of the
    constraint that kept it back, 0 if none did). ``importance`` is per class (see
    importance.class_importance); ``options`` are checked (:meth:`KeepOptions.checked`)."""
    layer_keep, round_to = options.layer_keep, options.round_to
    keep = groups.fixed | (importance > threshold)
    reason = np.zeros(len(keep), dtype=np.int8)
    convs = [groups.conv_classes[i] for i in groups.prunable_convs()]
    changed = True
    while changed:
        changed = False
        for cls in convs:
            have = int(keep[cls].sum())
            want = max(have, math.ceil(layer_keep * len(cls) - 1e-9), 1)
            changed |= _top_up(keep, reason, 1, importance, cls, want)
            if want % round_to:
                want = min(-(-want // round_to) * round_to, len(cls))
                changed |= _top_up(keep, reason, 2, importance, cls, want)
        for pieces in groups.chunks:
            want = max(int(keep[p].sum()) for p in pieces)
            for p in pieces:
                changed |= _top_up(keep, reason, 3, importance, p, want)
    return keep, reason


def _top_up(keep: np.ndarray, reason: np.ndarray, why: int, importance: np.ndarray, cls: np.ndarray,
            want: int) -> bool:
    """Keep the most important classes of ``cls`` until ``want`` of its positions are kept."""
    have = int(keep[cls].sum())
    if have >= want:
        return False
    candidates = np.unique(cls[~keep[cls]])
    for c in candidates[np.argsort(-importance[candidates], kind="stable")]:
        keep[c] = True
        reason[c] = why
        have += int((cls == c).sum())
        if have >= want:
            break
    return True


def conv_masks(groups: ChannelGroups, keep: np.ndarray) -> dict[int, np.ndarray]:
    """The keep mask of every convolution's output channels."""
    return {i: keep[cls] for i, cls in groups.conv_classes.items()}

