"""``slimyolo train`` and ``slimyolo eval``.

``train`` takes a YAML config (``--config``) and/or flags (flags win), or ``--resume RUN``.
It works under ``torchrun --nproc-per-node N -m slimyolo train ...`` as well (only rank 0
prints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from slimyolo.errors import SlimYoloError
from slimyolo.params import add_arguments, declared_fields, flag_name, from_args
from slimyolo.progress import Event, TrainEpoch, TrainStep
from slimyolo.train.options import EvalOptions, TrainOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, sparsity-train or fine-tune a model on a darknet data set")
    p.add_argument("--config", type=Path, help="YAML training config (flags override it)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder exactly")
    add_arguments(p, TrainOptions)  # one flag per setting, as TrainOptions declares it
    p.add_argument("-sr", dest="sr", action="store_const", const=True, help=argparse.SUPPRESS)  # darknet's spelling
    p.add_argument("--no-mosaic", action="store_true", help="no mosaic augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the epoch lines")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="P, R, mAP@0.5 and F1 of a model on a data set")
    e.add_argument("--cfg", type=Path, help="model cfg (default: the one inside a .pt --weights)")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--data", required=True, help=".data file or a data set folder")
    add_arguments(e, EvalOptions)
    for short, dest in (("--conf", "conf_thres"), ("--iou", "iou_thres")):  # the earlier spellings, still taken
        e.add_argument(short, dest=dest, type=float, help=argparse.SUPPRESS)
    e.add_argument("--split", default="valid", choices=("valid", "train"), help="the list scored (default valid)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("--save-json", type=Path, metavar="FILE",
                   help="also write the detections scored as COCO results JSON (pycocotools' loadRes), "
                        "boxes in the original images' pixels")
    e.add_argument("--save-gt-json", type=Path, metavar="FILE",
                   help="also write the ground truth of the images scored as COCO JSON (same image ids)")
    e.set_defaults(func=_eval)


def build_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``slimyolo train``: the YAML file, then the flags given on top."""
    from slimyolo.train.config import TrainConfig

    doc: dict[str, Any] = {}
    if args.config:
        doc = TrainConfig.from_yaml(args.config).to_dict()
    doc.update(_given(args))
    if args.no_mosaic:
        doc.setdefault("augment", {})["mosaic"] = 0.0
    if "data" not in doc:
        raise SlimYoloError("slimyolo train needs --data (or 'data' in --config), or --resume RUN")
    return TrainConfig.from_dict(doc, str(args.config or "command line"))


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (every flag's default is None: not given)."""
    return {f.name: getattr(args, f.name) for f in declared_fields(TrainOptions) if getattr(args, f.name) is not None}


def console_line(line: str, stream: TextIO | None = None) -> None:
    """Print ``line`` on ``stream`` (stderr) whole, above any tqdm bar there: under tqdm's lock, so the lines
    of two threads (the pipeline's background stage beside the others) and the bars never interleave."""
    from tqdm import tqdm

    tqdm.write(line, file=stream or sys.stderr)
    (stream or sys.stderr).flush()


class TrainConsole:
    """Renders trainer progress events: a tqdm bar per epoch and one line per finished epoch.

    ``prefix`` starts every line, so that the lines of a training in the background are told apart.
    """

    def __init__(self, quiet: bool, prefix: str = "") -> None:
        self.quiet = quiet
        self.prefix = prefix
        self.bar: Any = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if isinstance(event, TrainStep) and not self.quiet:
            if self.bar is None:
                self.bar = tqdm(total=event.steps, desc=f"{event.phase} {event.epoch}/{event.epochs}",
                                file=sys.stderr, leave=False, dynamic_ncols=True)
            self.bar.set_postfix_str(" ".join(f"{k} {v:.4f}" for k, v in event.losses.items() if v)
                                     + f" lr {event.lr:.2e} {event.images_per_s:.1f} img/s", refresh=False)
            self.bar.update(1)
        elif isinstance(event, TrainEpoch):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            metrics = ("" if not event.evaluated else
                       f"P {event.precision:.3f} R {event.recall:.3f} mAP@0.5 {event.map50:.3f} F1 {event.f1:.3f}  ")
            line = (f"{event.phase} epoch {event.epoch}/{event.epochs}  loss {event.loss:.4f} "
                    f"(box {event.box:.4f} obj {event.obj:.4f} cls {event.cls:.4f}"
                    + (f" distill {event.distill:.4f}" if event.distill else "") + f")  {metrics}"
                    f"|γ|<0.01 {100 * event.gamma_below_001:.1f}%  {event.images_per_s:.1f} img/s  "
                    f"{event.time_s:.0f} s")
            if event.bad_images or event.bad_label_lines:
                line += f"  [{event.bad_images} unreadable images, {event.bad_label_lines} bad label lines]"
            console_line(self.prefix + line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train(args: argparse.Namespace) -> int:
    from slimyolo.train.trainer import resume, train

    if args.resume:
        given = [*(["config"] if args.config else []), *_given(args), *(["no_mosaic"] if args.no_mosaic else [])]
        if given:
            flags = ", ".join(flag_name(n) for n in given)
            raise SlimYoloError(f"--resume continues {args.resume} with its saved config.yaml; "
                                f"it takes no other settings (got {flags})")
    console = TrainConsole(args.quiet)
    try:
        result = resume(args.resume, console) if args.resume else train(build_config(args), console)
    finally:
        console.close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.run_dir}: {result.epochs} epochs, best mAP@0.5 {result.best_map50:.4f}, "
              f"{result.elapsed_s:.0f} s; wrote {result.last.name}, {result.best.name}, {result.results_csv.name}"
              + (f", {result.weights.name}" if result.weights else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import checkpoint_cfg
    from slimyolo.data.coco_format import check_writable
    from slimyolo.data.dataset import read_data_file
    from slimyolo.train.evaluate import evaluate

    options = from_args(EvalOptions, args)  # checked as an eval spec's fields are, before the model loads
    for flag, path in (("--save-json", args.save_json), ("--save-gt-json", args.save_gt_json)):
        if path is not None:
            check_writable(path, flag)  # before the model loads and the evaluation runs
    cfg = args.cfg if args.cfg else checkpoint_cfg(args.weights)
    model = load_model(cfg, args.weights, options.img_size)
    spec = read_data_file(args.data)
    result = evaluate(model, spec, options.img_size, options.batch_size, options.conf_thres, options.iou_thres,
                      args.split, options.max_images, save_json=args.save_json, save_gt_json=args.save_gt_json)
    for what, path in (("detections (COCO results)", args.save_json), ("ground truth (COCO)", args.save_gt_json)):
        if path is not None:
            print(f"wrote the {what} to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{'class':<16} {'targets':>8} {'P':>7} {'R':>7} {'mAP@0.5':>8} {'F1':>7}")
    for row in result.per_class:
        if row["targets"]:
            print(f"{row['name']:<16} {row['targets']:>8} {row['precision']:>7.3f} {row['recall']:>7.3f} "
                  f"{row['ap50']:>8.3f} {row['f1']:>7.3f}")
    print(f"{'all':<16} {result.targets:>8} {result.precision:>7.3f} {result.recall:>7.3f} {result.map50:>8.3f} "
          f"{result.f1:>7.3f}")
    if result.skipped_images:
        print(f"{len(result.skipped_images)} unreadable images skipped", file=sys.stderr)
    return 0
