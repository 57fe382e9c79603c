"""The best-pruning-point sweep: coarse then fine search around the collapse, the best point,
progress rows, cancellation, and `slimyolo prune sweep` with the real evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_prune_cli import sparse_model
from test_prune_exact import mini_res_cfg

from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.progress import SweepBest, SweepPoint
from slimyolo.prune.options import SweepOptions
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
    result, best_model = sweep(model, evaluate, SweepOptions(percents=(0.1, 0.9, 0.2), max_map_drop=0.01),
                               progress=events.append)
    rows = result.rows
    assert rows[0].method == "baseline" and rows[0].params == base and rows[0].map50 == 0.6
    channel = [r for r in rows if r.method == "channel"]
    coarse = [r for r in channel if r.global_percent in percent_grid(0.1, 0.9, 0.2)]
    fine = channel[len(coarse):]
    assert [r.global_percent for r in coarse][:2] == [0.1, 0.3]
    assert not coarse[-1].within and all(r.within for r in coarse[:-1])  # stopped at the collapse
    assert fine and all(coarse[-2].global_percent < r.global_percent < coarse[-1].global_percent for r in fine)
    assert [r.global_percent for r in fine] == [round(coarse[-2].global_percent + 0.01 * (k + 1), 6)
                                                for k in range(len(fine))]
    within = [r for r in rows if r.within and r.method != "baseline"]
    assert result.best is min(within, key=lambda r: (r.bflops, r.params))
    assert result.best.params >= COLLAPSE * base
    assert not fine[-1].within or fine[-1].global_percent == round(coarse[-1].global_percent - 0.01, 6)
    assert sum(p.numel() for p in best_model.model.parameters()) == result.best.params
    assert best_model.settings["global_percent"] == result.best.global_percent
    assert len(calls) == len(rows)
    assert events == [SweepPoint(r) for r in rows] + [SweepBest(result.best)]
    table = result.table()
    assert "<- best" in table and "best pruning point by bflops: global percent" in table
    assert all(0 < r.removed_fraction < 1 for r in channel) and "asked removed" in table
    assert "sparsity: 80" in table


def test_sweep_with_shortcuts_searches_units_and_both(model):
    base = sum(p.numel() for p in model.parameters())
    evaluate, _ = fake_evaluate(base)
    result, _ = sweep(model, evaluate, SweepOptions(percents=(0.2, 0.8, 0.2), shortcuts=(0, 5, 2)))
    methods = {r.method for r in result.rows}
    assert methods == {"baseline", "channel", "layer", "both"}
    assert [r.shortcuts for r in result.rows if r.method == "layer"][:3] == [2, 4, 5]
    assert all(r.latency_ms is None for r in result.rows)
    within = [r for r in result.rows if r.within and r.method != "baseline"]
    assert result.best is min(within, key=lambda r: (r.bflops, r.params))


def test_cancel_stops_the_sweep(model, tmp_path):
    base = sum(p.numel() for p in model.parameters())
    evaluate, calls = fake_evaluate(base)

    def progress(event):
        if len(calls) == 2:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        sweep(model, evaluate, SweepOptions(percents=(0.1, 0.9, 0.1)), progress=progress)
    assert len(calls) == 2


def test_bad_sweep_arguments(model):
    evaluate, calls = fake_evaluate(1)
    with pytest.raises(SlimYoloError, match=r"SweepOptions: 'percents': need 0 < low <= high < 1"):
        sweep(model, evaluate, SweepOptions(percents=(0.5, 1.0, 0.1)))
    with pytest.raises(SlimYoloError, match="cannot remove 20 residual units: the model has 5"):
        sweep(model, evaluate, SweepOptions(shortcuts=(0, 20, 4)))
    with pytest.raises(SlimYoloError, match=r"SweepOptions: 'max_map_drop' must be at least 0, got -0\.1"):
        sweep(model, evaluate, SweepOptions(max_map_drop=-0.1))  # built in Python, checked as a spec is
    assert calls == []  # nothing was evaluated


@pytest.fixture(scope="module")
def inputs(model, tmp_path_factory) -> list:
    """``--cfg``, ``--weights`` and ``--data`` of the model and a 3-image synthetic validation set."""
    from slimyolo.data.synth import write_synthetic

    tmp = tmp_path_factory.mktemp("sweep-inputs")
    model.cfg.write(tmp / "m.cfg")
    model.save_darknet_weights(tmp / "m.weights")
    data = write_synthetic(tmp / "data", classes=2, train=1, val=3, size=64)
    return ["--cfg", tmp / "m.cfg", "--weights", tmp / "m.weights", "--data", data]


def test_sweep_command_with_real_evaluation(run_cli, inputs, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, stderr = run_cli("prune", "sweep", *inputs, "--percents", "0.4:0.8:0.4", "--shortcuts", "0:5:5",
                                   "--max-images", "2", "--latency-runs", "1", "--out", out)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["best", "sweep.csv", "sweep.json", "sweep.png"]
    saved = json.loads((out / "sweep.json").read_text())
    rows = saved["rows"]
    assert rows[0]["method"] == "baseline"
    assert {r["method"] for r in rows} >= {"channel", "layer"}
    best = saved["best"]
    chosen = min((r for r in rows if r["within"] and r["method"] != "baseline"), key=lambda r: r["bflops"])
    assert best == chosen
    assert saved["objective"] == "bflops" and list(saved["choices"]) == ["bflops"]
    assert all(r["fps"] is None and not r["pareto"] for r in rows)
    assert json.loads((out / "best" / "summary.json").read_text())["after"]["params"] == best["params"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "sweep.csv").read_text().splitlines()) == len(rows) + 1
    assert "mAP@0.5" in stdout and "best pruning point" in stdout
    assert stdout.startswith("# latency: PyTorch CPU, batch 1 at 64x64")
    assert all(r["latency_ms"] > 0 for r in rows)
    code, _, stderr = run_cli("prune", "sweep", *inputs, "--percents", "0.9:0.3", "--out", tmp_path / "x")
    assert code == 2 and "--percents: need 0 < low <= high < 1 and a positive step, got [0.9, 0.3, 0.05]" in stderr
    assert not (tmp_path / "x").exists()


def fake_fps(base_params: int):
    """FPS that peaks at 60% of the parameters and falls beyond (thin layers wait on memory), so
    the fastest point is not the one with the fewest BFLOPs; each distinct model measured once."""
    seen = []

    def fps(m):
        frac = sum(p.numel() for p in m.parameters()) / base_params
        seen.append(frac)
        return 100.0 - 80.0 * abs(frac - 0.6)

    return fps, seen


def test_sweep_by_fps_picks_the_fastest_row_within_the_drop(model, tmp_path):
    from slimyolo.prune.sweep import choose, pareto

    base = sum(p.numel() for p in model.parameters())
    evaluate, _ = fake_evaluate(base)
    fps, seen = fake_fps(base)
    with pytest.raises(SlimYoloError, match="the fps objective needs an FPS measurement"):
        sweep(model, evaluate, SweepOptions(percents=(0.1, 0.9, 0.2), objective="fps"))
    result, best_model = sweep(model, evaluate, SweepOptions(percents=(0.1, 0.9, 0.2), objective="fps"),
                               measure_fps=fps)
    rows = result.rows
    assert len(seen) == len(rows) and all(r.fps is not None for r in rows)
    within = [r for r in rows if r.within and r.method != "baseline"]
    assert result.best is max(within, key=lambda r: r.fps)
    by_bflops = choose(rows, "bflops")
    assert by_bflops is min(within, key=lambda r: r.bflops) and by_bflops is not result.best
    assert result.best.fps > by_bflops.fps and result.best.map50 >= by_bflops.map50
    assert sum(p.numel() for p in best_model.model.parameters()) == result.best.params
    front = pareto(rows)
    for r, on in zip(rows, front, strict=True):  # on the front iff no row is as fast and as accurate, one better
        beaten = any(o.fps >= r.fps and o.map50 >= r.map50 and (o.fps, o.map50) != (r.fps, r.map50) for o in rows)
        assert on == (not beaten)
    assert front[rows.index(result.best)]
    saved = result.as_dict()
    assert saved["objective"] == "fps" and saved["choices"]["fps"] == saved["best"]
    assert saved["choices"]["bflops"]["bflops"] == by_bflops.bflops
    assert [r["pareto"] for r in saved["rows"]] == front
    table = result.table()
    assert "# FPS: measured by the caller" in table and "best pruning point by fps" in table
    assert "(by bflops it would be global percent" in table
    assert any(line.split()[-2:] == ["yes", "<-"] or "P  yes  <- best" in line for line in table.splitlines())
    paths = result.save(tmp_path / "out", best_model)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_fps_meter_caches_by_cfg_digest_and_checks_its_arguments(model, monkeypatch):
    from slimyolo.prune.algorithms import prune_channels
    from slimyolo.prune.speed import FpsMeter

    with pytest.raises(SlimYoloError, match="precision must be one of f32, bf16, int8"):
        FpsMeter("fp64")
    meter = FpsMeter("int8", seconds=0.1, repeats=2)
    measured = []
    monkeypatch.setattr(meter, "measure", lambda m: measured.append(m) or 10.0 * len(measured))
    a = prune_channels(model, 0.5).model
    again = prune_channels(model, 0.5).model  # another object, the same architecture
    assert meter(a) == meter(again) == meter(model) / 2 == 10.0
    assert len(measured) == 2 and len(meter.cache) == 2
    assert all(k.endswith("-int8") for k in meter.cache)
    assert meter.note().startswith("OpenVINO int8 IR (via PyTorch), throughput hint, inference only, best of 2 x 0.1 s")
    assert set(meter.cpu) == {"cpu", "cores", "isa"}


def test_sweep_command_by_measured_fps(run_cli, inputs, tmp_path):
    """The one sweep that really converts and times its points (tiny model, 0.05 s runs): only the
    structure and the choice rule are asserted, never the timings themselves."""
    out = tmp_path / "sweep"
    code, stdout, stderr = run_cli("prune", "sweep", *inputs, "--percents", "0.5:0.7:0.2", "--max-map-drop", "1",
                                   "--max-images", "1", "--latency-runs", "0", "--objective", "fps",
                                   "--fps-seconds", "0.05", "--fps-repeats", "1", "--out", out)
    assert code == 0, stderr
    saved = json.loads((out / "sweep.json").read_text())
    rows = saved["rows"]
    assert [r["method"] for r in rows] == ["baseline", "channel", "channel"]
    assert all(r["fps"] > 0 for r in rows) and any(r["pareto"] for r in rows)
    pruned = [r for r in rows if r["method"] != "baseline"]
    assert saved["best"]["fps"] == max(r["fps"] for r in pruned)  # everything is within a drop of 1
    assert saved["choices"]["bflops"]["global_percent"] == 0.7
    assert saved["cpu"]["cores"] >= 1 and isinstance(saved["cpu"]["isa"], list)
    assert saved["fps_measurement"].startswith("OpenVINO f32 IR (via PyTorch), throughput hint")
    assert "# FPS: OpenVINO f32" in stdout and "best pruning point by fps" in stdout
    assert "FPS" in stdout.splitlines()[3]


def test_the_stage_spec_checks_the_objective_and_its_precision():
    from slimyolo.pipeline import PipelineConfig
    from slimyolo.stages.specs import SweepSpec

    with pytest.raises(SlimYoloError, match="'objective' must be one of bflops, fps, accuracy, got 'speed'"):
        SweepSpec.from_dict({"weights": "a/b", "data": "d", "out": "o", "objective": "speed"})
    with pytest.raises(SlimYoloError, match=r"sweep.*'precision' must be one of f32, bf16, int8"):
        PipelineConfig.from_dict({"name": "n", "model": "yolov4-tiny", "img_size": 64, "data": {"synth": {}},
                                  "sweep": {"objective": "fps", "precision": "fp16"}})


def test_sweep_takes_a_precision_recall_map50_tuple_or_says_what_it_needs(model):
    """The README's `my_eval(Darknet) -> P, R, map50`: a plain tuple works like an EvalResult;
    anything else is an error naming what the evaluation function must return."""
    base = sum(p.numel() for p in model.parameters())
    evaluate, _ = fake_evaluate(base)

    def as_tuple(m):
        r = evaluate(m)
        return r.precision, r.recall, r.map50

    options = SweepOptions(percents=(0.1, 0.9, 0.2))
    by_object, _ = sweep(model, evaluate, options)
    by_tuple, best = sweep(model, as_tuple, options)
    assert [(r.global_percent, r.precision, r.recall, r.map50) for r in by_tuple.rows] == \
        [(r.global_percent, r.precision, r.recall, r.map50) for r in by_object.rows]
    assert by_tuple.best.global_percent == by_object.best.global_percent and best is not None
    for bad in (0.6, {"map50": 0.6}, (0.5, 0.6)):
        with pytest.raises(SlimYoloError, match=r"must return \(precision, recall, map50\) or an object"):
            sweep(model, lambda m, bad=bad: bad, options)
    with pytest.raises(SlimYoloError, match="non-numeric"):
        sweep(model, lambda m: ("a", 0.5, 0.6), options)
