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
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.progress import Event, TrainEpoch, TrainStep

# flag → TrainConfig field, for the flags whose value is copied as it is
_VALUE_FLAGS = ("cfg", "data", "weights", "weights_cfg", "out", "epochs", "batch_size", "img_size", "optimizer",
                "lr0", "schedule", "warmup_epochs", "seed", "workers", "threads", "device", "eval_interval",
                "checkpoint_steps", "max_eval_images", "teacher_cfg", "teacher_weights", "distill_weight", "s", "prune",
                "s_schedule")
_TRUE_FLAGS = ("bf16", "multi_scale", "save_weights", "finetune", "sr")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, sparsity-train or fine-tune a model on a darknet data set")
    p.add_argument("--config", type=Path, help="YAML training config (flags override it)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder exactly")
    p.add_argument("--cfg", help="model cfg file, a zoo name (yolov4-tiny, ...), or a .pt holding its cfg")
    p.add_argument("--data", help=".data file or a data set folder holding one")
    p.add_argument("--weights", help="initial weights (.weights or .pt). Base training also starts from a partial "
                                     "darknet file (yolov4.conv.137, yolov4-tiny.conv.29) or another cfg's weights "
                                     "(--weights-cfg): what they cover loads, the rest (e.g. the heads) starts fresh; "
                                     "-sr and --finetune need the full weights of the cfg")
    p.add_argument("--weights-cfg", help="the cfg of --weights when they are another cfg's darknet .weights (a file, "
                                         "or a zoo name for its 80-class cfg), e.g. yolov4-tiny.weights for a "
                                         "1-class model: convolutions load where layer index and shapes match")
    p.add_argument("--out", help="run folder (default runs/train)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="total batch size over all processes (default 16)")
    p.add_argument("--img-size", type=int, help="square training size, multiple of 32 (default: the cfg's)")
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr0", type=float, help="initial learning rate (default 0.01 SGD, 0.001 Adam)")
    p.add_argument("--schedule", choices=("cosine", "step"))
    p.add_argument("--warmup-epochs", type=float, help="default 3; with --finetune a quarter of --epochs, at most 6")
    p.add_argument("--no-ema", action="store_true", help="train without the EMA of weights")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--multi-scale", action="store_true", help="random input size per batch")
    p.add_argument("--no-mosaic", action="store_true", help="no mosaic augmentation")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data loader processes (default 0)")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--eval-interval", type=int, help="evaluate every N epochs (default 1)")
    p.add_argument("--checkpoint-steps", type=int, metavar="N", help="also save the resumable last.pt every N steps "
                                                                      "inside an epoch, for long epochs (default 0: "
                                                                      "at epoch ends only)")
    p.add_argument("--max-eval-images", type=int)
    p.add_argument("--save-weights", action="store_true", help="also write best.weights (darknet)")
    p.add_argument("--finetune", action="store_true",
                   help="fine-tuning of a pruned model (warm-up: a quarter of the epochs, at most 6)")
    p.add_argument("--teacher-cfg", help="distillation teacher cfg (default: the one in --teacher-weights)")
    p.add_argument("--teacher-weights", help="distillation teacher weights")
    p.add_argument("--distill-weight", type=float)
    p.add_argument("-sr", "--sr", action="store_true", help="sparsity training (L1 on BN γ)")
    p.add_argument("--s", type=float, help="sparsity rate (default 0.001)")
    p.add_argument("--prune", type=int, choices=(0, 1),
                   help="0: penalise every BN layer; 1: all but the convolutions feeding a shortcut")
    p.add_argument("--s-schedule", choices=("constant", "step", "cosine"))
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the epoch lines")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="P, R, mAP@0.5 and F1 of a model on a data set")
    e.add_argument("--cfg", type=Path, help="model cfg (default: the one inside a .pt --weights)")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--data", required=True, help=".data file or a data set folder")
    e.add_argument("--img-size", type=int, help="square input size (default: the cfg's)")
    e.add_argument("--conf", type=float, default=0.001, help="score threshold (default 0.001)")
    e.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--split", default="valid", choices=("valid", "train"))
    e.add_argument("--max-images", type=int)
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
    for name in _VALUE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            doc[name] = value
    for name in _TRUE_FLAGS:
        if getattr(args, name):
            doc[name] = True
    if args.no_ema:
        doc["ema"] = False
    if args.no_mosaic:
        doc.setdefault("augment", {})["mosaic"] = 0.0
    if "data" not in doc:
        raise SlimYoloError("slimyolo train needs --data (or 'data' in --config), or --resume RUN")
    return TrainConfig.from_dict(doc, str(args.config or "command line"))


class _Console:
    """Renders trainer progress events: a tqdm bar per epoch and one line per finished epoch."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if isinstance(event, TrainStep) and not self.quiet:
            if self.bar is None:
                self.bar = tqdm(total=event.steps, desc=f"{event.stage} {event.epoch}/{event.epochs}",
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
            line = (f"{event.stage} epoch {event.epoch}/{event.epochs}  loss {event.loss:.4f} "
                    f"(box {event.box:.4f} obj {event.obj:.4f} cls {event.cls:.4f}"
                    + (f" distill {event.distill:.4f}" if event.distill else "") + f")  {metrics}"
                    f"|γ|<0.01 {100 * event.gamma_below_001:.1f}%  {event.images_per_s:.1f} img/s  "
                    f"{event.time_s:.0f} s")
            if event.bad_images or event.bad_label_lines:
                line += f"  [{event.bad_images} unreadable images, {event.bad_label_lines} bad label lines]"
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train(args: argparse.Namespace) -> int:
    from slimyolo.train.trainer import resume, train

    if args.resume:
        given = [n for n in _VALUE_FLAGS if getattr(args, n) is not None]
        given += [n for n in (*_TRUE_FLAGS, "no_ema", "no_mosaic") if getattr(args, n)]
        if args.config or given:
            flags = ", ".join("--" + n.replace("_", "-") for n in (["config"] if args.config else []) + given)
            raise SlimYoloError(f"--resume continues {args.resume} with its saved config.yaml; "
                                f"it takes no other settings (got {flags})")
    console = _Console(args.quiet)
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

    for flag, path in (("--save-json", args.save_json), ("--save-gt-json", args.save_gt_json)):
        if path is not None:
            check_writable(path, flag)  # before the model loads and the evaluation runs
    cfg = args.cfg if args.cfg else checkpoint_cfg(args.weights)
    model = load_model(cfg, args.weights, args.img_size)
    spec = read_data_file(args.data)
    result = evaluate(model, spec, args.img_size, args.batch_size, args.conf, args.iou, args.split,
                      args.max_images, save_json=args.save_json, save_gt_json=args.save_gt_json)
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
