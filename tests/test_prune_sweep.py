"""The best-pruning-point sweep: coarse then fine search around the collapse, the best point,
progress rows, cancellation, and `slimyolo prune sweep` with the real evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_prune_cli import sparse_model
from test_prune_exact import mini_res_cfg

from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.prune.sweep import percent_grid, search_axis, sweep

COLLAPSE = 0.3  # the fake evaluation collapses below 30% of the parameters


@pytest.fixture(scope="module")
def model():
    return sparse_model(mini_res_cfg(), seed=1)


def fake_evaluate(base_params: int):
    """mAP 0.6 while at least COLLAPSE of the parameters remain, then a collapse."""
    calls = []

    def evaluate(m):
        frac = sum(p.numel() for p in m.parameters()) / base_params
        calls.append(frac)
        return SimpleNamespace(precision=0.5, recall=0.5, map50=0.6 if frac >= COLLAPSE else 0.6 * frac)

    return evaluate, calls


def test_search_axis_goes_coarse_then_fine():
    seen = []

    def at(v):
        seen.append(v)
        return SimpleNamespace(within=v <= 0.73)

    assert search_axis(percent_grid(0.5, 0.95, 0.05), 0.01, at) == 0.73
    assert seen == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.71, 0.72, 0.73, 0.74]
    seen.clear()
    assert search_axis([4, 8, 12], 1, lambda n: (seen.append(n), SimpleNamespace(within=n < 10))[1]) == 9
    assert seen == [4, 8, 12, 9, 10]
    assert search_axis([0.5, 0.6], 0.01, lambda v: SimpleNamespace(within=False)) is None
    assert percent_grid(0.5, 0.95, 0.1) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def test_channel_sweep_finds_the_strongest_point_within_the_drop(model):
    base = sum(p.numel() for p in model.parameters())
    evaluate, calls = fake_evaluate(base)
    events = []
    result, best_model = sweep(model, evaluate, percents=(0.1, 0.9, 0.2), max_map_drop=0.01, latency_runs=0,
                               progress=events.append)
    rows = result.rows
    assert rows[0].stage == "baseline" and rows[0].params == base and rows[0].map50 == 0.6
    channel = [r for r in rows if r.stage == "channel"]
    coarse = [r for r in channel if r.global_percent in percent_grid(0.1, 0.9, 0.2)]
    fine = channel[len(coarse):]
    assert [r.global_percent for r in coarse][:2] == [0.1, 0.3]
    assert not coarse[-1].within and all(r.within for r in coarse[:-1])  # stopped at the collapse
    assert fine and all(coarse[-2].global_percent < r.global_percent < coarse[-1].global_percent for r in fine)
    assert [r.global_percent for r in fine] == [round(coarse[-2].global_percent + 0.01 * (k + 1), 6)
                                                for k in range(len(fine))]
    within = [r for r in rows if r.within and r.stage != "baseline"]
    assert result.best is min(within, key=lambda r: r.params)
    assert result.best.params >= COLLAPSE * base
    assert not fine[-1].within or fine[-1].global_percent == round(coarse[-1].global_percent - 0.01, 6)
    assert sum(p.numel() for p in best_model.model.parameters()) == result.best.params
    assert best_model.settings["global_percent"] == result.best.global_percent
    assert len(calls) == len(rows)
    assert [e["row"] for e in events if "row" in e] == [r.__dict__ for r in rows]
    assert events[-1]["best"] == result.best.__dict__
    table = result.table()
    assert "<- best" in table and "best pruning point: global percent" in table


def test_sweep_with_shortcuts_searches_units_and_both(model):
    base = sum(p.numel() for p in model.parameters())
    evaluate, _ = fake_evaluate(base)
    result, _ = sweep(model, evaluate, percents=(0.2, 0.8, 0.2), shortcuts=(0, 5, 2), latency_runs=0)
    stages = {r.stage for r in result.rows}
    assert stages == {"baseline", "channel", "layer", "both"}
    assert [r.shortcuts for r in result.rows if r.stage == "layer"][:3] == [2, 4, 5]
    assert all(r.latency_ms is None for r in result.rows)
    within = [r for r in result.rows if r.within and r.stage != "baseline"]
    assert result.best is min(within, key=lambda r: (r.params, r.bflops))


def test_cancel_stops_the_sweep(model, tmp_path):
    base = sum(p.numel() for p in model.parameters())
    evaluate, calls = fake_evaluate(base)

    def progress(event):
        if len(calls) == 2:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        sweep(model, evaluate, percents=(0.1, 0.9, 0.1), latency_runs=0, progress=progress)
    assert len(calls) == 2


def test_bad_sweep_arguments(model):
    evaluate, calls = fake_evaluate(1)
    with pytest.raises(SlimYoloError, match="global percent must be between 0 and 1"):
        sweep(model, evaluate, percents=(0.5, 1.0, 0.1))
    with pytest.raises(SlimYoloError, match="cannot remove 20 residual units: the model has 5"):
        sweep(model, evaluate, shortcuts=(0, 20, 4))
    assert calls == []  # nothing was evaluated


def test_sweep_command_with_real_evaluation(run_cli, model, tmp_path):
    from slimyolo.data.synth import write_synthetic

    data = write_synthetic(tmp_path / "data", classes=2, train=1, val=3, size=64)
    model.cfg.write(tmp_path / "m.cfg")
    model.save_darknet_weights(tmp_path / "m.weights")
    out = tmp_path / "sweep"
    code, stdout, stderr = run_cli("prune", "sweep", "--cfg", tmp_path / "m.cfg", "--weights", tmp_path / "m.weights",
                                   "--data", data, "--percents", "0.4:0.8:0.4", "--shortcuts", "0:5:5",
                                   "--max-images", "2", "--latency-runs", "1", "--out", out)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["best", "sweep.csv", "sweep.json", "sweep.png"]
    saved = json.loads((out / "sweep.json").read_text())
    rows = saved["rows"]
    assert rows[0]["stage"] == "baseline"
    assert {r["stage"] for r in rows} >= {"channel", "layer"}
    best = saved["best"]
    assert best == min((r for r in rows if r["within"] and r["stage"] != "baseline"), key=lambda r: r["params"])
    assert json.loads((out / "best" / "summary.json").read_text())["after"]["params"] == best["params"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "sweep.csv").read_text().splitlines()) == len(rows) + 1
    assert "mAP@0.5" in stdout and "best pruning point" in stdout
    assert stdout.startswith("# latency: PyTorch CPU, batch 1 at 64x64")
    assert all(r["latency_ms"] > 0 for r in rows)
    code, _, stderr = run_cli("prune", "sweep", "--cfg", tmp_path / "m.cfg", "--weights", tmp_path / "m.weights",
                              "--data", data, "--percents", "0.9:0.3", "--out", tmp_path / "x")
    assert code == 2 and "--percents '0.9:0.3': need LO <= HI" in stderr
    assert not (tmp_path / "x").exists()
