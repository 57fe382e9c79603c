"""How a serving thread should wait for its inference: ``Engine.infer`` against ``Engine.submit(...).result()``.

The inference service answers each Detect and ModelInfer call on a gRPC worker thread that waits for
its own result anyway. ``Engine.submit`` hands the tensor to a request and the result back through
the engine's collector thread (a future, resolved in submission order); ``Engine.infer`` runs the
tensor on a free request of the same pool in the calling thread and waits with the GIL released.
Here ``--threads`` threads call one or the other in a closed loop on each IR, alternating the two
ways ``--repeats`` times (medians), and the figures are inferences a second and this process's CPU
per inference (user + system). Nothing else may run meanwhile.

    .venv/bin/python benchmarks/engine_calls.py MODEL.xml [MODEL.xml ...] [--seconds 5] [--threads 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import announce_machine, markdown_table, save

from slimyolo.infer.engine import Engine


def closed_loop(call: Callable[[], Any], threads: int, seconds: float) -> dict[str, float]:
    """``threads`` threads calling ``call`` until ``seconds`` pass: calls a second, CPU ms per call."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            call()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu, calls = time.perf_counter() - t0, time.process_time() - cpu0, sum(counts)
    return {"per_s": round(calls / elapsed, 1), "cpu_ms": round(1000 * cpu / calls, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="IRs (model.xml, or a model version folder)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = announce_machine()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for path in args.models:
        engine = Engine(path, hint="throughput", precision="f32")
        h, w = engine.input_size
        tensor = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        ways = {"submit().result()": lambda e=engine, x=tensor: e.submit(x).result(),
                "infer()": lambda e=engine, x=tensor: e.infer(x)}
        for call in ways.values():  # warm-up: the requests' first inferences
            closed_loop(call, args.threads, 1.0)
        runs: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, call in ways.items():  # alternating, so that a change in the machine's load falls on both
                runs[way].append(closed_loop(call, args.threads, args.seconds))
        results[str(path)] = {way: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for way, rs in runs.items()}
        print(path, results[str(path)], flush=True)
    out = save("engine_calls", {"machine": info, "threads": args.threads, "seconds": args.seconds,
                                "repeats": args.repeats, "models": results})
    print(markdown_table(["model", "way", "inferences/s", "CPU ms/inference"],
                         [[model, way, r["per_s"], r["cpu_ms"]] for model, ways in results.items()
                          for way, r in ways.items()]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
