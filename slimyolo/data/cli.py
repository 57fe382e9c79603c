"""``slimyolo data synth``, ``import`` and ``check``: make, import and inspect darknet-layout data sets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimyolo.errors import SlimYoloError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="darknet-layout data sets: make the synthetic one, import photos, check one")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = data_sub.add_parser("synth", help="write the synthetic data set (deterministic under --seed)")
    s.add_argument("--out", type=Path, required=True, help="new folder for the data set")
    s.add_argument("--classes", type=int, default=2, help="number of classes, 1..8 (default 2)")
    s.add_argument("--train", type=int, default=300, help="training images (default 300)")
    s.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=int, default=320, help="long side of the images in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the images (default 0)")
    s.set_defaults(func=_synth)

    c = data_sub.add_parser("check", help="read every label and image of a data set and report problems")
    c.add_argument("data", type=Path, help=".data file or a folder holding one")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_check)

    i = data_sub.add_parser("import", help="import annotated photos (Pascal VOC XML, COCO JSON, YOLO txt) as a "
                                           "darknet-layout data set")
    i.add_argument("source", type=Path, help="voc: the folder of XML files and images; coco: the instances JSON; "
                                             "yolo: a darknet .data file or an ultralytics data.yaml")
    i.add_argument("--format", required=True, choices=("voc", "coco", "yolo"), help="the source's annotation format")
    i.add_argument("--out", type=Path, required=True, help="new (or empty) folder for the data set")
    i.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the images for validation, 0..1 (default 0.2; a VOCdevkit's ImageSets or a "
                        "YOLO source's train/val lists are kept unless given)")
    i.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    i.add_argument("--names", default="", help="class order, comma-separated (default: sorted VOC names, COCO "
                                               "category ids, the YOLO source's names); other classes are dropped")
    i.add_argument("--skip-difficult", action="store_true", help="drop VOC objects marked difficult")
    i.add_argument("--images", type=Path, default=None, help="folder of the images (default: found beside the "
                                                             "annotations)")
    i.add_argument("--name", default="", help="stem of the .data and .names files (default: the --out folder's name)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_import)


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


def _import(args: argparse.Namespace) -> int:
    from slimyolo.data.importer import ImportOptions, NothingImported, import_dataset

    names = tuple(n.strip() for n in args.names.split(",")) if args.names.strip() else ()
    options = ImportOptions(val_fraction=args.val_fraction, seed=args.seed, names=names,
                            skip_difficult=args.skip_difficult, images=args.images, name=args.name)
    try:
        report = import_dataset(args.format, args.source, args.out, options)
    except NothingImported as exc:
        for issue in exc.report.issues:
            print(f"warning: {issue}", file=sys.stderr)
        raise
    for issue in report.issues:
        print(f"warning: {issue}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.summary()))
    return 0
