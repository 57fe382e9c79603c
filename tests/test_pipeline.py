"""``slimyolo pipeline run``: the config's checks, the prune point, and a tiny run in process.

The same pipeline through the services (``--remote``, an S3 store) is tests/test_services_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import MINI_CFG

from slimyolo.errors import SlimYoloError
from slimyolo.pipeline import PipelineConfig, prune_point, remote_addresses
from slimyolo.stages.specs import SweepSpec
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


def test_a_tiny_pipeline_runs_in_process_and_writes_the_table(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SLIMYOLO_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "mini.cfg").write_text(MINI_CFG)
    config = {"name": "tiny", "model": str(tmp_path / "mini.cfg"), "img_size": 96, "out": str(tmp_path / "ignored"),
              "data": {"synth": {"classes": 2, "train": 32, "val": 12, "size": 96, "seed": 2}},
              "training": {"batch_size": 8, "optimizer": "adam", "lr0": 0.005, "threads": 1,
                           "augment": {"mosaic": 0.0}},
              "base": {"epochs": 2}, "sparsity": {"epochs": 1, "s": 0.01}, "finetune": {"epochs": 1, "distill": False},
              "sweep": {"percents": [0.5, 0.5, 0.1]}, "prune": {"global_percent": 0.5},
              "convert": {"via": "torch", "calib_images": 8, "parity_images": 1, "bench_seconds": 0.2},
              "reference": {"epochs": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    code, out, err = run_cli("pipeline", "run", tmp_path / "tiny.yaml", "--out", tmp_path / "runs", "--name", "t1")
    assert code == 0, err
    assert "run t1: after an interruption, continue it with --resume t1" in err
    assert "== [1/15] data set ==" in err and "== [6/15] fine-tuning ==" in err and "train epoch 2/2" in err
    assert "== [7/15] the reference: the baseline trained 1 more epochs" in err
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
    assert yaml.safe_load((run_dir / "pipeline.yaml").read_text())["prune"] == {"global_percent": 0.5}
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
