"""Pruning: channel pruning, layer pruning, both, and the best-pruning-point sweep.

Layered as VainF/Torch-Pruning is: :mod:`~slimyolo.prune.groups` (which channels are tied,
from the typed layer graph), :mod:`~slimyolo.prune.importance` (BN |γ|),
:mod:`~slimyolo.prune.masks` (threshold, floors, rounding, route-group chunks),
:mod:`~slimyolo.prune.functional` (slice each layer, fold removed constants, rewrite the cfg),
and the algorithms on top (:mod:`~slimyolo.prune.algorithms`, :mod:`~slimyolo.prune.sweep`).
Everything here needs PyTorch, so the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimyolo.prune.algorithms import open_model, prune_both, prune_channels, prune_layers
    from slimyolo.prune.result import PruneResult

_LAZY = {"open_model": "slimyolo.prune.algorithms", "prune_both": "slimyolo.prune.algorithms",
         "prune_channels": "slimyolo.prune.algorithms", "prune_layers": "slimyolo.prune.algorithms",
         "PruneResult": "slimyolo.prune.result"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimyolo.prune' has no attribute {name!r}")


__all__ = ["PruneResult", "open_model", "prune_both", "prune_channels", "prune_layers"]
