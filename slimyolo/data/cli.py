"""``slimyolo data synth`` and ``slimyolo data check``: make and inspect darknet-layout data sets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimyolo.errors import SlimYoloError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="darknet-layout data sets: make the synthetic one, check one")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = data_sub.add_parser("synth", help="write the synthetic data set (deterministic under --seed)")
    s.add_argument("--out", type=Path, required=True, help="new folder for the data set")
    s.add_argument("--classes", type=int, default=2, help="number of classes, 1..8 (default 2)")
    s.add_argument("--train", type=int, default=300, help="training images (default 300)")
    s.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=int, default=320, help="long side of the images in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_synth)

    c = data_sub.add_parser("check", help="read every label and image of a data set and report problems")
    c.add_argument("data", type=Path, help=".data file or a folder holding one")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_check)


def _synth(args: argparse.Namespace) -> int:
    from slimyolo.data.synth import write_synthetic

    path = write_synthetic(args.out, args.classes, args.train, args.val, args.size, args.seed)
    print(f"wrote {path}: {args.classes} classes, {args.train} training and {args.val} validation images "
          f"(seed {args.seed})", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from slimyolo.data.dataset import LabelReport, load_image, read_data_file, read_labels

    spec = read_data_file(args.data)
    report = LabelReport()
    bad_images: list[str] = []
    objects = [0] * spec.classes
    counts = {}
    for split, images in (("train", spec.train), ("valid", spec.valid)):
        counts[split] = len(images)
        for image in images:
            try:
                load_image(image)
            except SlimYoloError as exc:
                bad_images.append(str(exc))
                print(f"warning: {exc}", file=sys.stderr)
                continue
            for row in read_labels(image, spec.classes, report):
                objects[int(row[0])] += 1
    result = {"data": str(spec.path), "classes": spec.classes, "names": spec.names, "images": counts,
              "objects": dict(zip(spec.names, objects, strict=True)), "bad_images": len(bad_images),
              "bad_label_lines": len(report.bad_lines), "missing_labels": report.missing}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{spec.path}: {spec.classes} classes, {counts['train']} training and {counts['valid']} validation "
              f"images; objects per class: {result['objects']}")
        print(f"{len(bad_images)} unreadable images, {report.summary()}")
    return 1 if bad_images or report.bad_lines else 0
