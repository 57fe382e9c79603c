"""``slimyolo pipeline run``: the config's checks, the prune point, a tiny run in process, and the reference
trained beside the other stages (when, with which results, and how it stops).

The same pipeline through the services (``--remote``, an S3 store) is tests/test_services_e2e.py.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MINI_CFG

from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.pipeline import LocalRunner, PipelineConfig, prune_point, remote_addresses, run_pipeline
from slimyolo.pipeline.run import concurrent_reference
from slimyolo.progress import Progress, TrainStep
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import ConvertSpec, Spec, SweepSpec, TrainSpec
from slimyolo.store import LocalStore

BASE = {"name": "tiny", "model": "yolov4-tiny", "img_size": 96, "data": {"synth": {"train": 8, "val": 4}}}


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "a/b"}, "'name'"),
    ({"img_size": 100}, "multiple of 32"),
    ({"data": {"synth": {}, "path": "x"}}, "'data'"),
    ({"data": {"synth": {"colours": 3}}}, "'data.synth' takes"),
    ({"base": {"epoch": 3}}, "unknown field 'epoch'"),
    ({"sparsity": {"s": "big"}}, "'s' must be a number"),
    ({"sweep": {"percents": [0.9, 0.1, 0.1]}}, "sweep: 'percents'"),
    ({"prune": {"shortcuts": 2}}, "'global_percent' is required"),
    ({"convert": {"via": "onnx"}}, "'via' must be one of"),
    ({"eval": {"batch_size": 0}}, "'batch_size' must be at least 1"),
    ({"remote": {"trainer": "h:1", "detector": "h:2"}}, "'remote.detector' is not a service"),
    ({"finetune": {"distill": "yes"}}, "'finetune.distill' must be true or false"),
    ({"stages": {}}, "unknown field 'stages'"),
    ({"convert": {"name": "other"}}, "'convert.name' is set by the pipeline"),
    ({"finetune": {"teacher_weights": "x"}}, "'finetune.teacher_weights' is set by the pipeline"),
    ({"reference": {"weights": "x"}}, "'reference.weights' is set by the pipeline"),
    ({"reference": {"epochs": 0}}, "reference: 'epochs' must be at least 1"),
    ({"reference": 3}, "'reference': expected training settings"),
    ({"reference": {"concurrent": "yes"}}, "'reference.concurrent' must be auto, true or false"),
])
def test_config_errors_name_the_setting_before_anything_runs(changes, message):
    with pytest.raises(SlimYoloError, match=message):
        PipelineConfig.from_dict({**BASE, **changes})


def test_the_demo_config_is_valid():
    config = PipelineConfig.from_yaml(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert config.model == "yolov4-tiny" and "synth" in config.data
    # Its claims are measured against the reference on enough validation images that 2 points are not noise.
    assert config.data["synth"]["val"] >= 200 and config.reference is not None


def test_the_raccoon_config_is_valid_and_imports_the_photos_it_names():
    """configs/raccoon.yaml (BENCHMARKS.md section 6) is checked like any config, without reading the photos: the
    import is its first step, with the split the published figures used, and the reference trains for the budget."""
    config = PipelineConfig.from_yaml(Path(__file__).parents[1] / "configs" / "raccoon.yaml")
    assert config.data == {"import": {"format": "voc", "source": "../shared/data/raccoon", "val_fraction": 0.25,
                                      "seed": 0}}
    assert config.model == "yolov4-tiny" and config.img_size <= 256 and config.weights is None
    assert config.epochs("reference") == config.epochs("sparsity") + config.epochs("finetune")


def test_the_reference_trains_the_baseline_for_the_budget_of_sparsity_and_fine_tuning():
    """Every row of the table has had the same training budget: the reference continues the
    baseline with base's settings for sparsity's + fine-tuning's epochs, unless it says otherwise."""
    config = PipelineConfig.from_dict({**BASE, "training": {"lr0": 0.004}, "base": {"epochs": 20, "lr0": 0.002},
                                       "sparsity": {"epochs": 7}, "finetune": {"epochs": 5}})
    assert config.train_options("reference") == {"img_size": 96, "lr0": 0.002, "epochs": 12}
    assert config.epochs("reference") == 12 and config.epochs("base") == 20
    defaults = PipelineConfig.from_dict({**BASE, "finetune": {"epochs": 4}})
    assert defaults.epochs("reference") == 30 + 4  # the trainer's default epochs for sparsity training
    own = PipelineConfig.from_dict({**BASE, "reference": {"epochs": 3}})
    assert own.train_options("reference")["epochs"] == 3
    assert PipelineConfig.from_dict({**BASE, "reference": False}).reference is None  # left out


