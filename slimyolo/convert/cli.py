"""``slimyolo convert``: cfg + weights → OpenVINO IR (FP32, FP16, INT8) with a parity report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from slimyolo import vocab
from slimyolo.convert.options import ConvertOptions
from slimyolo.params import add_arguments, from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert cfg + weights to an OpenVINO IR (via TensorFlow or PyTorch)",
                       description="Writes OUT/NAME/VERSION/model.xml|bin and conversion.json; fails, writing "
                                   "nothing, if the FP32 IR differs from PyTorch beyond the tolerance.")
    p.add_argument("--cfg", type=Path, help="darknet cfg (optional when --weights is a SlimYOLO .pt)")
    p.add_argument("--weights", type=Path, required=True, help="darknet .weights or SlimYOLO .pt")
    p.add_argument("--out", type=Path, required=True, help="model repository folder")
    p.add_argument("--name", help="model name (default: the cfg's file name; for a run's best.pt or last.pt, "
                                  "the run folder's name: runs/ft/best.pt -> ft)")
    p.add_argument("--version", help="model version (default: one more than the highest existing)")
    p.add_argument("--calib-data", type=Path,
                   help="image folder, .data file or data set folder for INT8 calibration and parity "
                        "(default: a small synthetic data set)")
    # The conversion's options, as ConvertOptions declares them; three take a command line's own form (the first
    # two under their own dest, which from_args does not read).
    add_arguments(p, ConvertOptions, skip=("img_size", "names", "ppp"))
    p.add_argument("--img-size", dest="size", metavar="IMG_SIZE",
                   help="input size N or WxH (default: the cfg's [net] size)")
    p.add_argument("--names", dest="names_file", metavar="NAMES", type=Path,
                   help=".names file (default: the data set's names, else class<i>)")
    p.add_argument("--ppp", nargs="?", const="resize", choices=vocab.PPP_MODES,
                   help="u8 NHWC BGR input with conversion and normalisation inside the IR; 'resize' (the "
                        "default of --ppp) also letterboxes frames of any size inside, 'fixed' takes frames "
                        "already letterboxed to the model size")
    p.add_argument("--json", action="store_true", help="print conversion.json instead of the summary")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from slimyolo.convert.conversion import convert, versions_report
    from slimyolo.darknet.zoo import parse_size
    from slimyolo.progress import StageStep

    start = time.perf_counter()

    def show(event: StageStep) -> None:
        extra = " ".join(f"{k}={v}" for k, v in event.details.items())
        print(f"[{time.perf_counter() - start:6.1f}s] {event.step} {extra}".rstrip(), file=sys.stderr)

    options = from_args(ConvertOptions, args)
    local: dict[str, Any] = {}  # what a command line gives in a form YAML does not take
    if args.size:
        local["img_size"] = parse_size(args.size)
    if args.names_file:
        local["names"] = args.names_file
    result = convert(args.cfg, args.weights, args.out, options, name=args.name, version=args.version,
                     calib_data=args.calib_data, progress=show, **local)
    versions, warning = versions_report(result.path.parent)
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary, indent=2))
        return 0
    print(f"wrote {result.path} ({result.precision}, via {result.via}, "
          f"{result.summary['seconds']['total']:.1f} s)")
    print(versions)
    print(f"parity on {result.parity.images} images of {result.parity.image_source} "
          f"(tolerance {result.parity.tolerance:g}):")
    for line in result.parity.lines():
        print("  " + line)
    int8 = result.summary.get("int8")
    if int8 and "map50_fp32" in int8:
        print(f"mAP@0.5: fp32 {int8['map50_fp32']:.4f}, int8 {int8['map50_int8']:.4f}")
    return 0
