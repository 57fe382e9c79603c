"""TrainOptions, declared once: ``slimyolo train``'s flags are generated from it (names, defaults, help and bounds),
and TrainConfig checks the declared bounds and choices, whether it was read from YAML or built in Python."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from slimyolo.errors import SlimYoloError
from slimyolo.params import declared_fields, flag_name
from slimyolo.train.cli import build_config, register
from slimyolo.train.config import TrainConfig
from slimyolo.train.options import TrainOptions

# The flags `slimyolo train` had before they were generated: every one is still there.
FLAGS = ("--config", "--resume", "--cfg", "--data", "--weights", "--weights-cfg", "--out", "--epochs", "--batch-size",
         "--img-size", "--optimizer", "--lr0", "--schedule", "--warmup-epochs", "--no-ema", "--bf16", "--multi-scale",
         "--no-mosaic", "--seed", "--workers", "--threads", "--device", "--eval-interval", "--checkpoint-steps",
         "--max-eval-images", "--save-weights", "--finetune", "--teacher-cfg", "--teacher-weights", "--distill-weight",
         "-sr", "--sr", "--s", "--prune", "--s-schedule", "--quiet")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def test_every_setting_has_a_flag_and_every_old_flag_stays():
    train = _parser()._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    assert set(FLAGS) <= flags
    assert {flag_name(f.name) for f in declared_fields(TrainOptions)} <= flags


def test_no_flag_means_the_declared_default_and_flags_win_over_the_file(tmp_path):
    args = _parser().parse_args(["train", "--data", "d.data", "--cfg", "yolov4-tiny"])
    assert build_config(args) == TrainConfig(data="d.data", cfg="yolov4-tiny")
    config = tmp_path / "train.yaml"
    config.write_text("data: d.data\ncfg: yolov4-tiny\nepochs: 5\nema: false\nsr: true\n")
    args = _parser().parse_args(["train", "--config", str(config), "--epochs", "2", "-sr", "--ema", "--no-mosaic"])
    built = build_config(args)
    assert (built.epochs, built.ema, built.sr, built.augment.mosaic) == (2, True, True, 0.0)
    assert (built.data, built.cfg) == ("d.data", "yolov4-tiny")


@pytest.mark.parametrize(("setting", "message"), [
    ({"epochs": 0}, "'epochs' must be at least 1, got 0"),
    ({"optimizer": "lion"}, "'optimizer' must be one of sgd, adam, got 'lion'"),
    ({"img_size": 100}, "'img_size' must be a multiple of 32, got 100"),
    ({"checkpoint_steps": -1}, "'checkpoint_steps' must be at least 0, got -1"),
    ({"prune": 2}, "'prune' must be at most 1, got 2"),
    ({"s_schedule": "linear"}, "'s_schedule' must be one of constant, step, cosine"),
])
def test_the_declared_bounds_are_checked_from_yaml_and_in_python(setting, message):
    doc = {"data": "d.data", "cfg": "yolov4-tiny", **setting}
    with pytest.raises(SlimYoloError, match=f"spec: {message}"):
        TrainConfig.from_dict(doc, "spec").check("spec")
    with pytest.raises(SlimYoloError, match=message):
        dataclasses.replace(TrainConfig(data="d.data", cfg="yolov4-tiny"), **setting).resolved()


@pytest.mark.parametrize("setting", [{"lr0": float("nan")}, {"s": float("inf")}, {"momentum": float("-inf")}])
def test_nan_and_infinities_are_refused_naming_the_setting(setting):
    """A NaN passes every bound (each comparison with it is false), so the engine refuses it as a number."""
    (name, value), = setting.items()
    with pytest.raises(SlimYoloError, match=rf"'{name}' must be a finite number, got {value}"):
        TrainConfig.from_dict({"data": "d", "cfg": "c.cfg", **setting}).resolved()
    with pytest.raises(SlimYoloError, match=rf"'{name}' must be a finite number, got {value}"):  # built in Python
        dataclasses.replace(TrainConfig(data="d", cfg="c.cfg"), **setting).resolved()


@pytest.mark.parametrize(("doc", "message"), [
    ({"augment": {"mosaic": 1.5}}, r"'augment.mosaic' must be at most 1"),
    ({"augment": {"mosiac": 0.5}}, r"unknown field 'augment.mosiac'"),
    ({"augment": {"scale": 1}}, r"'augment.scale' must be below 1"),
    ({"augment": {"fliplr": float("nan")}}, r"'augment.fliplr' must be a finite number"),
    ({"augment": [0.5]}, r"'augment': expected a mapping"),
    ({"loss": {"iou_loss": "l2"}}, r"'loss.iou_loss' must be one of ciou, diou, giou, iou, mse"),
    ({"loss": {"box": -0.1}}, r"'loss.box' must be at least 0"),
    ({"loss": {"iou_t": 0}}, r"'loss.iou_t' must be above 0"),
    ({"cfg": ["a.cfg"]}, r"'cfg' must be text, got \['a.cfg'\]"),
    ({"out": True}, r"'out' must be text, got True"),
])
def test_the_augment_and_loss_sections_are_read_by_their_declarations(doc, message):
    """The nested sections are declared like every other setting: bounds, choices and misspelt keys are errors
    naming the key as the YAML nests it."""
    with pytest.raises(SlimYoloError, match=rf"my\.yaml: {message}"):
        TrainConfig.from_dict({"data": "d", "cfg": "c.cfg", **doc}, "my.yaml")
    built = TrainConfig.from_dict({"data": "d", "cfg": "c.cfg", "augment": {"mosaic": 0, "degrees": 10},
                                   "loss": {"iou_loss": "diou", "iou_t": 0.3}})
    assert (built.augment.mosaic, built.augment.degrees, built.augment.fliplr) == (0.0, 10.0, 0.5)
    assert (built.loss.iou_loss, built.loss.iou_t, built.loss.box) == ("diou", 0.3, 0.05)