def test_prune_point_is_the_sweeps_best_unless_the_config_names_one():
    sweep = SweepSpec.from_dict({"weights": "a/b", "data": "d", "out": "o", "layer_keep": 0.1, "round_to": 8})
    found = {"best": {"stage": "both", "global_percent": 0.6, "shortcuts": 2}, "baseline": {"map50": 0.5}}
    assert prune_point(PipelineConfig.from_dict(BASE), sweep, found) == {
        "method": "both", "global_percent": 0.6, "shortcuts": 2, "layer_keep": 0.1, "round_to": 8}
    # ``found`` above is a sweep stored before its rows' ``stage`` became ``method``; today's rows read the same
    today = {**found, "best": {"method": "both", "global_percent": 0.6, "shortcuts": 2}}
    assert prune_point(PipelineConfig.from_dict(BASE), sweep, today) == prune_point(PipelineConfig.from_dict(BASE),
                                                                                    sweep, found)
    configured = PipelineConfig.from_dict({**BASE, "prune": {"global_percent": 0.3}})
    assert prune_point(configured, sweep, found) == {"global_percent": 0.3}
    with pytest.raises(SlimYoloError, match=r"no pruning point within max_map_drop 0\.01 of the baseline mAP@0\.5 "
                                            r"0\.5"):
        prune_point(PipelineConfig.from_dict(BASE), sweep, {"best": None, "baseline": {"map50": 0.5}})


def test_remote_addresses_come_from_the_environment_then_the_config():
    config = PipelineConfig.from_dict({**BASE, "remote": {"trainer": "a:1", "pruner": "b:2"}})
    assert remote_addresses(config, {"SLIMYOLO_PRUNER_ADDRESS": "c:3", "SLIMYOLO_CONVERTER_ADDRESS": "d:4"}) == {
        "trainer": "a:1", "pruner": "c:3", "converter": "d:4"}


def tiny_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """The config of a pipeline run in seconds (MINI_CFG on 32 images), in ``tmp_path`` (work folder too)."""
    (tmp_path / "mini.cfg").write_text(MINI_CFG)
    return {"name": "tiny", "model": str(tmp_path / "mini.cfg"), "img_size": 96, "out": str(tmp_path / "ignored"),
            "data": {"synth": {"classes": 2, "train": 32, "val": 12, "size": 96, "seed": 2}},
            "training": {"batch_size": 8, "optimizer": "adam", "lr0": 0.005, "threads": 1,
                         "augment": {"mosaic": 0.0}},
            "base": {"epochs": 2}, "sparsity": {"epochs": 1, "s": 0.01}, "finetune": {"epochs": 1, "distill": False},
            "sweep": {"percents": [0.5, 0.5, 0.1]}, "prune": {"global_percent": 0.5},
            "convert": {"via": "torch", "calib_images": 8, "parity_images": 1, "bench_seconds": 0.2},
            "reference": {"epochs": 1, "concurrent": True}, **changes}


