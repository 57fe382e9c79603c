"""Pruning: channel pruning, layer pruning, both, and the best-pruning-point sweep.

Layered as VainF/Torch-Pruning is: :mod:`~slimyolo.prune.groups` (which channels are tied,
from the typed layer graph), :mod:`~slimyolo.prune.importance` (BN |γ|),
:mod:`~slimyolo.prune.masks` (threshold, floors, rounding, route-group chunks),
:mod:`~slimyolo.prune.functional` (slice each layer, fold removed constants, rewrite the cfg),
and the algorithms on top (:mod:`~slimyolo.prune.algorithms`, :mod:`~slimyolo.prune.sweep`), which
take their settings whole (:mod:`~slimyolo.prune.options`). Everything but the options needs
PyTorch, so those names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimyolo.lazy import lazy_attributes
from slimyolo.prune.options import KeepOptions, PruneOptions, SweepOptions

if TYPE_CHECKING:
    from slimyolo.prune.algorithms import open_model, prune, prune_both, prune_channels, prune_layers
    from slimyolo.prune.result import PruneResult

_LAZY = {"open_model": "slimyolo.prune.algorithms", "prune": "slimyolo.prune.algorithms",
         "prune_both": "slimyolo.prune.algorithms", "prune_channels": "slimyolo.prune.algorithms",
         "prune_layers": "slimyolo.prune.algorithms", "PruneResult": "slimyolo.prune.result"}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["KeepOptions", "PruneOptions", "PruneResult", "SweepOptions", "open_model", "prune",
           "prune_both", "prune_channels", "prune_layers"]
