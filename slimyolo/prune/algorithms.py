"""The pruning algorithms: channel pruning, layer pruning, and both in one step.

Each one builds a :class:`~slimyolo.prune.functional.Plan` from BN γ importance and applies it
in a single pass to the original model, so channel and layer pruning together fold their
constants once, on the original weights. :func:`prune` takes a loaded
:class:`~slimyolo.darknet.model.Darknet` (see :func:`open_model`) and the
:class:`~slimyolo.prune.options.PruneOptions` whole, and returns a
:class:`~slimyolo.prune.result.PruneResult`; nothing is written until ``PruneResult.save``.
:func:`prune_channels`, :func:`prune_layers` and :func:`prune_both` are the same call for Python
users who name one method and its strength.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.darknet.cfg import Cfg
from slimyolo.darknet.graph import build_graph
from slimyolo.darknet.model import Darknet, load_model
from slimyolo.errors import SlimYoloError
from slimyolo.prune.functional import Plan, apply_plan, pruned_cfg, surviving
from slimyolo.prune.groups import build_groups, residual_units
from slimyolo.prune.importance import (
    bn_gammas,
    class_importance,
    global_threshold,
    prunable_gammas,
    unit_importance,
)
from slimyolo.prune.masks import conv_masks, keep_classes
from slimyolo.prune.options import KeepOptions, PruneOptions
from slimyolo.prune.report import ChannelReport, SparsityReport, channel_report, sparsity_report
from slimyolo.prune.result import PruneResult


def open_model(cfg: Cfg | str | Path | None, weights: str | Path | None) -> Darknet:
    """Load the model to prune; a ``.pt`` checkpoint carries its own cfg, so ``cfg`` may be None
    (the same as :func:`~slimyolo.darknet.model.load_model`)."""
    return load_model(cfg, weights)


def choose_units(model: Darknet, shortcuts: int) -> list[int]:
    """The ``shortcuts`` residual units of lowest importance (their shortcut indices, sorted)."""
    units = residual_units(model.graph)
    if shortcuts > len(units):
        raise SlimYoloError(f"cannot remove {shortcuts} residual units: the model has {len(units)} that "
                            f"can be removed (shortcut layers {', '.join(map(str, units)) or 'none'})")
    scores = unit_importance(bn_gammas(model), units)
    ranked = sorted(units, key=lambda s: (scores[s], s))
    return sorted(ranked[:shortcuts])


def channel_threshold(model: Darknet, global_percent: float) -> float:
    """The |γ| threshold at the ``global_percent`` quantile of the model's prunable channels
    (channels at or below it are selected, see :func:`~slimyolo.prune.importance.global_threshold`)."""
    groups = build_groups(model.graph)
    return global_threshold(prunable_gammas(groups, bn_gammas(model)), global_percent)


def model_sparsity(model: Darknet) -> SparsityReport:
    """How far sparsity training went: |γ| near zero among the model's prunable channels."""
    return sparsity_report(build_groups(model.graph), bn_gammas(model))


def channel_masks(model: Darknet, global_percent: float, keep: KeepOptions | None = None,
                  units: frozenset[int] = frozenset()) -> tuple[dict[int, np.ndarray], ChannelReport]:
    """Keep masks of every convolution (original indices) once ``units`` are gone, and the
    asked-against-removed report; ``keep`` says what every layer keeps whatever the threshold (None:
    the defaults).

    The threshold is the ``global_percent`` quantile over the prunable channels of the
    *original* model, as the original projects compute it. The channel groups are those of the
    network *without* the removed units (removing a unit joins the shortcut chains on either
    side of it), and the report counts the prunable channels of that network.
    """
    keep = KeepOptions.taken_from(keep).checked() if keep is not None else KeepOptions()
    threshold = channel_threshold(model, global_percent)
    layer_plan = Plan(units=units)
    old_of = {new: old for old, new in surviving(model.graph, layer_plan).items()}
    graph = build_graph(pruned_cfg(model.cfg, model.graph, layer_plan)) if units else model.graph
    groups = build_groups(graph)
    gammas = bn_gammas(model)
    new_gammas = {new: gammas[old] for new, old in old_of.items() if old in gammas}
    importance = class_importance(groups, new_gammas)
    kept, reason = keep_classes(groups, importance, threshold, keep)
    report = channel_report(groups, new_gammas, importance, kept, reason, global_percent, threshold)
    return {old_of[i]: mask for i, mask in conv_masks(groups, kept).items()}, report


def prune(model: Darknet, options: PruneOptions) -> PruneResult:
    """Prune ``model`` at the point ``options`` describes (its ``method``: channel, layer or both), checked first.

    The one entry the stage runner and ``slimyolo prune`` call: the options arrive whole, so a field
    added to them reaches the code that uses it without passing through here.
    """
    options = options.checked()
    if options.method == "layer":
        units = frozenset(choose_units(model, options.shortcuts))
        plan = Plan(units=units)
        return PruneResult.build("layer", model, apply_plan(model, plan), plan,
                                 settings={"shortcuts": options.shortcuts}, unit_importance=_unit_scores(model, units))
    assert options.global_percent is not None  # checked: channel and both require it
    shortcuts = options.shortcuts if options.method == "both" else 0
    sparsity = model_sparsity(model)
    units = frozenset(choose_units(model, shortcuts))
    masks, report = channel_masks(model, options.global_percent, options, units)
    plan = Plan(masks, units)
    settings = {"global_percent": options.global_percent, "threshold": report.threshold,
                **KeepOptions.taken_from(options).to_dict()}
    if shortcuts:
        settings["shortcuts"] = shortcuts
    return PruneResult.build(options.method, model, apply_plan(model, plan), plan, settings=settings,
                             unit_importance=_unit_scores(model, units), channel_report=report, sparsity=sparsity)


def prune_channels(model: Darknet, global_percent: float, **keep: Any) -> PruneResult:
    """Channel pruning at one global |γ| threshold (see the package docstring); ``keep``: the
    :class:`~slimyolo.prune.options.KeepOptions` fields (``layer_keep``, ``round_to``, ...) by name."""
    return prune(model, PruneOptions(method="channel", global_percent=global_percent, **keep))


def prune_layers(model: Darknet, shortcuts: int) -> PruneResult:
    """Remove the ``shortcuts`` least important residual units (shortcut + its two convolutions)."""
    return prune(model, PruneOptions(method="layer", shortcuts=shortcuts))


def prune_both(model: Darknet, global_percent: float, shortcuts: int, **keep: Any) -> PruneResult:
    """Layer and channel pruning in one step (see :func:`channel_masks` for the threshold); no
    ``shortcuts`` is channel pruning alone. ``keep`` as in :func:`prune_channels`."""
    return prune(model, PruneOptions(method="both" if shortcuts else "channel", global_percent=global_percent,
                                     shortcuts=shortcuts, **keep))


def _unit_scores(model: Darknet, units: frozenset[int]) -> dict[int, float]:
    return unit_importance(bn_gammas(model), sorted(units))