def test_a_tiny_pipeline_runs_in_process_and_writes_the_table(tmp_path, monkeypatch, run_cli, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("SLIMYOLO_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    code, out, err = run_cli("pipeline", "run", tmp_path / "tiny.yaml", "--out", tmp_path / "runs", "--name", "t1")
    assert code == 0, err
    assert "run t1: after an interruption, continue it with --resume t1" in err
    assert "== [1/15] data set ==" in err and "== [7/15] fine-tuning ==" in err and "train epoch 2/2" in err
    # the reference trains beside sparsity training → fine-tuning: its header at once, its lines prefixed
    assert "== [3/15] the reference: the baseline trained 1 more epochs" in err and ", in the background ==" in err
    assert "\nreference: train epoch 1/1 " in err and "\n-- the reference: " in err
    logged = [r.getMessage() for r in caplog.records if r.threadName == "slimyolo-reference"]
    assert logged and all(m.startswith("reference: ") for m in logged), logged  # its log records too
    assert not any(r.getMessage().startswith("reference: ") for r in caplog.records
                   if r.threadName != "slimyolo-reference")
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["baseline", "reference", "sparse", "pruned", "fine-tuned", "int8"]
    assert rows["pruned"]["params"] < rows["baseline"]["params"] == rows["reference"]["params"]
    # FPS at f32 whatever the CPU's default, so figures of CPUs with and without bf16 compare.
    assert {r["infer_precision"] for r in rows.values()} == {"f32"}
    assert rows["reference"]["infer_fps"] == rows["baseline"]["infer_fps"] > 0  # the same network and IR
    story = results["story"]
    assert [line.split(":")[0] for line in story] == ["base training", "sparsity training", "sweep", "pruning",
                                                      "fine-tuning", "reference", "headline"]
    assert story[1].startswith("sparsity training: 1 epochs (s 0.01) took the prunable |γ| below 0.01 from ")
    assert "asked 50% of the" in story[3] and "headline:" in out
    assert f"mAP@0.5 {100 * (rows['fine-tuned']['map50'] - rows['reference']['map50']):+.1f} points against the " \
           "reference" in story[-1]
    assert stages_of(run_dir)["reference"]["spec"]["weights"] == stages_of(run_dir)["base"]["artifacts"]["weights"]
    assert results["served"] is None  # serving is the remote run's last step
    assert "| fine-tuned |" in out and (run_dir / "results.md").read_text().count("|") > 40
    written = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    assert written["prune"] == {"global_percent": 0.5} and written["reference"] == {"epochs": 1, "concurrent": True}
    store = LocalStore(tmp_path / "store")
    assert store.list_trees("models") == ["models/tiny-baseline/1", "models/tiny-int8/1", "models/tiny/1"]
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["prune"]["spec"]["global_percent"] == 0.5  # the configured point, not the sweep's
    assert stages["finetune"]["spec"].get("teacher_weights") is None

    # Continued: every stage keyed by its out returns what it published; nothing is trained or converted again.
    code, out, err = run_cli("pipeline", "run", tmp_path / "tiny.yaml", "--out", tmp_path / "runs", "--resume", "t1")
    assert code == 0, err
    assert "run t1 (continued)" in err and "train epoch" not in err and err.count("finished already") == 9
    again = json.loads((run_dir / "stages.json").read_text())
    for step, stage in stages.items():
        assert again[step]["spec"] == stage["spec"], step
        assert again[step]["artifacts"] == stage["artifacts"], step
    assert store.list_trees("models") == ["models/tiny-baseline/1", "models/tiny-int8/1", "models/tiny/1"]
    code, out, err = run_cli("pipeline", "run", tmp_path / "tiny.yaml", "--out", tmp_path / "runs", "--resume", "t2")
    assert code == 2 and "--resume: no run 't2' in" in err and "(its folders: t1)" in err


def stages_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages.json").read_text())


class _Until:
    """A LocalRunner that stops the pipeline at the first stage of ``kind`` (raising ``error``), after
    ``wait`` is set when one is given, and keeps what each training stage raised."""

    def __init__(self, store: LocalStore, kind: type[Spec], error: BaseException,
                 wait: threading.Event | None = None) -> None:
        self.local, self.kind, self.error, self.wait = LocalRunner(store), kind, error, wait
        self.raised: dict[str, BaseException] = {}

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        if isinstance(spec, self.kind):
            if self.wait is not None:
                assert self.wait.wait(60)
            raise self.error
        try:
            return self.local.run(spec, progress)
        except BaseException as exc:
            self.raised[spec.out.rsplit("/", 1)[-1] if isinstance(spec, TrainSpec) else spec.kind] = exc
            raise


def test_the_reference_trained_beside_the_other_stages_is_bit_identical_to_the_sequential_one(tmp_path,
                                                                                              monkeypatch):
    """Two trainings, a sweep and pruning in one process at once: the same weights and metrics as one by one.
    The reference trains 3 epochs, so it overlaps sparsity training, the sweep, pruning and fine-tuning."""
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    store = LocalStore(tmp_path / "store")
    stop = SlimYoloError("the test stops before the conversions")
    stages = {}
    for concurrent in (False, True):
        name = f"concurrent-{concurrent}"
        config = PipelineConfig.from_dict(tiny_config(tmp_path, out=str(tmp_path / "runs"),
                                                      reference={"epochs": 3, "concurrent": concurrent}))
        with pytest.raises(SlimYoloError, match="the test stops before the conversions"):
            run_pipeline(config, _Until(store, ConvertSpec, stop), store, say=lambda line: None, name=name)
        stages[concurrent] = stages_of(tmp_path / "runs" / name)
    timing = {"images_per_s", "elapsed_s", "out"}
    for step in ("base", "sparse", "prune", "finetune", "reference"):
        alone, beside = stages[False][step], stages[True][step]
        assert beside["artifacts"]["weights"]["sha256"] == alone["artifacts"]["weights"]["sha256"], step
        assert {k: v for k, v in beside["metrics"].items() if k not in timing} == \
            {k: v for k, v in alone["metrics"].items() if k not in timing}, step
    assert stages[True]["reference"]["metrics"]["epochs"] == 3


def test_a_failure_beside_the_reference_stops_it_before_the_error_surfaces(tmp_path, monkeypatch):
    """The sweep fails while the reference trains beside it: the reference stops at its next step (Cancelled)
    and its thread has ended when run_pipeline raises the sweep's error."""
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    store = LocalStore(tmp_path / "store")
    training = threading.Event()  # the reference is under way

    def reference_progress(event: object) -> None:
        if isinstance(event, TrainStep):
            training.set()

    runner = _Until(store, SweepSpec, SlimYoloError("the sweep broke"), wait=training)
    config = PipelineConfig.from_dict(tiny_config(tmp_path, reference={"epochs": 50, "concurrent": True}))
    with pytest.raises(SlimYoloError, match="the sweep broke"):
        run_pipeline(config, runner, store, say=lambda line: None, background_progress=reference_progress, name="f")
    assert isinstance(runner.raised["reference"], Cancelled)
    assert not [t for t in threading.enumerate() if t.name == "slimyolo-reference"]
    assert "reference" not in stages_of(tmp_path / "ignored" / "f")


def test_a_failing_reference_is_named_when_the_other_stages_are_done(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    store = LocalStore(tmp_path / "store")
    config = PipelineConfig.from_dict(tiny_config(tmp_path, reference={"epochs": 1, "lr0": 1e30, "concurrent": True}))
    with pytest.raises(SlimYoloError, match=r"^the reference stage \(in the background\): training diverged"):
        run_pipeline(config, _Until(store, ConvertSpec, AssertionError("not reached")), store,
                     say=lambda line: None, name="r")
    assert {"sparse", "sweep", "prune", "finetune"} <= set(stages_of(tmp_path / "ignored" / "r"))


class _Remote:
    """A runner that is not LocalRunner: the stages run as jobs of services, which schedule them."""

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        raise AssertionError("not run")


@pytest.mark.parametrize(("changes", "cpus", "beside"), [
    ({}, 2, True),  # training.threads 1: two trainings fit two CPUs
    ({}, 1, False),
    ({"training": {"threads": 2}}, 3, False),
    ({"training": {"threads": 2}}, 4, True),
    ({"training": {}}, 64, False),  # torch's default threads: both would take every core
    ({"training": {"threads": 0}}, 64, False),
    ({"reference": {"threads": 2}}, 64, False),  # torch's thread count is one for the process
    ({"reference": {"threads": 1}}, 2, True),
    ({"finetune": {"epochs": 1, "threads": 2}}, 64, False),
    ({"sweep": {"objective": "fps"}}, 64, False),  # the sweep times FPS here: nothing may run beside it
    ({"sweep": {"objective": "fps", "measure_on": "inference:8001"}}, 64, True),
    ({"sweep": {"latency_runs": 3}}, 64, False),
    ({"reference": {"concurrent": False}}, 64, False),
    ({"reference": {"concurrent": True, "threads": 4}}, 1, True),
    ({"reference": False}, 64, False),
])
def test_the_reference_trains_beside_the_other_stages_when_that_pays(tmp_path, changes, cpus, beside):
    config = PipelineConfig.from_dict({**tiny_config(tmp_path), "reference": {}, **changes})
    assert concurrent_reference(config, LocalRunner(LocalStore(tmp_path)), cpus) is beside
    assert "concurrent" not in config.train_options("reference")  # a pipeline setting, not the trainer's


@pytest.mark.parametrize(("reference", "beside"), [({}, True), ({"concurrent": False}, False)])
def test_a_remote_reference_trains_beside_the_other_stages_unless_the_config_says_not(reference, beside):
    """The trainer service schedules its own jobs: whatever their threads and this machine's CPUs."""
    config = PipelineConfig.from_dict({**BASE, "reference": reference})
    assert concurrent_reference(config, _Remote(), cpus=1) is beside


def test_a_data_set_of_ones_own_travels_as_its_folder(tmp_path):
    from slimyolo.data.synth import write_synthetic
    from slimyolo.pipeline import prepare_data

    data_file = write_synthetic(tmp_path / "mine", classes=2, train=3, val=2, size=64, seed=0)
    config = PipelineConfig.from_dict({**BASE, "data": {"path": str(tmp_path / "mine")}})
    assert prepare_data(config, tmp_path / "run", print) == (data_file.parent, data_file)
    outside = tmp_path / "mine" / "train.txt"
    outside.write_text(outside.read_text() + f"{tmp_path / 'elsewhere.jpg'}\n")
    (tmp_path / "elsewhere.jpg").write_bytes((tmp_path / "mine/images/train/000000.jpg").read_bytes())
    with pytest.raises(SlimYoloError, match=r"data\.path: train\.txt:4: .*elsewhere\.jpg', an absolute path"):
        prepare_data(config, tmp_path / "run", print)
    outside.write_text(outside.read_text().replace(str(tmp_path / "elsewhere.jpg"), "../elsewhere.jpg"))
    with pytest.raises(SlimYoloError, match=r"data\.path: train\.txt:4: .*leads outside the data set.s folder"):
        prepare_data(config, tmp_path / "run", print)
