"""The sweep's choice by measured FPS against its choice by BFLOPs, on the accuracy benchmark's model.

The sparse model of a ``benchmarks/accuracy.py`` run (yolov4 ×0.25 after sparsity training,
and its synthetic validation set) goes through ``slimyolo prune sweep --objective fps``: the same
coarse-then-fine channel and layer search as the accuracy run's sweep, every point converted to
an f32 IR and timed by OpenVINO on this CPU. The search does not depend on the objective, so
the one sweep yields both choices: the fewest BFLOPs within the drop (the original projects'
rule) and the most FPS within the drop. Both chosen points are then measured in INT8 too.
Printed: each choice's point, mAP@0.5 (before fine-tuning, the sweep's criterion), params,
BFLOPs, activation MB, f32 and int8 FPS; saved: the sweep's rows and its plot (mAP@0.5 against
FPS with the Pareto front) as ``benchmarks/results/sweep_objective.{json,png}``.

    .venv/bin/python benchmarks/accuracy.py --s 0.002          # first, once: the sparse model
    .venv/bin/python benchmarks/sweep_objective.py [--accuracy-work /tmp/slimyolo-bench-accuracy]
        [--max-map-drop 0.05] [--max-shortcuts 20] [--seconds 1] [--repeats 3]
    .venv/bin/python benchmarks/sweep_objective.py --cfg M.cfg --weights M.weights --data D.data   # any model
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, markdown_table, save

from slimyolo.data.dataset import read_data_file
from slimyolo.errors import SlimYoloError
from slimyolo.progress import Event, SweepPoint
from slimyolo.prune import SweepOptions, open_model, prune_both, prune_layers
from slimyolo.prune.speed import FpsMeter
from slimyolo.prune.sweep import sweep
from slimyolo.train.evaluate import evaluate


def accuracy_inputs(work: Path) -> tuple[Path, Path, Path]:
    """(cfg, weights, .data) of the newest accuracy run's sparse model under ``work``."""
    runs = sorted((work / "runs").glob("accuracy-*"))
    if not runs:
        raise SlimYoloError(f"{work}: no accuracy run (run benchmarks/accuracy.py first, or give --cfg, --weights "
                            "and --data)")
    sparse = work / "store" / "runs" / runs[-1].name / "sparse"
    return sparse / "model.cfg", sparse / "best.weights", runs[-1] / "data" / "synth.data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy-work", type=Path, default=Path("/tmp/slimyolo-bench-accuracy"))
    parser.add_argument("--cfg", type=Path)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--percents", default="0.5,0.95,0.05", help="LO,HI,STEP of the channel sweep")
    parser.add_argument("--max-shortcuts", type=int, default=20, help="layer sweep 0..N by 4 (0: channels only)")
    parser.add_argument("--max-map-drop", type=float, default=0.05)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--max-images", type=int, help="evaluate at most this many validation images")
    parser.add_argument("--seconds", type=float, default=1.0, help="one FPS measurement")
    parser.add_argument("--repeats", type=int, default=3, help="FPS measurements per point (the best counts)")
    parser.add_argument("--name", default="sweep_objective", help="results file name (benchmarks/results/NAME)")
    args = parser.parse_args()
    cfg, weights, data_file = (args.cfg, args.weights, args.data) if args.weights else \
        accuracy_inputs(args.accuracy_work)
    data = read_data_file(data_file)
    model = open_model(cfg, weights)
    lo, hi, step = (float(v) for v in args.percents.split(","))
    units = (0, args.max_shortcuts, 4) if args.max_shortcuts else None
    f32 = FpsMeter("f32", args.seconds, args.repeats)
    before = machine()

    def evaluate_model(m: Any) -> Any:
        return evaluate(m, data, batch_size=16, max_images=args.max_images)

    def show(event: Event) -> None:
        if isinstance(event, SweepPoint):
            r = event.row
            print(f"{r.method:<9} {r.global_percent} + {r.shortcuts}: mAP@0.5 {r.map50:.4f}, "
                  f"{r.bflops:.3f} BFLOPs, {r.fps:.1f} FPS", file=sys.stderr, flush=True)

    options = SweepOptions(percents=(lo, hi, step), shortcuts=units, max_map_drop=args.max_map_drop,
                           round_to=args.round_to, objective="fps")
    result, _ = sweep(model, evaluate_model, options, progress=show, measure_fps=f32)
    int8 = FpsMeter("int8", args.seconds, args.repeats)
    rows = []
    for objective, row in {"baseline": result.baseline, **result.choices()}.items():
        if row is None:
            rows.append([objective, "no point within the drop", "", "", "", "", "", ""])
            continue
        if row.method == "baseline":
            pruned = model
        elif row.global_percent is None:
            pruned = prune_layers(model, row.shortcuts).model
        else:
            pruned = prune_both(model, row.global_percent, row.shortcuts, round_to=args.round_to).model
        point = "-" if row.method == "baseline" else f"{row.method} {row.global_percent or ''} + {row.shortcuts} units"
        rows.append([objective if objective == "baseline" else f"by {objective}", point, round(row.map50, 4),
                     f"{row.params:,}", round(row.bflops, 3), row.activation_mb, round(row.fps, 1),
                     round(int8(pruned), 1)])
    table = markdown_table(["choice", "point", "mAP@0.5 (no fine-tuning)", "params", "BFLOPs", "activation MB",
                            "f32 FPS", "int8 FPS"], rows)
    with tempfile.TemporaryDirectory() as tmp:
        paths = result.save(Path(tmp) / "sweep")
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(paths["png"], RESULTS / f"{args.name}.png")
        saved = json.loads(paths["json"].read_text())
    save(args.name, {"machine": before, "machine_after": machine()["load_average"], "inputs": [str(cfg), str(weights),
                     str(data_file)], "f32": f32.note(), "int8": int8.note(), "table": rows, "sweep": saved})
    print(f"\nmachine: {before}\nFPS: {f32.note()}; int8: {int8.note()}\n\n{table}\n")
    print(result.table())


if __name__ == "__main__":
    main()
