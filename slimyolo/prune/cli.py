"""``slimyolo prune channel|layer|both|sweep``: the pruner on the command line.

The flags are generated from the options the core takes (:mod:`slimyolo.prune.options`), so their
help, defaults, bounds and choices are those of the YAML and gRPC specs, and their values are read
and checked by the same code, errors naming the flag. Arguments are checked before the weights are
loaded, and the output folder is written whole at the end, so a bad argument or a bad file costs
nothing and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimyolo.params import add_arguments, from_args
from slimyolo.prune.options import KeepOptions, PruneOptions, SweepOptions, field_names
from slimyolo.train.options import EvalOptions

# What each method's command takes of PruneOptions: (left out, required). The method is the command itself.
METHOD_FLAGS = {"channel": (("method", "shortcuts"), ("global_percent",)),
                "layer": (("method", "global_percent", *field_names(KeepOptions)), ("shortcuts",)),
                "both": (("method",), ("global_percent", "shortcuts"))}
METHOD_HELP = {"channel": "prune channels at one global BN |γ| threshold",
               "layer": "remove the N least important residual units",
               "both": "layer and channel pruning in one step"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="channel pruning, layer pruning, both, and the best-pruning-point sweep")
    cmds = p.add_subparsers(dest="prune_command", required=True, metavar="METHOD")

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--cfg", type=Path, help="darknet cfg (optional when --weights is a .pt holding one)")
        q.add_argument("--weights", type=Path, required=True, help=".weights or .pt of the sparse model")

    for method, (skip, required) in METHOD_FLAGS.items():
        q = cmds.add_parser(method, help=METHOD_HELP[method])
        model_args(q)
        add_arguments(q, PruneOptions, skip=skip, required=required)
        q.add_argument("--out", type=Path, required=True,
                       help="new (or empty) folder for pruned.cfg, pruned.weights, pruned.pt, summary.json")
        q.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
        q.set_defaults(func=_prune, method=method)

    q = cmds.add_parser("sweep", help="prune at many strengths, evaluate each, name the best pruning point")
    model_args(q)
    q.add_argument("--data", type=Path, required=True, help="darknet .data file (its valid list is evaluated)")
    add_arguments(q, SweepOptions)
    add_arguments(q, EvalOptions)
    q.add_argument("--out", type=Path, required=True,
                   help="new (or empty) folder for sweep.json, sweep.csv, sweep.png and best/")
    q.set_defaults(func=_sweep)


def _prune(args: argparse.Namespace) -> int:
    from slimyolo.prune.algorithms import open_model, prune
    from slimyolo.prune.report import print_warnings
    from slimyolo.prune.result import check_out_dir

    options = from_args(PruneOptions, args)
    check_out_dir(args.out)
    result = prune(open_model(args.cfg, args.weights), options)
    print_warnings(result.warnings())
    paths = result.save(args.out)
    print(json.dumps(result.summary()) if args.json else result.format())
    print(f"wrote {paths['cfg']}, {paths['weights']}, {paths['pt']}, {paths['summary']}", file=sys.stderr)
    return 0


def unit_range(text: str | None) -> str | None:
    """``--shortcuts LO:HI`` of a sweep without a step: a fifth of the range (at least 1), so that the coarse
    search tries about five counts (a YAML spec always writes its step)."""
    parts = (text or "").split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        return text  # a step given, or not LO:HI at all: read and refused as written
    lo, hi = (int(p) for p in parts)
    return f"{lo}:{hi}:{max(1, (hi - lo) // 5)}"


def _sweep(args: argparse.Namespace) -> int:
    """``slimyolo prune sweep``: :func:`~slimyolo.prune.sweep.sweep` with the real evaluation.

    A budget no point reaches (objective accuracy) still writes the table, sweep.json, .csv and .png (what
    was measured is what tells the user which budget can be met), never ``best/``, and fails with the
    sentence naming the fastest point.
    """
    from slimyolo.data.dataset import read_data_file
    from slimyolo.errors import FailedPrecondition
    from slimyolo.progress import Event, StageStep, SweepPoint
    from slimyolo.prune.algorithms import open_model
    from slimyolo.prune.result import check_out_dir
    from slimyolo.prune.sweep import fps_meter, sweep
    from slimyolo.train.evaluate import evaluator

    args.shortcuts = unit_range(args.shortcuts)
    options, evaluation = from_args(SweepOptions, args), from_args(EvalOptions, args)
    meter = fps_meter(options)
    check_out_dir(args.out)
    data = read_data_file(args.data)
    model = open_model(args.cfg, args.weights)

    def show(event: Event) -> None:
        if isinstance(event, SweepPoint):
            row = event.row
            pct = "-" if row.global_percent is None else f"{row.global_percent:.3f}"
            removed = "" if row.removed_fraction is None else f" removed {row.removed_fraction:.3f}"
            fps = "" if row.fps is None else f" FPS {row.fps:.1f}"
            score = f"mAP@0.5 {row.map50:.4f}" if row.map50 is not None else "timed"
            print(f"{row.method:<9} percent {pct:>6}{removed} units {row.shortcuts:>3}: {score} "
                  f"params {row.params:,}{fps}", file=sys.stderr, flush=True)
        elif isinstance(event, StageStep):
            print(f"sweep: {event.step}", file=sys.stderr, flush=True)

    result, best = sweep(model, evaluator(data, evaluation), options, progress=show, measure_fps=meter)
    paths = result.save(args.out, best)
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    unmet = result.unmet()
    if unmet is not None:
        raise FailedPrecondition(unmet)
    return 0
