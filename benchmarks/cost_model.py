"""Which cost predicts the speed of pruned networks on this CPU: BFLOPs or activation traffic?

yolov3-spp and yolov4 (2 classes, 416) with the sparse γ of ``benchmarks/speed.py`` are pruned
at a grid of global percents, with and without the original projects' residual units cut, and
with round-to 1 and 8; every variant is converted (PyTorch → IR) and its OpenVINO f32
throughput measured by the sweep's own meter (:class:`slimyolo.prune.speed.FpsMeter`: throughput
hint, inference only, best of N short runs). The time per frame (1000 / FPS, ms) is then fitted,
over the pruned variants, by least squares against

- BFLOPs (``ms = a·BFLOPs + b``),
- activation traffic (``ms = a·MB + b``; ``slimyolo info``'s ``activation_mb``: f32 bytes of
  every layer's output written and read),
- both (``ms = a·BFLOPs + c·MB + b``),

and each fit's R² and leave-one-out mean absolute percentage error are printed per model, with
a plot of ms against each cost. Timing is only meaningful on a quiet machine: the load average
before and after is recorded with the results.

    .venv/bin/python benchmarks/cost_model.py [--models yolov3-spp,yolov4] [--size 416]
        [--percents 0.5,0.7,0.8,0.85,0.9] [--round-to 1,8] [--seconds 2] [--repeats 3]
    .venv/bin/python benchmarks/cost_model.py --report benchmarks/results/cost_model.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save
from speed import POINTS, near_zero

from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights, sparsify_gammas
from slimyolo.prune import prune_both
from slimyolo.prune.speed import FpsMeter

COSTS = {"BFLOPs": ("bflops",), "activation MB": ("activation_mb",), "both": ("bflops", "activation_mb")}


def variants(name: str, size: int, percents: list[float], round_tos: list[int], meter: FpsMeter) -> list[dict]:
    """The unpruned model and every pruned variant, measured."""
    model = sparsify_gammas(init_random_weights(load_model(make_cfg(name, 2, size)), 0), near_zero, 0)
    _, units = POINTS[name]
    out = []

    def add(label: str, pruned: Any, stats: Any, **point: Any) -> None:
        fps = meter(pruned)
        out.append({"variant": label, **point, "params": stats.params, "bflops": round(stats.bflops, 4),
                    "activation_mb": stats.activation_mb, "fps": fps, "ms": round(1000.0 / fps, 3)})
        print(f"{name} {label}: {stats.bflops:.2f} BFLOPs, {stats.activation_mb:.1f} MB, {fps:.1f} FPS", flush=True)

    from slimyolo.darknet.flops import model_stats

    add("unpruned", model, model_stats(model.cfg), percent=None, units=0, round_to=1)
    for percent in percents:
        for n in (0, units):
            for round_to in round_tos:
                result = prune_both(model, percent, n, layer_keep=0.01, round_to=round_to)
                add(f"{percent} + {n} units, round-to {round_to}", result.model, result.after, percent=percent,
                    units=n, round_to=round_to)
    return out


def fit(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Least squares of ms on ``keys`` (+ intercept): coefficients, R², leave-one-out MAPE."""
    x = np.array([[r[k] for k in keys] + [1.0] for r in rows])
    y = np.array([r["ms"] for r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - float(((y - x @ coef) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    errors = []
    for i in range(len(rows)):  # leave one out: how well it predicts a variant it has not seen
        keep = np.arange(len(rows)) != i
        c, *_ = np.linalg.lstsq(x[keep], y[keep], rcond=None)
        errors.append(abs(float(x[i] @ c) - y[i]) / y[i])
    return {"coef": [round(float(c), 5) for c in coef], "r2": round(r2, 3),
            "loo_mape": round(100 * float(np.mean(errors)), 1)}


def report(name: str, rows: list[dict]) -> str:
    pruned = [r for r in rows if r["percent"] is not None]
    table = markdown_table(["variant", "params", "BFLOPs", "activation MB", "f32 FPS", "ms / frame"],
                           [[r["variant"], f"{r['params']:,}", r["bflops"], r["activation_mb"], round(r["fps"], 1),
                             r["ms"]] for r in rows])
    fits = []
    for label, keys in COSTS.items():
        f = fit(pruned, keys)
        terms = " + ".join(f"{c:.4g}·{k}" for c, k in zip(f["coef"], keys, strict=False))
        fits.append([label, f"ms = {terms} + {f['coef'][-1]:.3g}", f["r2"], f"{f['loo_mape']} %"])
    fit_table = markdown_table(["predictor", "fit over the pruned variants", "R²", "leave-one-out error"], fits)
    return f"### {name}\n\n{table}\n\n{fit_table}\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in result["models"].items():
        pruned = [r for r in rows if r["percent"] is not None]
        for ax, key in zip(axes, ("bflops", "activation_mb"), strict=True):
            ax.scatter([r[key] for r in pruned], [r["ms"] for r in pruned], label=name, alpha=0.75)
    for ax, label in zip(axes, ("BFLOPs", "activation traffic (MB, f32)"), strict=True):
        ax.set_xlabel(label)
        ax.set_ylabel("ms per frame (1000 / throughput FPS)")
        ax.legend(fontsize=8)
    fig.suptitle(f"pruned variants, OpenVINO f32, {result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="yolov3-spp,yolov4")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--percents", default="0.5,0.7,0.8,0.85,0.9")
    parser.add_argument("--round-to", default="1,8", help="round-to values of every point")
    parser.add_argument("--seconds", type=float, default=2.0, help="one FPS measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant (the best counts)")
    parser.add_argument("--name", default="cost_model", help="results file name (benchmarks/results/NAME.json)")
    parser.add_argument("--report", type=Path, help="only print the tables (and redraw the plot) of saved results")
    args = parser.parse_args()
    if args.report:
        result = json.loads(args.report.read_text())
    else:
        meter = FpsMeter("f32", args.seconds, args.repeats)
        result = {"machine": machine(), "meter": meter.note(), "size": args.size, "models": {}}
        for name in args.models.split(","):
            result["models"][name] = variants(name, args.size, [float(p) for p in args.percents.split(",")],
                                              [int(r) for r in args.round_to.split(",")], meter)
        result["machine_after"] = machine()["load_average"]
        args.report = save(args.name, result)
    plot(result, args.report.with_suffix(".png"))
    print(f"\nmachine: {result['machine']}\nFPS: {result['meter']}\n")
    print("\n".join(report(name, rows) for name, rows in result["models"].items()))


if __name__ == "__main__":
    main()
