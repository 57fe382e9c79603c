"""Tie-proof channel selection: at least the asked fraction of prunable channels goes whatever the
ties (exact zeros, equal tiny values, all γ equal), constraints only keep channels back, and
every prune reports asked against removed (CLI table, JSON summary, warnings)."""

from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pytest
import torch
from test_prune_cli import sparse_model
from test_prune_exact import mini_res_cfg

from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights
from slimyolo.prune.algorithms import channel_masks, prune_both, prune_channels
from slimyolo.prune.groups import build_groups
from slimyolo.prune.importance import bn_gammas, prunable_gammas
from slimyolo.prune.options import KeepOptions


@functools.cache
def _base(name: str):
    cfg = mini_res_cfg() if name == "res" else make_cfg(name, 2, 128)
    return init_random_weights(load_model(cfg), seed=2)


def tied(name: str, kind: str, fraction: float = 0.8, seed: int = 0):
    """A model whose prunable |γ| are tied: ``fraction`` of them exactly 0 or 1e-9, or all equal."""
    model = copy.deepcopy(_base(name))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, block in model.conv_blocks():
            if block.bn is None:
                continue
            w = block.bn.weight
            if kind == "equal":
                w.fill_(0.5)
                continue
            w.copy_(torch.from_numpy(rng.uniform(0.05, 1.5, w.numel())).float())
            w[torch.from_numpy(rng.random(w.numel()) < fraction)] = 0.0 if kind == "zeros" else 1e-9
    return model


def removed_gammas(model, masks) -> np.ndarray:
    gammas = bn_gammas(model)
    return np.concatenate([gammas[i][~m] for i, m in masks.items() if i in gammas])


@pytest.mark.parametrize("name", ["res", "yolov4-tiny"])
@pytest.mark.parametrize("kind", ["zeros", "tiny", "equal"])
@pytest.mark.parametrize("percent", [0.5, 0.8])
def test_ties_remove_at_least_the_asked_fraction_up_to_constraints(name, kind, percent):
    model = tied(name, kind)
    values = prunable_gammas(build_groups(model.graph), bn_gammas(model))
    masks, report = channel_masks(model, percent, KeepOptions(layer_keep=0.01))
    assert report.prunable == len(values)
    assert report.selected >= math.ceil(percent * len(values) - 1e-9)  # at least the asked fraction ...
    assert report.selected == int((values <= report.threshold).sum())  # ... and every tie at the threshold
    held = sum(report.kept_back.values())
    assert report.removed == report.selected - held  # ... less only what constraints kept back
    gone = removed_gammas(model, masks)
    assert len(gone) == report.removed
    assert (gone <= report.threshold).all()  # a constraint never made another channel go instead
    if kind == "equal":
        assert report.selected == len(values) and report.kept_back["shortcut groups"] == 0
    if name == "yolov4-tiny":  # no shortcut: only the floor and the route-group chunks keep channels
        assert report.kept_back["shortcut groups"] == 0
        assert report.removed_fraction >= percent - 0.02 or kind == "equal"


def test_the_issue_case_no_longer_removes_nothing():
    """85% of γ exactly 0: 0.79 and 0.8 used to give threshold 0 and remove nothing."""
    model = tied("res", "zeros", fraction=0.85, seed=1)
    before = sum(p.numel() for p in model.parameters())
    for percent in (0.79, 0.8):
        result = prune_channels(model, percent, layer_keep=0.0)
        report = result.channel_report
        assert result.settings["threshold"] == 0.0
        assert result.after.params < 0.7 * before
        assert report.selected == report.removed + sum(report.kept_back.values())
        assert report.removed_fraction < percent  # shortcut groups keep part of the selection back


def test_report_in_the_cli_and_the_json_summary(run_cli, tmp_path):
    model = tied("yolov4-tiny", "equal")
    cfg, weights = tmp_path / "m.cfg", tmp_path / "m.weights"
    model.cfg.write(cfg)
    model.save_darknet_weights(weights)
    code, stdout, stderr = run_cli("prune", "channel", "--cfg", cfg, "--weights", weights, "--global-percent", "0.3",
                                   "--layer-keep", "0.25", "--out", tmp_path / "o")
    assert code == 0, stderr
    assert "channels: asked 30.0% of" in stdout and "kept back: layer floor" in stdout
    assert "sparsity: 0.0% of" in stdout and "below 0.001 (by depth" in stdout
    # all γ equal: everything is tied at the threshold and goes but the floors, far beyond 30%
    assert "asked to prune 30.0% of the prunable channels, removed" in stderr
    assert "sparsity training did not go far enough for 30%" in stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    rep = summary["channel_report"]
    assert rep["asked"] == 0.3 and rep["selected"] == rep["prunable"]
    assert rep["removed"] == rep["selected"] - sum(rep["kept_back"].values()) and rep["kept_back"]["layer floor"] > 0
    assert set(summary["sparsity"]["by_depth"]) == {"shallow", "middle", "deep"}
    assert summary["sparsity"]["below"] == {"0.01": 0.0, "0.001": 0.0}
    assert len(summary["warnings"]) == 2


def test_no_warning_when_removed_is_what_was_asked():
    model = sparse_model(make_cfg("yolov4-tiny", 2, 128))  # 80% of |γ| near 0, no ties
    result = prune_both(model, 0.5, 0, layer_keep=0.0)
    assert abs(result.channel_report.removed_fraction - 0.5) <= 0.05
    assert result.warnings() == []
    assert "layer floor" in result.summary()["channel_report"]["kept_back"]
