"""The ``slimyolo`` command: one argparse tree, one sub-command module per area.

Each area (darknet, data, train, prune, convert, infer, rpc, pipeline) owns a ``cli.py`` with
a ``register(subparsers)`` function; handlers import their heavy dependencies (torch,
tensorflow, openvino) only when run, so ``slimyolo --help`` is instant and each service
image only needs the packages of its own commands. A ``SlimYoloError`` becomes a one-line
message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from slimyolo import __version__, store_cli
from slimyolo.convert import cli as convert_cli
from slimyolo.darknet import cli as darknet_cli
from slimyolo.data import cli as data_cli
from slimyolo.errors import SlimYoloError
from slimyolo.infer import cli as infer_cli
from slimyolo.pipeline import register as pipeline_register
from slimyolo.prune import cli as prune_cli
from slimyolo.rpc import cli as rpc_cli
from slimyolo.stages import cli as stages_cli
from slimyolo.train import cli as train_cli

REGISTRARS = (darknet_cli.register, infer_cli.register, convert_cli.register, prune_cli.register,
              data_cli.register, train_cli.register, rpc_cli.register, stages_cli.register, pipeline_register,
              store_cli.register)


class _Parser(argparse.ArgumentParser):
    """A parser (and, as their class, every subcommand's) that takes no abbreviated flags: ``--epoch`` is a typo
    to report, not ``--epochs``, and a flag added later never changes what an abbreviation meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slimyolo", description="Train, slim and serve darknet YOLO detectors on OpenVINO.")
    parser.add_argument("--version", action="version", version=f"slimyolo {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SlimYoloError as exc:
        print(f"slimyolo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimyolo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slimyolo info --layers | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
