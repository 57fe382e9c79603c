"""The trainer: it learns, resumes exactly, sparsifies, fine-tunes, survives bad data, runs under DDP."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import mini_cfg

from slimyolo.darknet.cfg import parse_cfg_text
from slimyolo.darknet.model import Darknet, load_model
from slimyolo.darknet.weights import checkpoint_cfg, read_checkpoint, save_checkpoint
from slimyolo.data.augment import AugmentConfig
from slimyolo.data.synth import write_synthetic
from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.progress import TrainEpoch, TrainStep
from slimyolo.train.config import TrainConfig
from slimyolo.train.evaluate import evaluate
from slimyolo.train.sparsity import fraction_below, prunable_bn_layers
from slimyolo.train.trainer import resume, train

MINI_CFG = mini_cfg(128)
NO_MOSAIC = {"mosaic": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = write_synthetic(root / "synth", classes=2, train=48, val=16, size=128, seed=0)
    cfg = root / "mini.cfg"
    cfg.write_text(MINI_CFG)
    return root, data, cfg


def _config(work, out: str, **kw) -> TrainConfig:
    root, data, cfg = work
    base = {"data": str(data), "cfg": str(cfg), "out": str(root / out), "img_size": 64, "epochs": 3,
            "batch_size": 16, "threads": 1, "eval_interval": 100, "augment": AugmentConfig(**NO_MOSAIC)}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def base_run(work):
    events = []
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train(_config(work, "base", img_size=128, epochs=15, batch_size=8, optimizer="adam", lr0=0.005,
                           eval_interval=5), events.append)
    torch.set_num_threads(with_threads)
    return result, events


def test_training_learns(work, base_run):
    """15 epochs of 48 images (90 steps, about a minute on one core) reach mAP@0.5 ≈ 0.1 on the
    validation images (0.097 when written), about 20× an untrained model's (≈ 0.005)."""
    data = work[1]
    result, events = base_run
    untrained = evaluate(Darknet(parse_cfg_text(MINI_CFG), 128), data).map50
    assert result.best_map50 > 0.05 and result.best_map50 > 5 * untrained
    assert result.epochs == 15 and result.images_per_s > 0
    rows = list(csv.DictReader(result.results_csv.open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 16))
    assert [r["map50"] != "" for r in rows] == [(e % 5 == 0) for e in range(1, 16)]  # eval_interval 5
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # The files of the docstring, all loadable on their own; the curve is a picture of the CSV's epochs.
    curve = cv2.imread(str(result.run_dir / "results.png"))
    assert curve is not None and curve.shape[1] > curve.shape[0] > 200
    saved = TrainConfig.from_yaml(result.config)
    assert saved.lr0 == 0.005 and saved.warmup_epochs == 3.0 and saved.optimizer == "adam"
    best = load_model(checkpoint_cfg(result.best), result.best)
    assert read_checkpoint(result.best)["map50"] == pytest.approx(result.best_map50)
    assert evaluate(best, data).map50 == pytest.approx(result.best_map50, abs=1e-9)
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 15 * 6 and {"box", "obj", "cls"} <= set(steps[0].losses) and steps[0].lr >= 0
    epochs = [e for e in events if isinstance(e, TrainEpoch)]
    assert len(steps) + len(epochs) == len(events)
    assert epochs[4].map50 > 0 and epochs[4].phase == "train" and epochs[4].bad_images == 0
    assert [e.evaluated for e in epochs] == [(e % 5 == 0) for e in range(1, 16)]
    assert epochs[0].map50 is None and epochs[0].per_class == () and len(epochs[4].per_class) == 2
    assert epochs[-1].gamma_below_001 == pytest.approx(float(rows[-1]["gamma_below_0.01"]), rel=1e-5)
    assert _tensorboard_tags(result.run_dir / "tensorboard") >= {"bn_weights/hist", "metrics/map50", "train/box"}


