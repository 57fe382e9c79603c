"""The original projects' accuracy table on the built-in synthetic task, with the whole pipeline.

A model over-parameterised for a two-class task (yolov4 at a quarter of its width by default: 4
million parameters for shapes a 0.4-million-parameter model learns) goes through the method as
``slimyolo pipeline run`` runs it, in this process with a local store: base training → sparsity
training → channel and layer sweep → pruning at the sweep's best point → fine-tuning (distilled
from the sparse model) → OpenVINO IRs (FP32, INT8) → evaluation. Printed: the final table (P, R,
mAP@0.5, params, .weights size, BFLOPs, OpenVINO FPS), the sweep's table, and the reductions
against the issue's targets (≥ 90 % fewer params, ≥ 80 % fewer BFLOPs, ≤ 3 points of mAP@0.5).

Full-width yolov3-spp/yolov4 cannot be trained on 2 CPU cores in a benchmark's time; ``--width 1``
runs them all the same where a machine can.

    .venv/bin/python benchmarks/accuracy.py [--model yolov4] [--width 0.25] [--img-size 160]
        [--base-epochs 20] [--sparse-epochs 10] [--sparse-lr 0.01] [--s 0.002] [--finetune-epochs 8]
        [--no-reference]
        [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, save

from slimyolo.darknet import make_cfg
from slimyolo.pipeline import LocalRunner, PipelineConfig, PipelineResult, run_pipeline
from slimyolo.progress import sweep_row_method
from slimyolo.stages.console import StageConsole
from slimyolo.store import Artifact, LocalStore

TARGETS = {"params": 0.90, "bflops": 0.80, "map_drop": 0.03}


def config(args: argparse.Namespace, cfg: Path) -> PipelineConfig:
    training = {"batch_size": args.batch_size, "optimizer": "adam", "lr0": args.lr, "threads": args.threads,
                "eval_interval": 5}
    return PipelineConfig.from_dict({
        "name": "accuracy", "out": str(args.work / "runs"), "model": str(cfg), "img_size": args.img_size,
        "data": {"synth": {"classes": 2, "train": args.train, "val": args.val, "size": args.img_size, "seed": 0}},
        "training": training,
        "base": {"epochs": args.base_epochs},
        # Adam's steps do not scale with the gradient, so the L1 term moves every γ by about lr a step:
        # unimportant channels reach 0 within 1/lr steps, important ones are held up by the loss; the
        # cosine schedule's small final lr lets them settle near 0 rather than flip around it.
        "sparsity": {"epochs": args.sparse_epochs, "s": args.s, "prune": 0, "lr0": args.sparse_lr},
        "sweep": {"percents": [0.5, 0.95, 0.05], "shortcuts": [0, args.max_shortcuts, 4],
                  "max_map_drop": args.max_map_drop, "round_to": args.round_to, "batch_size": 16},
        "finetune": {"epochs": args.finetune_epochs, "distill": True},
        # The baseline trained on for the epochs of sparsity training and fine-tuning: the fair comparison.
        "reference": {} if args.reference else False,
        "convert": {"via": "tf", "calib_images": 100, "bench_seconds": 5},
        "eval": {"batch_size": 16},
    }, "benchmarks/accuracy.py")


def reductions(result: PipelineResult) -> dict[str, Any]:
    rows = {r["model"]: r for r in result.rows}
    base, tuned = rows["baseline"], rows["fine-tuned"]
    out = {"params": 1 - tuned["params"] / base["params"], "bflops": 1 - tuned["bflops"] / base["bflops"],
           "map_drop": base["map50"] - tuned["map50"], "int8_map_drop": base["map50"] - rows["int8"]["map50"],
           "fps_ratio": tuned["infer_fps"] / base["infer_fps"] if base["infer_fps"] else None,
           "int8_fps_ratio": rows["int8"]["infer_fps"] / base["infer_fps"] if base["infer_fps"] else None}
    out["met"] = {"params": out["params"] >= TARGETS["params"], "bflops": out["bflops"] >= TARGETS["bflops"],
                  "map_drop": out["map_drop"] <= TARGETS["map_drop"]}
    return out


def sweep_table(sweep: dict[str, Any]) -> str:
    """The sweep's rows (baseline first) as Markdown: asked and removed fractions of the prunable
    channels, the best point marked."""
    best = sweep.get("best")
    rows = [[sweep_row_method(r), r["global_percent"] if r["global_percent"] is not None else "",
             r.get("removed_fraction") if r.get("removed_fraction") is not None else "", r["shortcuts"],
             round(r["precision"], 3), round(r["recall"], 3), round(r["map50"], 3), f"{r['params']:,}",
             round(r["bflops"], 3), r.get("activation_mb", ""),
             "best" if r == best else ("yes" if r["within"] else "no")]
            for r in sweep["rows"]]
    return markdown_table(["method", "asked", "removed", "units", "P", "R", "mAP@0.5", "params", "BFLOPs",
                           "activation MB", "within drop"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov4", choices=["yolov4", "yolov3-spp", "yolov3"])
    parser.add_argument("--width", type=float, default=0.25, help="filters multiple of the zoo model")
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--train", type=int, default=300, help="synthetic training images")
    parser.add_argument("--val", type=int, default=80, help="synthetic validation images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.004, help="Adam lr0 of every training stage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--sparse-epochs", type=int, default=10)
    parser.add_argument("--sparse-lr", type=float, default=0.01, help="Adam lr0 of sparsity training")
    parser.add_argument("--s", type=float, default=0.002, help="L1 weight on BN γ during sparsity training")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="leave out the reference row (the baseline trained on for sparsity + fine-tuning)")
    parser.add_argument("--max-shortcuts", type=int, default=20, help="layer sweep up to this many residual units")
    parser.add_argument("--round-to", type=int, default=1, help="pruned widths a multiple of this (1: any width; "
                        "at a quarter width the first layers have 8-16 channels, which 8 would keep)")
    parser.add_argument("--max-map-drop", type=float, default=0.05, help="the sweep's allowed drop before fine-tuning")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-accuracy"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cfg_path = args.work / f"{args.model}-w{args.width}-2c.cfg"
    make_cfg(args.model, 2, args.img_size, width=args.width).write(cfg_path)
    console, store = StageConsole(), LocalStore(args.work / "store")
    background = StageConsole(bars=False, prefix="reference: ")  # a reference trained beside the other stages
    try:
        result = run_pipeline(config(args, cfg_path), LocalRunner(store), store,
                              say=lambda line: print(line, file=sys.stderr, flush=True), progress=console,
                              background_progress=background)
    finally:
        console.close()
        background.close()
    sweep = result.stages["sweep"]["metrics"]
    red = reductions(result)
    plot = Artifact(**result.stages["sweep"]["artifacts"]["plot"])
    store.fetch(plot, RESULTS / "accuracy-sweep.png", "sweep plot")
    save("accuracy", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                      "result": result.as_dict(), "reductions": red})
    print(f"\n{result.table()}\n")
    for note in result.notes():
        print(f"- {note}")
    print(f"\nsweep (no fine-tuning; best point within {args.max_map_drop} of the sparse model's mAP@0.5):")
    print(sweep_table(sweep))
    print(f"\nfine-tuned against baseline: params -{red['params']:.1%} (target ≥ {TARGETS['params']:.0%}), "
          f"BFLOPs -{red['bflops']:.1%} (target ≥ {TARGETS['bflops']:.0%}), mAP@0.5 {-red['map_drop']:+.3f} "
          f"(target ≥ -{TARGETS['map_drop']}), int8 mAP@0.5 {-red['int8_map_drop']:+.3f}; OpenVINO FPS ×"
          f"{red['fps_ratio'] or 0:.2f} (int8 ×{red['int8_fps_ratio'] or 0:.2f}); "
          f"wall time {result.seconds / 60:.0f} min")


if __name__ == "__main__":
    main()
