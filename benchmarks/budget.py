"""The speed-budget sweep (``--objective accuracy``) with FPS measured here and by the inference service.

The same sparse model, data and budget go through the sweep twice: once timing every point on this
process's CPU (:class:`~slimyolo.prune.speed.FpsMeter`), once through an inference service
(``slimyolo serve inference`` started here on 127.0.0.1, reading its models from a local store) that
times each point server-side (:class:`~slimyolo.prune.speed.RemoteFpsMeter`, the ``BenchmarkModel``
RPC). On one machine both measure the same CPU, so the chosen points should agree within noise
(a point near the budget may fall either side of it); on a cluster the service's figures are those of
the inference nodes. Printed and saved (``benchmarks/results/budget.json``): each run's rows (FPS,
mAP@0.5 of the points that reached the budget), its choice, the evaluations the budget saved and the
time taken.

    make demo (or the README's quick start), for a sparse model and its data set; then
    .venv/bin/python benchmarks/budget.py --weights runs/sparse/best.pt --data synth/synth.data \\
        [--streams 4 --stream-fps 25 | --min-fps N] [--percents 0.3:0.9:0.1] [--seconds 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save
from serving import services

from slimyolo.data.dataset import read_data_file
from slimyolo.prune import SweepOptions, open_model
from slimyolo.prune.sweep import fps_meter, sweep
from slimyolo.store import LocalStore
from slimyolo.train.evaluate import evaluator
from slimyolo.train.options import EvalOptions


def run(model_path: Path, data: Path, options: SweepOptions, store: LocalStore | None) -> dict[str, Any]:
    """One budget sweep; the rows, the choice and what it took."""
    model = open_model(None, model_path)
    start = time.perf_counter()
    result, _ = sweep(model, evaluator(read_data_file(data), EvalOptions()), options,
                      measure_fps=fps_meter(options, store))
    seconds = time.perf_counter() - start
    best = result.best
    print(result.table(), flush=True)
    return {"measured_on": result.measured_on, "seconds": round(seconds, 1),
            "evaluations_saved": result.evaluations_saved(), "baseline_fps": result.baseline.fps,
            "best": None if best is None else {"global_percent": best.global_percent, "map50": best.map50,
                                                "fps": best.fps, "params": best.params},
            "rows": [{"global_percent": r.global_percent, "fps": r.fps, "map50": r.map50} for r in result.rows]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="the sparse model (.pt)")
    p.add_argument("--data", type=Path, required=True, help="its data set's .data file")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--stream-fps", type=float, default=25.0)
    p.add_argument("--min-fps", type=float, help="the budget in frames per second (instead of the streams)")
    p.add_argument("--percents", default="0.3:0.9:0.1", help="LO:HI:STEP of the coarse search")
    p.add_argument("--seconds", type=float, default=1.0, help="one FPS measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per point (the best counts)")
    args = p.parse_args()
    lo, hi, step = (float(v) for v in args.percents.split(":"))
    budget = {"min_fps": args.min_fps} if args.min_fps else {"streams": args.streams, "stream_fps": args.stream_fps}
    common = {"objective": "accuracy", "percents": (lo, hi, step), "precision": "f32", "fps_seconds": args.seconds,
              "fps_repeats": args.repeats, **budget}
    info = machine()
    print(f"machine: {info}", flush=True)
    local = run(args.weights, args.data, SweepOptions(**common), None)
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = Path(tmp) / "store"
        store_dir.mkdir()
        # Model control on: the sweep loads each point it times.
        env = {"SLIMYOLO_STORE": str(store_dir), "SLIMYOLO_MODEL_CONTROL": "explicit"}
        with services("models", 1, Path(tmp), env=env, ready="liveness") as target:
            remote = run(args.weights, args.data, SweepOptions(**common, measure_on=target), LocalStore(store_dir))
    rows = [[name, r["measured_on"], r["baseline_fps"],
             "-" if r["best"] is None else f"{r['best']['global_percent']:.3f}",
             "-" if r["best"] is None else r["best"]["map50"], "-" if r["best"] is None else r["best"]["fps"],
             r["evaluations_saved"], r["seconds"]] for name, r in (("this process", local), ("inference service",
                                                                                          remote))]
    print(markdown_table(["measured by", "on", "baseline FPS", "chosen percent", "mAP@0.5", "FPS",
                          "evaluations saved", "s"], rows))
    path = save("budget", {"machine": info, "settings": {k: v for k, v in common.items()}, "local": local,
                           "service": remote})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
