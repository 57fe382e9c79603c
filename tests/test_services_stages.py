"""Stage specs, their requests, the work folder over the store, and the stage runners on a trained model.

The runners are the code every service job, ``slimyolo stage`` Job and pipeline step runs, so
they are checked here directly (in process, local store); tests/test_services_e2e.py runs them
behind the real services and an S3 server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimyolo.errors import Cancelled, FailedPrecondition, NotFoundError, SlimYoloError
from slimyolo.progress import StageStep, SweepPoint
from slimyolo.rpc.gen.v1 import pruner_pb2
from slimyolo.rpc.messages import dict_to_struct
from slimyolo.rpc.stages import spec_from_request, spec_to_request, start_messages
from slimyolo.stages.kinds import KINDS, parse_spec, run_stage
from slimyolo.stages.runners import run_eval, run_prune, run_sweep, run_train
from slimyolo.stages.specs import (
    ConvertSpec,
    DataRef,
    EvalSpec,
    PruneSpec,
    SweepSpec,
    TrainSpec,
)
from slimyolo.stages.workspace import Workspace, folder_files, resolve
from slimyolo.store import Artifact, LocalStore

SHA = "ab" * 32
ART = Artifact("file:///store/blobs/sha256/" + SHA, SHA, 10)
DATA = DataRef(archive=Artifact("file:///store/blobs/sha256/" + "cd" * 32, "cd" * 32, 20), data_file="synth.data")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    return LocalStore(tmp_path / "store")


@pytest.fixture
def mini_store(store, trained_mini, tmp_path):
    """The trained mini detector (cfg, .weights, .pt) and its data set, as trees in a local store."""
    inputs = tmp_path / "inputs"
    shutil.copytree(trained_mini.data.parent, inputs / "synth")
    for path in (trained_mini.cfg, trained_mini.weights, trained_mini.darknet_weights):
        shutil.copy(path, inputs / path.name)
    store.put_tree("inputs", inputs)
    return store


# -- specs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "doc", "message"), [
    ("train", {"data": "d", "out": "runs/x"}, "'cfg' is required unless"),
    ("train", {"cfg": "a/b.cfg", "out": "runs/x"}, "'data' is required"),
    ("train", {"cfg": "a/../b.cfg", "data": "d", "out": "runs/x"}, "'cfg'"),
    ("eval", {"weights": "w/x", "data": "d", "batch_size": 0}, "'batch_size' must be at least 1"),
    ("eval", {"weights": "w/x", "data": "d", "img_size": 100}, "multiple of 32"),
    ("eval", {"weights": "w/x", "data": "d", "colour": "red"}, "unknown field 'colour'"),
    ("eval", {"weights": {"uri": "s3://b/k"}, "data": "d"}, "needs uri, sha256 and size_bytes"),
    ("eval", {"weights": "w/x", "data": {"tree": "d", "archive": "a/b"}}, "exactly one of tree"),
    ("prune", {"weights": "w/x", "out": "o"}, "'global_percent' is required for channel"),
    ("prune", {"weights": "w/x", "out": "o", "method": "layer"}, "at least 1 for layer"),
    ("prune", {"weights": "w/x", "out": "o", "method": "slice", "global_percent": 0.5}, "one of channel, layer"),
    ("sweep", {"weights": "w/x", "data": "d", "out": "o", "percents": [0.9, 0.5, 0.1]}, "low <= high"),
    ("sweep", {"weights": "w/x", "data": "d", "out": "o", "percents": [0.5, 0.9]}, "list of 3 numbers"),
    ("convert", {"weights": "w/x"}, "'name'"),
    ("convert", {"weights": "w/x", "name": "m", "precision": "int8"}, "needs 'calib_data'"),
    ("convert", {"weights": "w/x", "name": "m", "version": "v2"}, "positive integer"),
    ("convert", {"weights": "w/x", "name": "m", "evaluate": True}, "'evaluate' needs 'calib_data'"),
    ("deploy", {}, "unknown stage 'deploy'"),
])
def test_bad_specs_name_the_field(kind, doc, message):
    with pytest.raises(SlimYoloError, match=message):
        parse_spec(kind, doc)


def test_train_settings_are_checked_as_the_training_config():
    with pytest.raises(SlimYoloError, match="unknown field 'epoch'"):
        parse_spec("train", {"cfg": "a/b.cfg", "data": "d", "out": "runs/x", "epoch": 3})
    parse_spec("train", {"cfg": "a/b.cfg", "data": "d", "out": "runs/x", "epochs": 3, "sr": True}).check()


@pytest.mark.parametrize("spec", [
    TrainSpec(DATA, "runs/t", cfg=ART, weights="runs/base/best.weights", options={"epochs": 3, "sr": True}),
    EvalSpec(ART, DataRef(tree="datasets/synth"), img_size=96, batch_size=4),
    PruneSpec(ART, "runs/p", method="both", global_percent=0.7, shortcuts=2, data=DATA),
    SweepSpec(ART, DATA, "runs/s", percents=(0.3, 0.9, 0.2), shortcuts=(0, 4, 2), max_map_drop=0.05),
    ConvertSpec(ART, "det", precision="int8", calib_data=DATA, names=("a", "b"), evaluate=True, bench_seconds=2.0),
])
def test_specs_round_trip_through_yaml(spec):
    doc = yaml.safe_load(yaml.safe_dump(spec.to_dict()))
    assert parse_spec(spec.kind, doc) == spec


# -- requests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    TrainSpec(DATA, "runs/a/t", cfg=ART, weights=ART, teacher_cfg=ART, teacher_weights=ART,
              options={"epochs": 3, "batch_size": 8, "img_size": 96, "sr": True, "s": 0.01, "prune": 0,
                       "lr0": 0.005, "seed": 3, "optimizer": "adam", "augment": {"mosaic": 0.0},
                       "distill_weight": 0.5}),
    TrainSpec(DATA, "runs/t", cfg=ART, options={"finetune": True, "warmup_epochs": 2.5, "lr0": 0.0}),
    EvalSpec(ART, DATA, cfg=ART, img_size=96, batch_size=4, conf_thres=0.25, iou_thres=0.5),
    EvalSpec(ART, DataRef(tree="datasets/synth"), conf_thres=0.0, iou_thres=0.0),
    PruneSpec(ART, "runs/p", cfg=ART, method="both", global_percent=0.7, shortcuts=2, layer_keep=0.1, round_to=8,
              data=DATA, img_size=96, max_images=10),
    PruneSpec(ART, "runs/p", method="layer", shortcuts=1, layer_keep=0.0),
    SweepSpec(ART, DATA, "runs/s", percents=(0.3, 0.9, 0.2), shortcuts=(0, 5, 2), max_map_drop=0.05,
              fine_percent=0.02, max_images=12, latency_runs=1),
    SweepSpec(ART, DATA, "runs/s", percents=(0.3, 0.9, 0.25), shortcuts=(0, 0, 1), max_map_drop=0.0,
              layer_keep=0.0, objective="fps", precision="int8", fps_seconds=0.5, fps_repeats=1),
    ConvertSpec(ART, "det", cfg=ART, version="3", model_repository="repo", via="torch", precision="int8",
                calib_data=DATA, calib_images=20, img_size=96, names=("a", "b"), accuracy_control=True,
                max_drop=0.02, evaluate=True, bench_seconds=1.5, bench_precision="default"),
    ConvertSpec("runs/p/pruned.weights", "det", onnx=True, tolerance=0.5, parity_images=1, ppp="resize"),
])
def test_specs_round_trip_through_requests_unchanged(spec):
    request = spec_to_request(spec)
    back = spec_from_request(spec.kind, type(request).FromString(request.SerializeToString()))
    assert back == spec


def test_a_request_without_a_spec_is_refused_naming_it():
    with pytest.raises(SlimYoloError, match="StartPruneRequest: 'spec' is required"):
        spec_from_request("prune", pruner_pb2.StartPruneRequest())


@pytest.mark.parametrize(("kind", "doc", "message"), [
    ("train", {}, "'data' is required"),
    ("train", {"cfg": "a/b", "data": "d/s", "out": "runs/x", "optimizer": "lion"}, "'optimizer' must be one of"),
    ("sweep", {"weights": "a/b", "data": "d/s", "out": "runs/x", "percents": [0.5, 0.6]}, "list of 3 numbers"),
    ("prune", {"weights": "a/b", "out": "runs/x", "global_percent": 1.5}, "'global_percent' must be below 1"),
    ("convert", {"weights": "a/b", "name": "m", "precision": "int8"}, "needs 'calib_data'"),
    ("convert", {"weights": "a/b", "name": "../m"}, "'name'"),
    ("train", {"cfg": "a/b", "data": "d/s", "out": "runs/x", "seed": 2**60}, "'seed' must be below 2\\*\\*53"),
])
def test_bad_requests_fail_as_the_same_yaml_spec_does(kind, doc, message):
    with pytest.raises(SlimYoloError, match=message) as in_process:
        parse_spec(kind, doc)
    request = start_messages(KINDS[kind])[0](spec=dict_to_struct(doc))
    with pytest.raises(SlimYoloError) as remote:
        spec_from_request(kind, request)
    assert str(remote.value) == str(in_process.value)


# -- the work folder -----------------------------------------------------------------------------------


def test_keys_resolve_through_tree_manifests_and_downloads_are_verified(store, tmp_path):
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    (folder / "best.weights").write_bytes(b"\x00\x02weights")
    (folder / "sub" / "a.txt").write_text("a")
    files = store.put_tree("runs/r1", folder)
    assert resolve(store, "runs/r1/best.weights", "weights") == files["best.weights"]
    assert set(folder_files(store, "runs/r1/sub", "data")) == {"a.txt"}
    with pytest.raises(NotFoundError, match=r"has no file 'nope\.pt'"):
        resolve(store, "runs/r1/nope.pt", "weights")
    with pytest.raises(NotFoundError, match="not in a complete tree"):
        resolve(store, "elsewhere/best.weights", "weights")
    bad = dataclasses.replace(files["best.weights"], sha256="0" * 64)
    with Workspace(store) as ws:
        with pytest.raises(SlimYoloError, match=r"weights: .* has sha256 .* expected 0000.*discarded"):
            ws.file(bad, "weights", "model.weights")
        assert not any((ws.root / "inputs").glob("*.weights"))
        root = ws.root
    assert not root.exists()  # the work folder goes with the run


def test_data_set_archives_must_be_tar_files_that_stay_in_their_folder(store, tmp_path):
    import io
    import tarfile

    (tmp_path / "not.tar").write_bytes(b"no archive here")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with Workspace(store) as ws:
        for archive, message in (("not.tar", "not a readable tar archive"), ("evil.tar", "leads out of the data set")):
            ref = DataRef(archive=store.put_file(tmp_path / archive))
            with pytest.raises(SlimYoloError, match=rf"data\.archive: .*{message}"):
                ws.data(ref, "data")
        assert not (ws.root / "inputs" / "escaped.txt").exists()


# A stage run in another process: it opens a work folder, prints it, and waits to be killed.
HOLD_WORK_FOLDER = """
import sys, time
from slimyolo.stages.workspace import Workspace
from slimyolo.store import LocalStore
print(Workspace(LocalStore(sys.argv[1])).__enter__().root, flush=True)
time.sleep(600)
"""


def test_a_service_starting_removes_the_work_folders_of_killed_runs_only(store, tmp_path, monkeypatch):
    """SIGKILL leaves a run's folder behind; the next service start removes it, and keeps the live ones."""
    import argparse
    import signal
    import tempfile

    import slimyolo.services.pruner as pruner
    from slimyolo.rpc.server import Server, ServerConfig

    runs = [subprocess.Popen([sys.executable, "-c", HOLD_WORK_FOLDER, str(store.root)], stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    try:
        killed, alive = (Path(run.stdout.readline().strip()) for run in runs)
        runs[0].send_signal(signal.SIGKILL)
        runs[0].wait(30)
        (killed / "inputs").mkdir()
        (killed / "inputs" / "data.tar").write_bytes(b"left behind")
        work = killed.parent
        unlocked = Path(tempfile.mkdtemp(prefix="slimyolo-stage-", dir=work))  # as earlier releases made them
        (work / "slimyolo-stage-link").symlink_to(tmp_path / "keep", target_is_directory=True)
        (tmp_path / "keep").mkdir()
        with Workspace(store) as mine:  # a run in progress in this process
            server = Server("pruner", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
            monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
            pruner.build(server, argparse.Namespace())
            assert not killed.exists() and not unlocked.exists()
            assert alive.is_dir() and mine.root.is_dir() and (tmp_path / "keep").is_dir()
        assert runs[1].poll() is None
    finally:
        for run in runs:
            run.kill()
            run.wait(30)


def test_bad_archive_limits_stop_a_service_at_start_up(run_cli, monkeypatch):
    monkeypatch.setenv("SLIMYOLO_ARCHIVE_MAX_MEMBERS", "0")
    code, _, err = run_cli("serve", "pruner", "--port", "0", "--metrics-port", "0")
    assert code == 2 and "SLIMYOLO_ARCHIVE_MAX_MEMBERS: must be at least 1, got 0" in err
    monkeypatch.setenv("SLIMYOLO_ARCHIVE_MAX_MEMBERS", "many")
    code, _, err = run_cli("serve", "trainer", "--port", "0", "--metrics-port", "0")
    assert code == 2 and "SLIMYOLO_ARCHIVE_MAX_MEMBERS='many': expected int" in err


# -- the runners on a trained model ---------------------------------------------------------------------


def test_prune_and_eval_stages_on_the_trained_model(mini_store, trained_mini):
    store = mini_store
    events = []
    pruned = run_prune(store, PruneSpec.from_dict({"cfg": "inputs/mini.cfg", "weights": "inputs/best.pt",
                                                   "out": "runs/pruned", "global_percent": 0.5,
                                                   "data": "inputs/synth"}), events.append)
    assert set(pruned.artifacts) == {"cfg", "weights", "checkpoint", "summary"}
    assert pruned.metrics["after"]["params"] < pruned.metrics["before"]["params"]
    assert pruned.metrics["eval_before"]["map50"] == pytest.approx(trained_mini.map50, abs=1e-6)
    assert StageStep("prune", "evaluate after") in events
    assert store.list_trees("runs") == ["runs/pruned"]
    evaluated = run_eval(store, EvalSpec.from_dict({"cfg": "runs/pruned/pruned.cfg",
                                                    "weights": "runs/pruned/pruned.weights", "data": "inputs/synth"}))
    assert evaluated.metrics["map50"] == pytest.approx(pruned.metrics["eval_after"]["map50"], abs=1e-6)
    assert evaluated.metrics["model"]["params"] == pruned.metrics["after"]["params"]
    assert not evaluated.artifacts
    again: list = []  # the same spec again: the published result, without work
    assert run_prune(store, PruneSpec.from_dict({"cfg": "inputs/mini.cfg", "weights": "inputs/best.pt",
                                                 "out": "runs/pruned", "global_percent": 0.5,
                                                 "data": "inputs/synth"}), again.append) == pruned
    assert [e.step for e in again] == ["finished already"]
    with pytest.raises(FailedPrecondition, match=r"runs/pruned holds a complete tree of another prune spec "
                                                 r"\(differs in cfg: \"inputs/mini.cfg\" → \(not set\); "
                                                 r"data: {\"tree\": \"inputs/synth\"} → \(not set\); "
                                                 r"global_percent: 0.5 → 0.6\)"):
        run_prune(store, PruneSpec.from_dict({"weights": "inputs/best.pt", "out": "runs/pruned",
                                              "global_percent": 0.6}))


def test_train_stage_publishes_the_run_in_darknet_and_slimyolo_formats(mini_store):
    spec = TrainSpec.from_dict({"cfg": "inputs/mini.cfg", "weights": "inputs/best.weights", "data": "inputs/synth",
                                "out": "runs/more", "epochs": 1, "batch_size": 8, "img_size": 96, "threads": 1,
                                "augment": {"mosaic": 0.0}, "max_eval_images": 8})
    main = run_train(mini_store, spec)
    assert set(main.artifacts) == {"cfg", "weights", "checkpoint", "last", "results", "config"}
    assert mini_store.list_trees("runs") == ["runs/more"]
    with Workspace(mini_store) as ws:  # the published cfg and darknet weights load as a model
        from slimyolo.darknet.model import load_model

        load_model(ws.file(main.artifacts["cfg"], "cfg", "m.cfg"), ws.file(main.artifacts["weights"], "w", "m.weights"))


def test_stage_command_runs_a_yaml_spec(mini_store, tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SLIMYOLO_STORE", str(mini_store.root))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"weights": "inputs/best.pt", "data": "inputs/synth", "out": "runs/sweep",
                                    "percents": [0.3, 0.9, 0.3], "max_map_drop": 0.5}))
    code, out, err = run_cli("stage", "sweep", "--spec", spec)
    assert code == 0, err
    result = json.loads(out)
    assert {"sweep", "csv", "plot", "cfg", "weights"} <= set(result["artifacts"])
    assert result["metrics"]["best"] is not None and len(result["metrics"]["rows"]) >= 2
    assert "sweep channel" in err and "sweep best" in err
    spec.write_text(yaml.safe_dump({"weights": "inputs/best.pt", "data": "inputs/synth", "out": "runs/sweep2",
                                    "percent": [0.3, 0.9, 0.3]}))
    code, _, err = run_cli("stage", "sweep", "--spec", spec)
    assert code == 2 and "unknown field 'percent'" in err


def test_convert_stage_publishes_a_model_version_with_its_figures(mini_store):
    spec = ConvertSpec.from_dict({"cfg": "inputs/mini.cfg", "weights": "inputs/best.weights", "name": "mini",
                                  "via": "torch", "precision": "int8", "calib_data": "inputs/synth",
                                  "calib_images": 16, "evaluate": True, "bench_seconds": 0.3,
                                  "model_repository": "repo"})
    events = []
    first = run_stage(mini_store, spec, events.append)
    assert first.metrics["version"] == "1" and first.metrics["model"].endswith("/repo/mini/1")
    assert set(first.artifacts) == {"model.xml", "model.bin", "conversion.json"}
    assert 0 <= first.metrics["eval"]["map50"] <= 1 and first.metrics["bench"]["infer_fps"] > 0
    assert StageStep("convert", "bench", {"seconds": 0.3}) in events
    second = run_stage(mini_store, dataclasses.replace(spec, evaluate=False, bench_seconds=0.0, precision="fp32"))
    assert second.metrics["version"] == "2" and "bench" not in second.metrics
    events.clear()  # a retried conversion of the same spec: the version it published, not a third one
    assert run_stage(mini_store, spec, events.append) == first
    assert [e.step for e in events] == ["finished already"]
    assert mini_store.list_trees("repo") == ["repo/mini/1", "repo/mini/2"]
    with pytest.raises(FailedPrecondition, match=r"version: .*/repo/mini/2 holds a complete tree of another convert "
                                                 r"spec \(differs in bench_seconds: 0.0 → 0.3; evaluate: false → true; "
                                                 r"precision: \"fp32\" → \"int8\"; version: "
                                                 r"\(not set\) → \"2\"\)"):
        run_stage(mini_store, dataclasses.replace(spec, version="2"))


def test_torchrun_train_stage(mini_store, tmp_path):
    """Two DDP processes (gloo): both fetch and train, rank 0 alone publishes the run."""
    spec = tmp_path / "train.yaml"
    spec.write_text(yaml.safe_dump({"cfg": "inputs/mini.cfg", "data": "inputs/synth", "out": "runs/ddp",
                                    "epochs": 1, "batch_size": 8, "img_size": 96, "threads": 1,
                                    "augment": {"mosaic": 0.0}, "max_eval_images": 8}))
    env = dict(os.environ, SLIMYOLO_STORE=str(mini_store.root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slimyolo", "stage", "train", "--spec", str(spec)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # one result: only rank 0 prints
    assert result["artifacts"]["weights"]["uri"].endswith("runs/ddp/best.weights")
    assert mini_store.list_trees("runs") == ["runs/ddp"]
    assert Path(mini_store.root / "runs/ddp/model.cfg").is_file()


def test_the_kubernetes_stage_specs_are_valid_specs():
    specs = yaml.safe_load((Path(__file__).parents[1] / "k8s/jobs/specs.yaml").read_text())["data"]
    assert set(specs) == {"train.yaml", "prune.yaml", "convert.yaml"}
    for name, text in specs.items():
        spec = parse_spec(name.removesuffix(".yaml"), yaml.safe_load(text), name)
        if isinstance(spec, TrainSpec):
            spec.check()


def test_serve_checks_its_flags_before_serving(run_cli):
    code, _, err = run_cli("serve", "trainer", "--port", "5", "--metrics-port", "5")
    assert code == 2 and "the metrics port must differ from the gRPC port" in err
    code, _, err = run_cli("serve", "converter", "--port", "0", "--metrics-port", "0", "--model-repository", "../m")
    assert code == 2 and "--model-repository / SLIMYOLO_MODEL_REPOSITORY: '../m'" in err


def test_an_interrupted_sweep_evaluates_only_the_points_it_had_not_published(mini_store):
    store = mini_store
    doc = {"cfg": "inputs/mini.cfg", "weights": "inputs/best.pt", "data": "inputs/synth",
           "percents": [0.1, 0.9, 0.2], "max_map_drop": 0.5, "latency_runs": 0, "max_images": 8}
    whole = run_sweep(store, SweepSpec.from_dict({**doc, "out": "runs/sweep-whole"}))
    assert whole.metrics["points_reused"] == 0

    cut = SweepSpec.from_dict({**doc, "out": "runs/sweep-cut"})
    points = []

    def stop(event):  # a kill after the third point's checkpoint
        if isinstance(event, SweepPoint):
            points.append(event.row)
            if len(points) == 3:
                raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):
        run_sweep(store, cut, stop)
    assert store.list_trees("runs/sweep-cut/checkpoints") == ["runs/sweep-cut/checkpoints/point-00003"]
    events = []
    again = run_sweep(store, cut, events.append)
    assert again.metrics["points_reused"] == 3
    assert StageStep("sweep", "resume", {"points": 3, "key": "runs/sweep-cut/checkpoints/point-00003"}) in events
    assert [e.row for e in events if isinstance(e, SweepPoint)][:3] == points  # repeated, not evaluated
    same = ("out", "points_reused")
    assert {k: v for k, v in again.metrics.items() if k not in same} == \
           {k: v for k, v in whole.metrics.items() if k not in same}
    for role in ("cfg", "weights"):
        assert again.artifacts[role].sha256 == whole.artifacts[role].sha256
    assert store.list_trees("runs/sweep-cut") == ["runs/sweep-cut"]  # the checkpoints go with the result


def test_stage_prune_prints_the_warnings_prune_channel_prints(store, tmp_path, monkeypatch, run_cli):
    """Asked against removed and the sparsity report warn on stderr alike, in process and in the stage."""
    from conftest import MINI_CFG

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "mini.cfg").write_text(MINI_CFG)
    assert run_cli("init", inputs / "mini.cfg", "--out", inputs / "mini.weights", "--seed", "0")[0] == 0
    store.put_tree("inputs", inputs)
    monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
    # Random γ (none near 0) and a layer floor of 90 %: both warnings.
    code, _, err = run_cli("prune", "channel", "--cfg", inputs / "mini.cfg", "--weights", inputs / "mini.weights",
                           "--global-percent", "0.5", "--layer-keep", "0.9", "--out", tmp_path / "pruned")
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 2, err
    assert "sparsity training did not go far enough" in warnings[0] and "asked to prune 50.0%" in warnings[1]
    spec = tmp_path / "prune.yaml"
    spec.write_text(yaml.safe_dump({"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights", "out": "runs/p",
                                    "global_percent": 0.5, "layer_keep": 0.9}))
    code, out, err = run_cli("stage", "prune", "--spec", spec)
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == warnings
    assert json.loads(out)["metrics"]["warnings"] == [w.removeprefix("warning: ") for w in warnings]


def test_convert_stage_progress_names_store_keys_not_work_folder_paths(store, tmp_path, run_cli):
    from conftest import MINI_CFG

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "mini.cfg").write_text(MINI_CFG)
    assert run_cli("init", inputs / "mini.cfg", "--out", inputs / "mini.weights", "--seed", "0")[0] == 0
    store.put_tree("inputs", inputs)
    events: list = []
    spec = ConvertSpec.from_dict({"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights", "name": "mini",
                                  "via": "torch", "parity_images": 1, "model_repository": "repo"})
    assert run_stage(store, spec, events.append).metrics["version"] == "1"
    steps = {e.step: e.details for e in events if isinstance(e, StageStep)}
    assert steps["load"] == {"cfg": "cfg", "weights": "weights"}
    assert steps["save"] == steps["publish"] == {"path": "repo/mini/1"} and steps["done"]["path"] == "repo/mini/1"
    work = str(tmp_path / "work")
    assert not [e for e in events if work in json.dumps(dataclasses.asdict(e), default=str)]