def _tensorboard_tags(folder: Path) -> set[str]:
    """Tags in TensorBoard event files (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboard.compat.proto.event_pb2 import Event

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + length + 4
    return tags


def test_eval_cli_reproduces_the_run(run_cli, work, base_run):
    _, data, _ = work
    result, _ = base_run
    code, out, _ = run_cli("eval", "--weights", result.best, "--data", data, "--img-size", "128", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["map50"] == pytest.approx(result.best_map50, abs=1e-9)
    assert {"precision", "recall", "map50", "f1", "per_class"} <= set(doc) and len(doc["per_class"]) == 2
    code, out, _ = run_cli("eval", "--weights", result.best, "--data", data, "--img-size", "128")
    assert code == 0 and out.splitlines()[0].split() == ["class", "targets", "P", "R", "mAP@0.5", "F1"]
    assert out.splitlines()[-1].startswith("all")


def test_resume_continues_exactly(work):
    whole = train(_config(work, "whole"))

    def stop(event):
        if isinstance(event, TrainStep) and event.epoch == 2 and event.step == 2:
            raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):
        train(_config(work, "cut"), stop)
    cut_dir = Path(_config(work, "cut").out)
    assert read_checkpoint(cut_dir / "last.pt")["epoch"] == 1  # the last complete epoch, whole
    assert len(list(csv.DictReader((cut_dir / "results.csv").open()))) == 1
    assert not list(cut_dir.glob(".*tmp"))
    resumed = resume(cut_dir)
    a, b = read_checkpoint(whole.last), read_checkpoint(resumed.last)
    for key in ("raw_model", "model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resuming"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    losses = [[r[k] for k in ("lr", "box", "obj", "cls", "gamma_below_0.01")]
              for r in csv.DictReader(whole.results_csv.open())]
    assert losses == [[r[k] for k in ("lr", "box", "obj", "cls", "gamma_below_0.01")]
                      for r in csv.DictReader(resumed.results_csv.open())]
    with pytest.raises(SlimYoloError, match="already finished"):
        resume(cut_dir)
    with pytest.raises(SlimYoloError, match="already holds a training run"):
        train(_config(work, "cut"))


def test_resume_inside_an_epoch_continues_exactly(work):
    """checkpoint_steps: last.pt every N steps inside an epoch; a run stopped after such a save goes
    on from that step (the same batches, loss sums and LR), not from the epoch's start."""
    whole = train(_config(work, "whole-steps", batch_size=8))  # 48 images: 6 steps an epoch

    def stop(event):
        if isinstance(event, TrainStep) and event.epoch == 2 and event.step == 5:
            raise Cancelled("stopped by the test")

    with pytest.raises(Cancelled):
        train(_config(work, "cut-steps", batch_size=8, checkpoint_steps=2), stop)
    cut_dir = Path(_config(work, "cut-steps").out)
    saved = read_checkpoint(cut_dir / "last.pt")
    assert (saved["epoch"], saved["step"], saved["epoch_seen"]) == (1, 4, 32)  # steps 2 and 4 of epoch 2 saved
    steps: list[TrainStep] = []
    resumed = resume(cut_dir, lambda e: isinstance(e, TrainStep) and steps.append(e))
    assert (steps[0].epoch, steps[0].step) == (2, 5)  # the first step not yet done
    a, b = read_checkpoint(whole.last), read_checkpoint(resumed.last)
    for key in ("raw_model", "model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resuming inside an epoch"
    losses = [[r[k] for k in ("lr", "box", "obj", "cls")] for r in csv.DictReader(whole.results_csv.open())]
    assert losses == [[r[k] for k in ("lr", "box", "obj", "cls")] for r in csv.DictReader(resumed.results_csv.open())]


def _small_gammas_checkpoint(path: Path) -> None:
    """A model whose BN γ are spread over [0, 0.05], as after some sparsity: the penalty's effect shows fast."""
    model = Darknet(parse_cfg_text(MINI_CFG), 64)
    gen = torch.Generator().manual_seed(0)
    for _, block in model.conv_blocks():
        if block.bn is not None:
            block.bn.weight.data = torch.rand(block.bn.weight.shape, generator=gen) * 0.05
    save_checkpoint(model, path)


def test_sparsity_training_pushes_gammas_to_zero(work):
    root = work[0]
    start = root / "small_gammas.pt"
    _small_gammas_checkpoint(start)
    common = {"weights": str(start), "epochs": 2, "warmup_epochs": 0.0, "lr0": 0.01}
    plain = train(_config(work, "plain", **common))
    sparse = train(_config(work, "sparse", sr=True, s=0.05, prune=1, **common))

    def below(result) -> float:
        model = Darknet(parse_cfg_text(MINI_CFG), 64)
        model.load_state_dict(read_checkpoint(result.last)["raw_model"])
        return fraction_below(np.concatenate([model.module_list[i].bn.weight.detach().abs().numpy()
                                              for i in prunable_bn_layers(model, 1)]))

    assert below(sparse) > below(plain) + 0.1
    rows = list(csv.DictReader(sparse.results_csv.open()))
    assert rows[-1]["phase"] == "sparsity" and float(rows[-1]["s"]) == 0.05
    assert (sparse.run_dir / "gamma_start.png").read_bytes()[:4] == b"\x89PNG"
    assert (sparse.run_dir / "gamma_end.png").stat().st_size > 1000
    assert not (plain.run_dir / "gamma_end.png").exists()


def test_prunable_layers_by_mode():
    model = Darknet(parse_cfg_text(MINI_CFG))
    assert prunable_bn_layers(model, 0) == [0, 1, 2, 3, 4, 6]
    assert prunable_bn_layers(model, 1) == [0, 1, 3, 6]  # 2 and 4 feed the shortcut


def test_finetune_with_teacher_bf16_multiscale(work, base_run):
    teacher = base_run[0].best
    result = train(_config(work, "ft", weights=str(teacher), teacher_weights=str(teacher), finetune=True,
                           epochs=1, bf16=True, multi_scale=True, save_weights=True, cfg=None))
    saved = TrainConfig.from_yaml(result.config)
    assert saved.warmup_epochs == 0.25 and saved.phase == "finetune"  # a quarter of its one epoch
    row = next(csv.DictReader(result.results_csv.open()))
    assert row["phase"] == "finetune" and float(row["distill"]) > 0
    model = load_model(checkpoint_cfg(result.best), result.best)
    darknet = Darknet(model.cfg)
    darknet.load_darknet_weights(result.weights)  # best.weights holds the same numbers
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(tensor, darknet.state_dict()[name])


def test_bad_data_is_skipped_and_counted(work, tmp_path):
    _, data, cfg = work
    copy = tmp_path / "copy"
    shutil.copytree(data.parent, copy)
    (copy / "images/train/000003.jpg").write_bytes(b"\x00 not a jpeg")
    with (copy / "labels/train/000005.txt").open("a") as fh:
        fh.write("9 0.5 0.5 0.1 0.1\n")
    events = []
    result = train(TrainConfig(data=str(copy), cfg=str(cfg), out=str(tmp_path / "run"), img_size=64, epochs=1,
                               batch_size=16, threads=1, max_eval_images=4), events.append)
    epoch = next(e for e in events if isinstance(e, TrainEpoch))
    assert epoch.bad_images == 1 and epoch.bad_label_lines == 1
    assert result.last.exists()


def test_cli_config_file_flags_and_errors(run_cli, work, tmp_path):
    _, data, cfg = work
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(f"data: {data}\ncfg: {cfg}\nepochs: 5\nimg_size: 64\nbatch_size: 16\nthreads: 1\n"
                         "augment:\n  mosaic: 0.5\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--config", yaml_file, "--epochs", "1", "--out", out, "--quiet",
                                "--max-eval-images", "4")
    assert code == 0, err
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.epochs == 1 and saved.augment.mosaic == 0.5 and saved.img_size == 64  # flag over file
    assert "train epoch 1/1" in err and "mAP@0.5" in err and "F1" in err
    assert "best mAP@0.5" in stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nepochs: [1,\n")
    code, _, err = run_cli("train", "--config", bad)
    assert code == 2 and f"{bad}:" in err and "not valid YAML" in err
    bad.write_text(f"data: {data}\ncfg: {cfg}\nepoch: 3\n")
    code, _, err = run_cli("train", "--config", bad)
    assert code == 2 and "unknown field 'epoch'" in err
    code, _, err = run_cli("train", "--resume", out, "--epochs", "3")
    assert code == 2 and "takes no other settings (got --epochs)" in err
    code, _, err = run_cli("train", "--data", data, "--cfg", "yolov3-tiny", "--img-size", "100")
    assert code == 2 and "'img_size' must be a multiple of 32" in err
    two_classes = tmp_path / "3c.cfg"
    two_classes.write_text(MINI_CFG.replace("classes=2", "classes=3").replace("filters=21", "filters=24"))
    code, _, err = run_cli("train", "--data", data, "--cfg", two_classes, "--out", tmp_path / "x")
    assert code == 2 and "classes=[3]" in err and "classes=2" in err


def test_ddp_two_processes(work, tmp_path):
    """torchrun with two CPU processes (gloo): rank 0 alone writes the run."""
    _, data, cfg = work
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "slimyolo", "train", "--data", str(data), "--cfg", str(cfg), "--img-size", "64", "--epochs", "2",
         "--batch-size", "16", "--threads", "1", "--out", str(out), "--quiet", "--no-mosaic",
         "--max-eval-images", "4"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("train epoch 2/2") == 1  # one console: rank 0's
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["train_config"]["batch_size"] == 16


def test_finetune_warmup_scales_with_the_epochs():
    """Six warm-up epochs of an eight-epoch fine-tune would be most of it: a quarter, at most six."""
    def warmup(epochs: int, **kw: object) -> float:
        return TrainConfig(data="d.data", cfg="yolov4-tiny", epochs=epochs, **kw).resolved().warmup_epochs

    assert [warmup(e, finetune=True) for e in (1, 8, 24, 100)] == [0.25, 2.0, 6.0, 6.0]
    assert warmup(8, teacher_weights="t.pt") == 2.0  # distillation is fine-tuning too
    assert [warmup(e) for e in (1, 8, 100)] == [3.0, 3.0, 3.0]
    assert warmup(8, finetune=True, warmup_epochs=5.0) == 5.0  # an explicit value wins


def test_train_help_tells_the_finetune_warmup_the_code_uses():
    """`train --help` said fine-tuning warms up 6 epochs; it is a quarter of the epochs, at most 6."""
    import argparse

    from slimyolo.train.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train_parser._actions}
    for dest in ("warmup_epochs", "finetune"):
        assert "a quarter of" in helps[dest] and "at most 6" in helps[dest], helps[dest]
        assert "(6 warm-up epochs)" not in helps[dest] and "or 6 when" not in helps[dest]


def test_config_yaml_of_a_pt_run_records_what_was_resolved(work):
    """A run from a .pt without cfg or img_size: config.yaml holds the size it trained at, and says where
    the cfg is; read back, it is a config that repeats the run."""
    first = train(_config(work, "pt-source", epochs=1, max_eval_images=4))
    root, data, _ = work
    out = root / "from-pt"
    train(TrainConfig(data=str(data), weights=str(first.best), out=str(out), epochs=1, batch_size=16, threads=1,
                      eval_interval=100, max_eval_images=4, augment=AugmentConfig(**NO_MOSAIC)))
    text = (out / "config.yaml").read_text()
    assert f"\ncfg: null  # the cfg inside weights ({first.best})\n" in text
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.cfg is None and saved.img_size == checkpoint_cfg(first.best).width == 64  # the size trained at
    assert saved.weights == str(first.best) and saved.lr0 == 0.01
