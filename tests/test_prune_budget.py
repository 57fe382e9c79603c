"""The sweep to a speed budget (objective accuracy): the most accurate point that reaches ``min_fps`` (or the
cameras' ``streams`` x ``stream_fps``), ties to the fewer BFLOPs; a search that times first and evaluates only
where the budget is; a budget nobody reaches fails naming the fastest point, with no ``best/``; resume of timed
rows from the stage's checkpoints; and FPS measured on an inference service (``measure_on``).

The search logic runs on fakes (FPS and mAP@0.5 as functions of the parameters a point keeps); the command,
the stage and the inference service are real, timed with FPS runs of at most 0.1 s on a 64 px model."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import test_prune_sweep
import yaml

from slimyolo.errors import Cancelled, FailedPrecondition, SlimYoloError
from slimyolo.progress import StageStep, SweepBest, SweepPoint
from slimyolo.prune.options import SweepOptions
from slimyolo.prune.sweep import budget_axis, percent_grid, point_key, sweep
from slimyolo.stages.specs import SweepSpec

PERCENTS = (0.1, 0.9, 0.2)


model = test_prune_sweep.model  # the fixtures: the sweep tests' sparse model, and its cfg, weights and data
inputs = test_prune_sweep.inputs


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


class Fakes:
    """An evaluation and an FPS meter of a point by the fraction of the parameters it keeps, counting their calls:
    mAP@0.5 0.6 (flat: ties) down to ``flat`` of the parameters, then falling with them; FPS 100 / fraction."""

    def __init__(self, base: int, flat: float = 0.6) -> None:
        self.base, self.flat = base, flat
        self.evaluated: list[float] = []
        self.timed: list[float] = []
        self.measured_on = "fake: a CPU of the test"

    def evaluate(self, m) -> tuple[float, float, float]:
        frac = params(m) / self.base
        self.evaluated.append(frac)
        return 0.5, 0.5, 0.6 if frac >= self.flat else round(0.6 * frac / self.flat, 6)

    def __call__(self, m) -> float:
        frac = params(m) / self.base
        self.timed.append(frac)
        return round(100.0 / frac, 3)


def budget_sweep(model, fakes: Fakes, **options):
    return sweep(model, fakes.evaluate, SweepOptions(percents=PERCENTS, objective="accuracy", **options),
                 measure_fps=fakes)


def best_by_the_rule(rows, budget: float):
    """The rule, written out: among evaluated pruned rows whose FPS reaches the budget, the highest mAP@0.5, then the
    fewest BFLOPs."""
    fast = [r for r in rows if r.method != "baseline" and r.map50 is not None and r.fps >= budget]
    top = max(r.map50 for r in fast)
    return min((r for r in fast if r.map50 == top), key=lambda r: (r.bflops, r.params))


def test_budget_axis_times_first_then_evaluates_only_what_reaches_the_budget():
    timed, evaluated = [], []

    def fast_at(v):
        timed.append(v)
        return v >= 0.73

    def map_at(v):
        evaluated.append(v)
        return 0.6 if v <= 0.75 else 0.6 - (v - 0.75)

    assert budget_axis(percent_grid(0.5, 0.9, 0.1), 0.01, fast_at, map_at) == 0.73
    assert timed[:7] == [0.5, 0.6, 0.7, 0.8, 0.75, 0.72, 0.73]  # coarse up to the first fast, the gap below bisected
    assert evaluated == [0.73, 0.75, 0.8]  # the weakest fast point, then stronger ones until mAP falls: 0.9 untimed
    assert 0.9 not in timed
    timed.clear(), evaluated.clear()
    assert budget_axis([2, 4, 6], 1, lambda n: timed.append(n) or n >= 5, lambda n: evaluated.append(n) or 0.5) == 5
    assert timed[:4] == [2, 4, 6, 5] and evaluated == [5, 6]  # a tie goes on to the stronger point
    assert budget_axis([0.5, 0.6], 0.01, lambda v: False, map_at) is None
    evaluated.clear()
    assert budget_axis([0.5, 0.6], 0.01, lambda v: True, map_at) == 0.5 and evaluated == [0.5, 0.6]


def test_the_most_accurate_point_that_reaches_the_budget_ties_to_fewer_bflops(model):
    fakes = Fakes(params(model), flat=0.4)  # points that keep 40 % of the parameters or more tie at 0.6
    events = []
    result, best_model = sweep(model, fakes.evaluate, SweepOptions(percents=PERCENTS, objective="accuracy",
                                                                    min_fps=150.0), measure_fps=fakes,
                               progress=events.append)
    rows = result.rows
    best = result.best
    assert best is best_by_the_rule(rows, 150.0) and best.fps >= 150.0
    ties = [r for r in rows if r.map50 == best.map50 and r.method != "baseline" and r.fps >= 150]
    assert len(ties) >= 2 and best.bflops == min(r.bflops for r in ties)  # several at 0.6: the fewest BFLOPs won
    assert params(best_model.model) == best.params
    assert all(r.fps is not None and r.measured_on == fakes.measured_on for r in rows)
    slow = [r for r in rows if not r.evaluated]
    assert slow and all(r.map50 is None and not r.within for r in slow)  # timed, never evaluated
    below = [r for r in slow if r.fps < 150]
    assert below and all(r.fps >= 150 for r in rows if r.evaluated and r.method != "baseline")
    saved = result.as_dict()
    assert saved["choices"] == {"accuracy": saved["best"]} and saved["best"]["map50"] == best.map50
    assert saved["budget"] == {"min_fps": 150.0, "text": "150 FPS", "points_timed": len(rows),
                               "points_evaluated": len(rows) - len(slow), "evaluations_saved": len(slow)}
    assert saved["measured_on"] == fakes.measured_on
    step = StageStep("sweep", f"the budget saved {len(slow)} evaluations",
                     {"min_fps": 150.0, "timed": len(rows), "evaluated": len(rows) - len(slow), "saved": len(slow)})
    assert events[-2:] == [step, SweepBest(best)]
    assert [e.row for e in events if isinstance(e, SweepPoint) and e.row.evaluated][-1] in rows
    table = result.table()
    assert f"# budget: 150 FPS; {len(slow)} points timed but not evaluated" in table
    assert "below the budget: not evaluated" in table and "best pruning point by accuracy at 150 FPS" in table


def test_the_budget_search_evaluates_fewer_points_than_the_bflops_search(model):
    by_budget, by_bflops = Fakes(params(model)), Fakes(params(model))
    budget, _ = budget_sweep(model, by_budget, min_fps=250.0)
    sweep(model, by_bflops.evaluate, SweepOptions(percents=PERCENTS, max_map_drop=0.3))
    assert len(by_budget.evaluated) < len(by_bflops.evaluated)
    assert len(by_budget.evaluated) == sum(r.evaluated for r in budget.rows)  # every evaluation is a row's
    assert budget.evaluations_saved() == len(by_budget.timed) - len(by_budget.evaluated)  # each timed once
    assert budget.best is best_by_the_rule(budget.rows, 250.0)


def test_the_cameras_form_chooses_as_min_fps_does(model):
    by_fps, by_cameras = Fakes(params(model)), Fakes(params(model))
    a, _ = budget_sweep(model, by_fps, min_fps=200.0)
    b, _ = budget_sweep(model, by_cameras, streams=8, stream_fps=25.0)
    assert (a.best.global_percent, a.best.fps, a.best.map50) == (b.best.global_percent, b.best.fps, b.best.map50)
    assert [point_key(r) for r in a.rows] == [point_key(r) for r in b.rows] and by_fps.timed == by_cameras.timed
    assert b.budget_note == "200 FPS (8 streams x 25 FPS)" and b.min_fps == 200.0
    # A 2x2 mosaic serves four streams an inference: 6 streams need two inferences, 8 frames, a frame time.
    assert SweepOptions(objective="accuracy", streams=6, stream_fps=25.0, mosaic="2x2").budget() == 200.0
    assert SweepOptions(objective="accuracy", streams=4, stream_fps=25.0, mosaic="2x2", min_fps=100).checked()


def test_the_table_says_what_the_budget_leaves_open(model):
    """The weakest point tried already fast enough (a weaker one may be more accurate), or the unpruned model too."""
    weak, _ = budget_sweep(model, Fakes(params(model)), min_fps=105.0)  # 0.1 keeps 87 %: 115 FPS
    assert "(the weakest point tried, global percent 0.100, reaches the budget already" in weak.table()
    unpruned, _ = budget_sweep(model, Fakes(params(model)), min_fps=90.0)
    assert "(the unpruned model reaches the budget too, 100.0 FPS at mAP@0.5 0.6000" in unpruned.table()
    assert "the weakest point tried" not in budget_sweep(model, Fakes(params(model)), min_fps=150.0)[0].table()


@pytest.mark.parametrize(("doc", "message"), [
    ({"objective": "accuracy"}, "'objective' accuracy needs a speed budget: 'min_fps', or 'streams' and"),
    ({"objective": "accuracy", "streams": 4}, "'streams' needs 'stream_fps' too"),
    ({"objective": "accuracy", "min_fps": 90, "streams": 4, "stream_fps": 25},
     "'min_fps' 90 contradicts 'streams' x 'stream_fps': 100 FPS (4 streams x 25 FPS); give one of them"),
    ({"objective": "fps", "min_fps": 100}, "'min_fps' is the speed budget of the accuracy objective"),
    ({"measure_on": "127.0.0.1:50051"}, "'measure_on' says how FPS is measured, and the bflops objective"),
    ({"objective": "fps", "measure_on": "inference"}, "'measure_on' must be an inference service's address"),
    ({"objective": "accuracy", "min_fps": 0}, "'min_fps' must be above 0"),
    ({"objective": "accuracy", "min_fps": 9, "mosaic": "2x3"}, "'mosaic' must be one of 1x1, 2x2"),
])
def test_the_budget_settings_are_checked_where_they_are_read(doc, message):
    with pytest.raises(SlimYoloError, match="^sweep spec: " + message.replace("(", r"\(").replace(")", r"\)")):
        SweepSpec.from_dict({"weights": "a/b", "data": "d", "out": "o", **doc})


def test_a_budget_sweep_resumes_its_timed_and_evaluated_rows(model):
    """Rows timed but not evaluated are checkpointed like the others: a sweep given the first rows of an interrupted
    one (by point_key, as the stage gives them) times and evaluates only what comes after, and ends the same."""
    whole_fakes = Fakes(params(model))
    events = []
    whole, _ = sweep(model, whole_fakes.evaluate, SweepOptions(percents=PERCENTS, objective="accuracy",
                                                               min_fps=150.0), measure_fps=whole_fakes,
                     progress=events.append)
    reported = [e.row for e in events if isinstance(e, SweepPoint)]
    assert len(reported) > len(whole.rows)  # a point timed, then evaluated, is reported twice
    cut = next(i for i in range(len(reported)) if not reported[i].evaluated) + 2
    known = {point_key(r): r for r in reported[:cut]}
    assert len(known) == cut and any(not r.evaluated for r in known.values())
    fakes = Fakes(params(model))
    again_events = []
    again, best_model = sweep(model, fakes.evaluate, SweepOptions(percents=PERCENTS, objective="accuracy",
                                                                  min_fps=150.0), measure_fps=fakes,
                              known=known, progress=again_events.append)
    assert again.rows == whole.rows and again.best == whole.best and params(best_model.model) == whole.best.params
    assert again_events == events  # the same events in the same order: the checkpoints' count stays right
    assert len(fakes.timed) + len(fakes.evaluated) == \
        len(whole_fakes.timed) + len(whole_fakes.evaluated) - sum(1 + r.evaluated for r in known.values())


# -- the stage -------------------------------------------------------------------------------------------------


@pytest.fixture
def swept_store(model, tmp_path, monkeypatch):
    """A local store holding the sparse model and a 3-image synthetic data set, and the stage's FPS measurement
    replaced by the fake meter (``fakes``), its evaluation by the fake evaluation."""
    from slimyolo.data.synth import write_synthetic
    from slimyolo.prune import sweep as sweep_module
    from slimyolo.store import LocalStore
    from slimyolo.train import evaluate as evaluate_module

    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    model.cfg.write(inputs / "m.cfg")
    model.save_darknet_weights(inputs / "m.weights")
    write_synthetic(inputs / "synth", classes=2, train=1, val=3, size=64)
    store = LocalStore(tmp_path / "store")
    store.put_tree("inputs", inputs)
    fakes = Fakes(params(model))
    monkeypatch.setattr(sweep_module, "fps_meter", lambda options, store=None: fakes)
    monkeypatch.setattr(evaluate_module, "evaluator", lambda data, options, progress=None: fakes.evaluate)
    return store, fakes


SPEC = {"cfg": "inputs/m.cfg", "weights": "inputs/m.weights", "data": "inputs/synth", "percents": list(PERCENTS),
        "objective": "accuracy"}


def test_the_stage_resumes_timed_rows_from_its_checkpoints(swept_store):
    from slimyolo.stages.runners import run_sweep

    store, fakes = swept_store
    whole = run_sweep(store, SweepSpec.from_dict({**SPEC, "out": "runs/whole", "streams": 6, "stream_fps": 25}))
    calls = len(fakes.timed) + len(fakes.evaluated)
    assert whole.metrics["choices"]["accuracy"] == whole.metrics["best"] and "cfg" in whole.artifacts
    cut = SweepSpec.from_dict({**SPEC, "out": "runs/cut", "streams": 6, "stream_fps": 25})
    seen = []

    def stop(event):  # a kill once a timed, not evaluated, row and the next one are checkpointed
        if isinstance(event, SweepPoint):
            seen.append(event.row)
            if len(seen) >= 3 and not seen[-2].evaluated:
                raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):
        run_sweep(store, cut, stop)
    fakes.timed.clear(), fakes.evaluated.clear()
    again = run_sweep(store, cut)
    assert again.metrics["points_reused"] >= 1
    assert len(fakes.timed) + len(fakes.evaluated) == calls - sum(1 + r.evaluated for r in seen)
    same = ("out", "points_reused")
    assert {k: v for k, v in again.metrics.items() if k not in same} == \
           {k: v for k, v in whole.metrics.items() if k not in same}


def test_a_budget_no_point_reaches_fails_the_stage_and_publishes_nothing(swept_store):
    from slimyolo.stages.runners import run_sweep

    store, fakes = swept_store
    spec = SweepSpec.from_dict({**SPEC, "out": "runs/fast", "min_fps": 1e6})
    with pytest.raises(FailedPrecondition, match=r"^no point of the sweep reaches 1e\+06 FPS: the fastest, global "
                                                 r"percent 0\.900, runs [\d.]+ FPS; lower the budget.*nothing is "
                                                 "published under"):
        run_sweep(store, spec)
    assert fakes.evaluated == [1.0]  # the baseline alone: nothing else reached the budget
    assert store.list_trees("runs/fast") == [store.list_trees("runs/fast/checkpoints")[0]]  # no tree, no best/
    fakes.timed.clear()
    with pytest.raises(FailedPrecondition, match="no point of the sweep reaches"):
        run_sweep(store, spec)  # a retried Job: from the checkpoint, nothing timed again
    assert fakes.timed == []


def test_the_pruner_service_runs_the_budget_sweep_and_fails_it_when_nothing_reaches_it(swept_store, monkeypatch):
    """The budget and measure_on travel in the sweep request to the pruner service; the job's rows, choice and
    failure are the stage's."""
    import argparse

    import slimyolo.services.pruner as pruner
    from slimyolo.rpc.server import Server, ServerConfig
    from slimyolo.rpc.stages import RemoteRunner
    from slimyolo.store import MANIFEST

    store, fakes = swept_store
    monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
    server = Server("pruner", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
    pruner.build(server, argparse.Namespace(model_repository=None))
    server.start()
    remote = RemoteRunner({"pruner": f"127.0.0.1:{server.port}"})
    try:
        events = []
        spec = SweepSpec.from_dict({**SPEC, "out": "runs/remote", "streams": 6, "stream_fps": 25, "mosaic": "2x2",
                                    "measure_on": "dns:///inference.slimyolo.svc.cluster.local:50051"})
        result = remote.run(spec, events.append)
        assert result.metrics["budget"]["min_fps"] == 200 and result.metrics["best"]["fps"] >= 200
        assert result.metrics["choices"]["accuracy"] == result.metrics["best"]
        timed = [e.row for e in events if isinstance(e, SweepPoint) and not e.row.evaluated]
        assert timed and all(r.measured_on == fakes.measured_on for r in timed)
        assert any(isinstance(e, StageStep) and e.step.startswith("the budget saved") for e in events)
        with pytest.raises(FailedPrecondition, match="no point of the sweep reaches 1e\\+06 FPS: the fastest"):
            remote.run(SweepSpec.from_dict({**SPEC, "out": "runs/remote-fast", "min_fps": 1e6}), events.append)
        assert not store.exists(f"runs/remote-fast/{MANIFEST}")  # nothing published
    finally:
        remote.close()
        server.stop(5)


# -- the command, with real FPS ----------------------------------------------------------------------------------


# the sweep's tests' inputs (cfg, weights, data), with the settings that keep a measured sweep short
FAST = ["--max-images", "1", "--fps-seconds", "0.05", "--fps-repeats", "1", "--objective", "accuracy"]


def test_the_budget_command_with_real_fps(run_cli, inputs, tmp_path):
    """A budget every point reaches (the cameras form: 2 streams at 0.5 FPS), then one nobody does: only the rule and
    the structure are asserted, never a timing."""
    from slimyolo.cpuinfo import cpu_info

    out = tmp_path / "met"
    code, stdout, stderr = run_cli("prune", "sweep", *inputs, *FAST, "--percents", "0.5:0.7:0.2", "--streams", "2",
                                   "--stream-fps", "0.5", "--out", out)
    assert code == 0, stderr
    saved = json.loads((out / "sweep.json").read_text())
    rows = saved["rows"]
    assert saved["objective"] == "accuracy" and saved["budget"]["text"] == "1 FPS (2 streams x 0.5 FPS)"
    assert all(r["fps"] > 1 and r["map50"] is not None for r in rows)
    fast = [r for r in rows if r["method"] != "baseline"]
    top = max(r["map50"] for r in fast)
    assert saved["best"] == min((r for r in fast if r["map50"] == top), key=lambda r: (r["bflops"], r["params"]))
    assert saved["choices"] == {"accuracy": saved["best"]}
    assert all(r["measured_on"].startswith("local (") and cpu_info()["cpu"] in r["measured_on"] for r in rows)
    assert (out / "best" / "pruned.cfg").is_file() and "sweep: the budget saved 0 evaluations" in stderr
    assert "best pruning point by accuracy at 1 FPS (2 streams x 0.5 FPS)" in stdout
    assert "(the unpruned model reaches the budget too" in stdout and "the budget needs no pruning)" in stdout

    out = tmp_path / "unmet"
    code, stdout, stderr = run_cli("prune", "sweep", *inputs, *FAST, "--percents", "0.7:0.7", "--min-fps", "1e7",
                                   "--out", out)
    assert code == 2
    (error,) = [line for line in stderr.splitlines() if line.startswith("slimyolo: error:")]
    saved = json.loads((out / "sweep.json").read_text())
    fastest = max(saved["rows"], key=lambda r: r["fps"])
    name = "global percent 0.700" if fastest["method"] == "channel" else "the unpruned model"
    assert error == f"slimyolo: error: no point of the sweep reaches 1e+07 FPS: the fastest, {name}, runs " \
                    f"{fastest['fps']:.1f} FPS; lower the budget, prune harder (percents, shortcuts) or measure on a " \
                    "faster CPU"
    assert saved["best"] is None and not (out / "best").exists()
    assert [r["map50"] for r in saved["rows"]] == [saved["baseline"]["map50"], None]  # timed, not evaluated


# -- measured on an inference service -----------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path, monkeypatch, start_inference):
    """An inference service on 127.0.0.1 reading the ``models`` prefix of this process's store (SLIMYOLO_STORE)."""
    from slimyolo.rpc.client import connect, wait_ready
    from slimyolo.rpc.gen.v1 import inference_pb2_grpc

    monkeypatch.setenv("SLIMYOLO_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("SLIMYOLO_MODEL_REPOSITORY", raising=False)
    server, plane = start_inference("models", poll_seconds=0.3)
    channel = connect(f"127.0.0.1:{server.port}", health_service="liveness")  # calls reach it before it is ready
    try:
        wait_ready(channel, "liveness", timeout=120)  # serving nothing, it is live but not ready
        yield server, inference_pb2_grpc.InferenceStub(channel)
    finally:
        channel.close()
        server.stop(0)
        plane.close()
        shutil.rmtree(tmp_path / "store", ignore_errors=True)


def test_measured_on_the_inference_service(model, service):
    from slimyolo.cpuinfo import cpu_info
    from slimyolo.prune.speed import RemoteFpsMeter
    from slimyolo.prune.sweep import fps_meter
    from slimyolo.rpc.gen.v1 import inference_pb2

    server, stub = service
    target = f"127.0.0.1:{server.port}"
    options = SweepOptions(percents=(0.5, 0.7, 0.2), objective="accuracy", min_fps=1.0, fps_seconds=0.1,
                           fps_repeats=1, measure_on=target)
    meter = fps_meter(options)
    assert isinstance(meter, RemoteFpsMeter)
    fakes = Fakes(params(model))
    result, best = sweep(model, fakes.evaluate, options, measure_fps=meter)
    assert best is not None and result.best.fps >= 1.0
    here = cpu_info()["cpu"]  # the service is this process: its CPU is ours
    assert all(target in r.measured_on and here in r.measured_on for r in result.rows)
    assert result.measured_on == meter.measured_on and "timed server-side by the inference service" in result.fps_note
    listed = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=60).models
    assert [m.name for m in listed if m.name.startswith("_sweep-")] == []  # no temporary model stays loaded
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    loads = [line for line in text.splitlines()
             if line.startswith('slimyolo_inference_model_loads_total{model="_sweep",result="ok"}')]
    assert loads and float(loads[0].rsplit(" ", 1)[1]) == meter.points == len(meter.cache)


def test_the_kubernetes_sweep_job_measures_on_the_inference_service():
    """k8s/jobs/sweep.yaml: its spec is a valid budget sweep whose measure_on names the inference Service's gRPC port
    by its cluster DNS name in the namespace the Jobs run in."""
    root = Path(__file__).resolve().parents[1]
    docs = [d for d in yaml.safe_load_all((root / "k8s/jobs/sweep.yaml").read_text()) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    spec = SweepSpec.from_dict(yaml.safe_load(config["data"]["sweep.yaml"]), "k8s sweep.yaml")
    assert spec.objective == "accuracy" and spec.budget() == 100
    namespace = yaml.safe_load((root / "k8s/jobs/kustomization.yaml").read_text())["namespace"]
    (service,) = [d for d in yaml.safe_load_all((root / "k8s/base/inference.yaml").read_text())
                  if d and d["kind"] == "Service" and d["metadata"]["name"] == "inference"]
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert spec.measure_on == f"dns:///inference.{namespace}.svc.cluster.local:{port}"
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["stage", "sweep", "--spec", "/config/sweep.yaml"]
    assert {"configMapRef": {"name": "slimyolo-config"}} in container["envFrom"]  # the store the service reads


def test_a_progress_callback_that_stops_a_remote_stage_cancels_its_job(swept_store, monkeypatch):
    """Cancelled raised by the progress callback (the pipeline stopping its reference when the stages beside it
    failed) cancels the job on the service, as Ctrl-C does, instead of leaving it to run on unwatched."""
    import argparse
    import threading

    import slimyolo.services.pruner as pruner
    from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
    from slimyolo.rpc.server import Server, ServerConfig
    from slimyolo.rpc.stages import RemoteRunner
    from slimyolo.store import MANIFEST

    store, fakes = swept_store
    release = threading.Event()
    evaluate = fakes.evaluate

    calls = []

    def held(*args, **kwargs):  # after the first point (and its event), the job waits until the client cancelled it
        calls.append(1)
        if len(calls) > 1:
            release.wait(60)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(fakes, "evaluate", held)
    monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
    server = Server("pruner", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
    pruner.build(server, argparse.Namespace(model_repository=None))
    server.start()
    remote = RemoteRunner({"pruner": f"127.0.0.1:{server.port}"})

    def stop(event):
        raise Cancelled("the stages beside it failed")

    try:
        with pytest.raises(Cancelled, match="the stages beside it failed"):
            remote.run(SweepSpec.from_dict({**SPEC, "out": "runs/stopped", "min_fps": 150}), stop)
        release.set()
        jobs = jobs_pb2_grpc.JobsStub(remote.channel("pruner"))
        (job,) = jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs
        deadline = time.monotonic() + 60
        while job.state not in (common_pb2.JOB_STATE_CANCELLED, common_pb2.JOB_STATE_SUCCEEDED,
                                common_pb2.JOB_STATE_FAILED) and time.monotonic() < deadline:
            time.sleep(0.1)
            job = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=30).job
        assert job.state == common_pb2.JOB_STATE_CANCELLED
        assert not store.exists(f"runs/stopped/{MANIFEST}")  # nothing published
    finally:
        release.set()
        remote.close()
        server.stop(5)
