"""``slimyolo prune channel|layer|both|sweep``: the pruner on the command line.

Arguments are checked before the weights are loaded, and the output folder is written whole
at the end, so a bad argument or a bad file costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimyolo.errors import SlimYoloError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="channel pruning, layer pruning, both, and the best-pruning-point sweep")
    cmds = p.add_subparsers(dest="prune_command", required=True, metavar="METHOD")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--cfg", type=Path, help="darknet cfg (optional when --weights is a .pt holding one)")
        q.add_argument("--weights", type=Path, required=True, help=".weights or .pt of the sparse model")

    def channel_args(q: argparse.ArgumentParser, percent_required: bool = True) -> None:
        if percent_required:
            q.add_argument("--global-percent", type=float, required=True,
                           help="fraction of prunable channels below the global |γ| threshold, in (0, 1)")
        q.add_argument("--layer-keep", type=float, default=0.01,
                       help="every layer keeps at least this fraction of its channels (default 0.01)")
        q.add_argument("--round-to", type=int, default=1,
                       help="keep a multiple of this many channels per layer (default 1: no rounding)")

    def output_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", type=Path, required=True,
                       help="new (or empty) folder for pruned.cfg, pruned.weights, pruned.pt, summary.json")
        q.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")

    q = cmds.add_parser("channel", help="prune channels at one global BN |γ| threshold")
    common(q)
    channel_args(q)
    output_args(q)
    q.set_defaults(func=_prune, method="channel")

    q = cmds.add_parser("layer", help="remove the N least important residual units")
    common(q)
    q.add_argument("--shortcuts", type=int, required=True, help="number of residual units to remove")
    output_args(q)
    q.set_defaults(func=_prune, method="layer")

    q = cmds.add_parser("both", help="layer and channel pruning in one step")
    common(q)
    channel_args(q)
    q.add_argument("--shortcuts", type=int, required=True, help="number of residual units to remove")
    output_args(q)
    q.set_defaults(func=_prune, method="both")

    q = cmds.add_parser("sweep", help="prune at many strengths, evaluate each, name the best pruning point")
    common(q)
    q.add_argument("--data", type=Path, required=True, help="darknet .data file (its valid list is evaluated)")
    q.add_argument("--percents", default="0.5:0.95",
                   help="global percent range LO:HI[:STEP] (coarse step, default 0.05)")
    q.add_argument("--shortcuts", help="residual units range LO:HI[:STEP] to sweep as well (e.g. 0:20)")
    q.add_argument("--max-map-drop", type=float, default=0.01,
                   help="the best point is chosen among the points whose mAP@0.5 stays within this drop")
    q.add_argument("--objective", choices=("bflops", "fps"), default="bflops",
                   help="bflops (default): the fewest BFLOPs within the drop; fps: the most OpenVINO frames per "
                        "second measured on this CPU (each point converted to an IR and timed)")
    q.add_argument("--precision", choices=("f32", "bf16", "int8"), default="f32",
                   help="inference precision of the FPS measurement (--objective fps; default f32)")
    q.add_argument("--fps-seconds", type=float, default=1.0, help="length of one FPS measurement (default 1)")
    q.add_argument("--fps-repeats", type=int, default=3,
                   help="FPS measurements per point; the best counts (default 3)")
    channel_args(q, percent_required=False)
    q.add_argument("--img-size", type=int, help="evaluation size (default: the cfg's)")
    q.add_argument("--batch-size", type=int, default=8, help="evaluation images per forward pass (default 8)")
    q.add_argument("--max-images", type=int, help="evaluate at most this many validation images")
    q.add_argument("--latency-runs", type=int, default=3,
                   help="timed PyTorch CPU forward passes per point for the latency column (0: skip)")
    q.add_argument("--out", type=Path, required=True,
                   help="new (or empty) folder for sweep.json, sweep.csv, sweep.png and best/")
    q.set_defaults(func=_sweep)


def _prune(args: argparse.Namespace) -> int:
    from slimyolo.prune.algorithms import check_args, open_model, prune_both, prune_channels, prune_layers
    from slimyolo.prune.report import print_warnings
    from slimyolo.prune.result import check_out_dir

    percent = getattr(args, "global_percent", None)
    shortcuts = getattr(args, "shortcuts", None)
    check_args(percent, shortcuts, getattr(args, "layer_keep", 0.0), getattr(args, "round_to", 1))
    check_out_dir(args.out)
    model = open_model(args.cfg, args.weights)
    if args.method == "channel":
        result = prune_channels(model, percent, args.layer_keep, args.round_to)
    elif args.method == "layer":
        result = prune_layers(model, shortcuts)
    else:
        result = prune_both(model, percent, shortcuts, args.layer_keep, args.round_to)
    print_warnings(result.warnings())
    paths = result.save(args.out)
    print(json.dumps(result.summary()) if args.json else result.format())
    print(f"wrote {paths['cfg']}, {paths['weights']}, {paths['pt']}, {paths['summary']}", file=sys.stderr)
    return 0


def parse_range(text: str, what: str, cast: type) -> tuple:
    """``LO:HI`` or ``LO:HI:STEP`` → (lo, hi, step or None)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        values = [cast(p) for p in parts]
    except ValueError:
        raise SlimYoloError(f"--{what} {text!r}: expected LO:HI or LO:HI:STEP") from None
    lo, hi = values[0], values[1]
    step = values[2] if len(values) == 3 else None
    if hi < lo or (step is not None and step <= 0):
        raise SlimYoloError(f"--{what} {text!r}: need LO <= HI and a positive STEP")
    return lo, hi, step


def _sweep(args: argparse.Namespace) -> int:
    from slimyolo.prune.sweep import run_sweep_command

    return run_sweep_command(args)
