"""ConvertOptions, declared once: the convert stage's spec embeds it flat, ``slimyolo convert``'s flags are generated
from it with the same defaults, and the runner hands it to the core whole."""

from __future__ import annotations

import argparse

import pytest

from slimyolo.convert.cli import register
from slimyolo.convert.options import ConvertOptions
from slimyolo.errors import SlimYoloError
from slimyolo.params import declared_fields, flag_name, from_args
from slimyolo.stages.kinds import parse_spec
from slimyolo.stages.specs import ConvertSpec


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["convert", "--weights", "m.weights", "--out", "models", *argv])


def test_every_option_has_its_flag_and_no_flag_means_the_declared_default():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    convert = parser._subparsers._group_actions[0].choices["convert"]
    flags = {s for a in convert._actions for s in a.option_strings}
    assert {flag_name(f.name) for f in declared_fields(ConvertOptions)} <= flags
    assert from_args(ConvertOptions, _parse()) == ConvertOptions()


def test_flags_reach_the_options_and_errors_name_the_flag():
    args = _parse("--via", "torch", "--precision", "int8", "--calib-images", "5", "--accuracy-control",
                  "--max-drop", "0.5", "--onnx", "--parity-images", "1", "--tolerance", "0.25", "--ppp")
    assert from_args(ConvertOptions, args) == ConvertOptions(via="torch", precision="int8", calib_images=5,
                                                            accuracy_control=True, max_drop=0.5, onnx=True,
                                                            parity_images=1, tolerance=0.25, ppp="resize")
    assert (args.size, args.names_file) == (None, None)  # not read as the YAML forms of img_size and names
    with pytest.raises(SlimYoloError, match="--calib-images must be at least 1, got 0"):
        from_args(ConvertOptions, _parse("--calib-images", "0"))


def test_the_spec_embeds_the_options_flat():
    assert {f.name for f in declared_fields(ConvertOptions)} <= {f.name for f in declared_fields(ConvertSpec)}
    doc = {"weights": "runs/p/pruned.weights", "name": "det", "via": "torch", "precision": "fp16", "img_size": 96,
           "names": ["a", "b"], "onnx": True, "tolerance": 0.5}
    spec = parse_spec("convert", doc)
    options = ConvertOptions.taken_from(spec)
    assert options == ConvertOptions(via="torch", precision="fp16", img_size=96, names=("a", "b"), onnx=True,
                                     tolerance=0.5)
    assert all(not isinstance(v, dict) for v in spec.to_dict().values())  # no nesting in a user's spec
    assert ConvertOptions.taken_from(ConvertSpec("w/x", "det")) == ConvertOptions()  # the store fields positional
