"""The pruning options, declared once: the specs embed them (flat keys), the runners and the CLI pass them whole,
and every front end has the same defaults, bounds and messages."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from test_prune_cli import sparse_model
from test_prune_exact import mini_res_cfg

from slimyolo.errors import SlimYoloError
from slimyolo.params import declared_fields, from_args
from slimyolo.prune import KeepOptions, PruneOptions, SweepOptions, prune, prune_both, prune_channels
from slimyolo.prune.cli import register, unit_range
from slimyolo.stages.specs import PruneSpec, SweepSpec
from slimyolo.train.options import EvalOptions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimyolo")
    register(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.parametrize("spec,options", [(PruneSpec, (PruneOptions, EvalOptions)),
                                          (SweepSpec, (SweepOptions, EvalOptions))])
def test_the_specs_embed_the_options_with_their_declarations(spec, options):
    fields = {f.name: f for f in declared_fields(spec)}
    for cls in options:
        for fld in declared_fields(cls):  # the same field: one default, one check, one meaning
            assert fields[fld.name].default == fld.default
            assert fields[fld.name].metadata == fld.metadata


def test_the_runner_takes_the_options_whole_from_a_flat_spec():
    spec = PruneSpec.from_dict({"weights": "a/b", "out": "o", "method": "both", "global_percent": 0.7,
                                "shortcuts": 2, "layer_keep": 0.0, "round_to": 8, "max_images": 3})
    assert PruneOptions.taken_from(spec) == PruneOptions(method="both", global_percent=0.7, shortcuts=2,
                                                         layer_keep=0.0, round_to=8)
    assert EvalOptions.taken_from(spec) == EvalOptions(max_images=3)
    doc = spec.to_dict()
    assert {"method", "global_percent", "shortcuts", "layer_keep", "round_to", "max_images"} <= set(doc)
    assert not any(isinstance(v, dict) for v in doc.values())  # flat: no nesting in a user's spec


def test_one_default_per_field_wherever_it_is_read():
    """layer_keep 0.01 and latency_runs 0 (the specs' values) in Python, YAML and on the command line."""
    assert KeepOptions().layer_keep == PruneOptions().layer_keep == SweepOptions().layer_keep == 0.01
    parser = _parser()
    channel = parser.parse_args(["prune", "channel", "--weights", "w", "--global-percent", "0.5", "--out", "o"])
    assert from_args(PruneOptions, channel) == PruneOptions(global_percent=0.5) == \
        PruneOptions.taken_from(PruneSpec.from_dict({"weights": "w", "out": "o", "global_percent": 0.5}))
    swept = parser.parse_args(["prune", "sweep", "--weights", "w", "--data", "d", "--out", "o"])
    assert from_args(SweepOptions, swept) == SweepOptions() == \
        SweepOptions.taken_from(SweepSpec.from_dict({"weights": "w", "data": "d", "out": "o"}))
    assert SweepOptions().latency_runs == 0


def test_each_command_has_the_flags_of_its_method():
    parser = _parser()
    flags = {name: {a.dest for a in sub._actions} for name, sub in
             parser._subparsers._group_actions[0].choices["prune"]._subparsers._group_actions[0].choices.items()}
    keep = set(KeepOptions.__dataclass_fields__)
    assert keep <= flags["channel"] and keep <= flags["both"] and keep <= flags["sweep"]
    assert not keep & flags["layer"] and "global_percent" not in flags["layer"]
    assert {"global_percent", "shortcuts"} <= flags["both"] and "shortcuts" not in flags["channel"]
    assert {f.name for f in dataclasses.fields(SweepOptions)} | {"img_size", "batch_size", "max_images"} <= \
        flags["sweep"]


def test_a_sweep_range_of_units_without_a_step_tries_about_five_counts():
    assert unit_range("0:20") == "0:20:4" and unit_range("2:4") == "2:4:1"
    assert unit_range("0:20:2") == "0:20:2" and unit_range(None) is None and unit_range("a:b") == "a:b"
    args = _parser().parse_args(["prune", "sweep", "--weights", "w", "--data", "d", "--out", "o",
                                 "--shortcuts", unit_range("0:20"), "--percents", "0.4:0.8"])
    options = from_args(SweepOptions, args)
    assert options.shortcuts == (0, 20, 4) and options.percents == (0.4, 0.8, 0.05)


def test_options_built_in_python_are_checked_as_a_spec_is():
    model = sparse_model(mini_res_cfg(), seed=1)
    with pytest.raises(SlimYoloError, match="PruneOptions: 'round_to' must be at least 1, got 0"):
        prune(model, PruneOptions(global_percent=0.5, round_to=0))
    with pytest.raises(SlimYoloError, match="PruneOptions: 'global_percent' is required for channel pruning"):
        prune(model, PruneOptions())
    with pytest.raises(SlimYoloError, match=r"'shortcuts' \(residual units to remove\) must be at least 1 for both"):
        prune(model, PruneOptions(method="both", global_percent=0.5))
    whole = prune(model, PruneOptions(method="both", global_percent=0.5, shortcuts=1, round_to=4))
    named = prune_both(model, 0.5, 1, round_to=4)
    assert whole.summary() == named.summary()
    assert whole.settings == {"global_percent": 0.5, "threshold": whole.settings["threshold"],
                              **KeepOptions(round_to=4).to_dict(), "shortcuts": 1}  # what was kept, recorded
    assert prune_channels(model, 0.5).settings["layer_keep"] == 0.01  # the spec's default, not 0.0
