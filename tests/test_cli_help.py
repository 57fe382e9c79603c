"""Every ``--help`` of the ``slimyolo`` command: plain complete sentences, and the stage specs' fields."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from slimyolo.cli import build_parser
from slimyolo.params import declared_fields
from slimyolo.rpc.cli import plain_text, service_parser
from slimyolo.stages.kinds import KINDS, SERVICES

MARKUP = re.compile(r"``|`|:(mod|class|func|meth|attr|data):")


def _parsers(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _all_parsers():
    yield from _parsers(build_parser(), "slimyolo")
    for service in SERVICES:
        yield f"slimyolo serve {service}", service_parser(service)[1]


def test_every_help_is_plain_text_in_complete_sentences():
    seen = 0
    for path, parser in _all_parsers():
        text = parser.format_help()
        assert not MARKUP.search(text), (path, MARKUP.search(text).group(0), text)
        if parser.description:  # a description is sentences: it ends as one
            assert parser.description.rstrip().endswith((".", ")")), (path, parser.description)
        seen += 1
    assert seen > 30


def test_serve_descriptions_are_the_services_whole_first_paragraph():
    _, parser = service_parser("inference")
    assert parser.description == ("The inference service: the Open Inference Protocol (inference.GRPCInferenceService) "
                                  "and slimyolo.v1.Inference (Detect, DetectStream, LoadModel, UnloadModel, "
                                  "ListModels, BenchmarkModel).")
    assert plain_text("See :mod:`a.b` and :class:`~c.D` with ``x``.\n\nMore.") == "See a.b and c.D with x."


@pytest.mark.parametrize("kind", list(KINDS))
def test_stage_help_lists_each_spec_field_from_its_declaration(kind):
    parser = dict(_parsers(build_parser(), "slimyolo"))[f"slimyolo stage {kind}"]
    text = " ".join(parser.format_help().split())  # wrapped lines joined
    for fld in declared_fields(KINDS[kind].spec):
        meaning = " ".join(fld.metadata["help"].split())
        assert meaning, f"{kind}.{fld.name} declares no help"
        default = "required" if fld.default is dataclasses.MISSING else "default "
        assert re.search(rf"\s{fld.name}\s+{re.escape(meaning)} \({default}", text), (fld.name, text)



def test_an_abbreviated_flag_is_a_typo_in_every_command(capsys):
    assert all(not parser.allow_abbrev for path, parser in _parsers(build_parser(), "slimyolo"))
    with pytest.raises(SystemExit) as exc:  # --epochs spelt short would have trained 3 epochs unnoticed
        build_parser().parse_args(["train", "--cfg", "c.cfg", "--data", "d", "--epoch", "3"])
    assert exc.value.code == 2 and "unrecognized arguments: --epoch 3" in capsys.readouterr().err
