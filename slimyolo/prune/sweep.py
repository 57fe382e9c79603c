"""The best-pruning-point sweep: prune at many strengths, evaluate each without fine-tuning.

The original projects print this table by hand, one command per point. Here the search is
automatic: for each axis a coarse grid is evaluated from the weakest point up until mAP@0.5
falls below ``baseline - max_map_drop`` (the collapse), then the gap between the last good
and the first bad point is filled at the fine step. With a shortcuts range the sweep runs
three stages — channels alone, residual units alone, then for each coarse unit count the
channel search again (up to the percent that passed alone) — and the best point is the
evaluated point with the fewest parameters whose mAP stays within the allowed drop.

Evaluation is a parameter (any ``Darknet -> object with precision, recall, map50``), so the
search is testable and the service can plug in its own; the CLI uses
:func:`slimyolo.train.evaluate.evaluate` on the ``.data`` file's validation list. Each row goes
to ``progress`` as ``{"stage": "sweep", "row": {...}}``; raising
:class:`~slimyolo.errors.Cancelled` there stops the sweep before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_dir
from slimyolo.prune.algorithms import check_args, choose_units, prune_both, prune_layers
from slimyolo.prune.result import PruneResult, check_out_dir, prepare_out_dir


class Metrics(Protocol):
    precision: float
    recall: float
    map50: float


EvalFn = Callable[[Darknet], Metrics]
Progress = Callable[[dict], None]


@dataclass(frozen=True)
class SweepRow:
    stage: str  # "baseline", "channel", "layer" or "both"
    global_percent: float | None
    shortcuts: int
    precision: float
    recall: float
    map50: float
    params: int
    weights_bytes: int
    bflops: float
    latency_ms: float | None
    within: bool  # mAP within the allowed drop of the baseline


@dataclass
class SweepResult:
    baseline: SweepRow
    rows: list[SweepRow]  # every evaluated point, baseline first, in evaluation order
    best: SweepRow | None  # None when no pruned point stays within the drop
    max_map_drop: float
    settings: dict[str, Any] = field(default_factory=dict)
    latency_note: str = ""

    def as_dict(self) -> dict:
        return {"settings": self.settings, "max_map_drop": self.max_map_drop,
                "latency": self.latency_note, "baseline": asdict(self.baseline),
                "best": asdict(self.best) if self.best else None, "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        """The printed table, with the best point marked."""
        head = (f"{'stage':<9}{'percent':>8}{'units':>6}{'P':>7}{'R':>7}{'mAP@0.5':>9}{'params':>13}"
                f"{'size MB':>9}{'BFLOPs':>9}{'lat ms':>8}  ok")
        lines = [f"# latency: {self.latency_note}", head]
        for r in self.rows:
            pct = "-" if r.global_percent is None else f"{r.global_percent:.3f}"
            lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
            mark = "yes" if r.within else "no"
            if r is self.best:
                mark += "  <- best"
            lines.append(f"{r.stage:<9}{pct:>8}{r.shortcuts:>6}{r.precision:>7.3f}{r.recall:>7.3f}{r.map50:>9.4f}"
                         f"{r.params:>13,}{r.weights_bytes / 1e6:>9.2f}{r.bflops:>9.3f}{lat:>8}  {mark}")
        if self.best is None:
            lines.append(f"no pruned point keeps mAP@0.5 within {self.max_map_drop} of {self.baseline.map50:.4f}")
        else:
            b = self.best
            what = (f"global percent {b.global_percent:.3f}" if b.global_percent is not None else "") + \
                   (f"{' + ' if b.global_percent is not None and b.shortcuts else ''}"
                    f"{b.shortcuts} residual units" if b.shortcuts else "")
            lines.append(f"best pruning point: {what}: mAP@0.5 {b.map50:.4f} (baseline {self.baseline.map50:.4f}), "
                         f"params {self.baseline.params:,} -> {b.params:,}, BFLOPs {self.baseline.bflops:.3f} -> "
                         f"{b.bflops:.3f}")
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        names = list(SweepRow.__dataclass_fields__)
        writer = csv.DictWriter(buf, fieldnames=[*names, "best"])
        writer.writeheader()
        for r in self.rows:
            writer.writerow({**asdict(r), "best": r is self.best})
        return buf.getvalue()

    def plot(self, path: Path) -> None:
        """mAP@0.5 and params against pruning strength, one panel per stage (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stages = [s for s in ("channel", "layer", "both") if any(r.stage == s for r in self.rows)]
        fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(6 * max(len(stages), 1), 4.2), squeeze=False)
        floor = self.baseline.map50 - self.max_map_drop
        for ax, stage in zip(axes[0], stages, strict=False):
            rows = [r for r in self.rows if r.stage == stage]
            counts = sorted({r.shortcuts for r in rows})
            series = ([(f"{n} units", [r for r in rows if r.shortcuts == n]) for n in counts]
                      if stage == "both" else [("", rows)])
            twin = ax.twinx()
            for label, pts in series:
                pts = sorted(pts, key=lambda r: (r.shortcuts if stage == "layer" else r.global_percent))
                xs = [r.shortcuts if stage == "layer" else r.global_percent for r in pts]
                ax.plot(xs, [r.map50 for r in pts], "o-", label=f"mAP@0.5 {label}".strip())
                twin.plot(xs, [r.params / 1e6 for r in pts], "s--", alpha=0.5, label=f"params {label}".strip())
            ax.axhline(floor, color="red", lw=0.8, ls=":", label=f"baseline - {self.max_map_drop}")
            if self.best is not None and self.best.stage == stage:
                bx = self.best.shortcuts if stage == "layer" else self.best.global_percent
                ax.plot([bx], [self.best.map50], "*", ms=16, color="gold", mec="black", label="best")
            ax.set_xlabel("residual units removed" if stage == "layer" else "global percent")
            ax.set_ylabel("mAP@0.5")
            twin.set_ylabel("params (M)")
            ax.set_title(f"{stage} pruning (no fine-tuning)")
            ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def save(self, out_dir: str | Path, best_model: PruneResult | None = None) -> dict[str, Path]:
        """Write sweep.json, sweep.csv, sweep.png (and best/ with the best pruned model) at once."""
        out_dir = Path(out_dir)
        prepare_out_dir(out_dir)
        with atomic_dir(out_dir) as tmp:
            (tmp / "sweep.json").write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")
            (tmp / "sweep.csv").write_text(self.csv(), encoding="utf-8")
            self.plot(tmp / "sweep.png")
            if best_model is not None:
                best_model.save(tmp / "best")
        paths = {name: out_dir / f"sweep.{name}" for name in ("json", "csv", "png")}
        if best_model is not None:
            paths["best"] = out_dir / "best"
        return paths


def measure_latency(model: Darknet, runs: int = 3) -> float:
    """Fastest of ``runs`` timed batch-1 forward passes (ms) in PyTorch on this CPU, after a warm-up.

    The minimum, not the median: on a shared machine other work only ever adds time, so the
    fastest run is the best estimate of what the model itself costs.
    """
    h, w = model.input_size
    x = torch.rand(1, model.graph.input_shape[0], h, w)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def percent_grid(lo: float, hi: float, step: float) -> list[float]:
    n = math.floor((hi - lo) / step + 1e-9)
    values = [round(lo + k * step, 6) for k in range(n + 1)]
    if values[-1] < hi - 1e-9:
        values.append(round(hi, 6))
    return values


def search_axis(coarse: list, fine_step: float | int, evaluate_at: Callable[[Any], SweepRow]) -> Any:
    """The strongest value of one axis whose row stays within the drop (None if none does).

    ``coarse`` is evaluated in increasing strength until the first failure; the gap between
    the last good value and that failure is then filled at ``fine_step``.
    """
    last_ok, first_bad = None, None
    for v in coarse:
        if evaluate_at(v).within:
            last_ok = v
        else:
            first_bad = v
            break
    if first_bad is None or last_ok is None:
        return last_ok
    integer = isinstance(fine_step, int)
    v = last_ok + fine_step
    while v < first_bad - (0 if integer else 1e-9):
        v = v if integer else round(v, 6)
        if not evaluate_at(v).within:
            break
        last_ok = v
        v += fine_step
    return last_ok


def sweep(model: Darknet, evaluate: EvalFn, percents: tuple[float, float, float] = (0.5, 0.95, 0.05),
          shortcuts: tuple[int, int, int] | None = None, max_map_drop: float = 0.01, layer_keep: float = 0.01,
          round_to: int = 1, fine_percent: float = 0.01, latency_runs: int = 3,
          progress: Progress | None = None) -> tuple[SweepResult, PruneResult | None]:
    """Search the best pruning point of ``model`` (see the module docstring).

    ``percents`` and ``shortcuts`` are (lo, hi, coarse step). Returns the result and the pruned
    model at the best point (None if no point stays within the drop).
    """
    p_lo, p_hi, p_step = percents
    check_args(p_lo, None, layer_keep, round_to)
    check_args(p_hi, None)
    if p_step <= 0 or fine_percent <= 0 or p_hi < p_lo:
        raise SlimYoloError(f"bad percent range {percents}: need lo <= hi and positive steps")
    if latency_runs < 0:
        raise SlimYoloError(f"latency runs must not be negative, got {latency_runs}")
    if max_map_drop < 0:
        raise SlimYoloError(f"max mAP drop must not be negative, got {max_map_drop}")
    if shortcuts is not None:
        s_lo, s_hi, s_step = shortcuts
        if s_lo < 0 or s_hi < s_lo or s_step < 1:
            raise SlimYoloError(f"bad shortcuts range {shortcuts}: need 0 <= lo <= hi and a positive step")
        choose_units(model, s_hi)  # more units than the model has is an error now, not after an hour
    note = (f"PyTorch CPU, batch 1 at {model.input_size[1]}x{model.input_size[0]}, {torch.get_num_threads()} "
            f"threads, fastest of {latency_runs} runs (a quick relative figure, not the OpenVINO latency)")
    rows: list[SweepRow] = []
    best: list = [None, None]  # (row, PruneResult) of the fewest-params point within the drop so far

    def add(stage: str, percent: float | None, units: int, pruned: Darknet, stats, floor: float | None) -> SweepRow:
        m = evaluate(pruned)
        lat = measure_latency(pruned, latency_runs) if latency_runs > 0 else None
        within = True if floor is None else float(m.map50) >= floor - 1e-12
        row = SweepRow(stage, percent, units, float(m.precision), float(m.recall), float(m.map50), stats.params,
                       stats.weights_bytes, float(stats.bflops), lat, within)
        rows.append(row)
        if progress is not None:
            progress({"stage": "sweep", "row": asdict(row)})
        return row

    from slimyolo.darknet.flops import model_stats

    baseline = add("baseline", None, 0, model, model_stats(model.cfg), None)
    floor = baseline.map50 - max_map_drop

    def point(stage: str, percent: float | None, units: int) -> SweepRow:
        if percent is None:
            result = prune_layers(model, units)
        else:
            result = prune_both(model, percent, units, layer_keep, round_to)
        row = add(stage, percent, units, result.model, result.after, floor)
        # Only the best pruned model is kept in memory: a sweep of yolov4 evaluates dozens.
        if row.within and (best[0] is None or _stronger(row, best[0])):
            best[:] = [row, result]
        return row

    p_grid = percent_grid(p_lo, p_hi, p_step)
    best_p = search_axis(p_grid, fine_percent, lambda p: point("channel", p, 0))
    if shortcuts is not None:
        s_grid = [n for n in range(s_lo, s_hi + 1, s_step) if n > 0]
        if s_grid and s_grid[-1] != s_hi:
            s_grid.append(s_hi)
        best_n = search_axis(s_grid, 1, lambda n: point("layer", None, n))
        if best_p is not None and best_n is not None:
            cap = best_p
            for n in sorted({*[v for v in s_grid if v <= best_n], best_n}):
                found = search_axis(percent_grid(p_lo, cap, p_step), fine_percent, lambda p, n=n: point("both", p, n))
                if found is None:
                    break
                cap = found
    settings = {"percents": list(percents), "fine_percent": fine_percent,
                "shortcuts": list(shortcuts) if shortcuts else None, "layer_keep": layer_keep, "round_to": round_to}
    result = SweepResult(baseline, rows, best[0], max_map_drop, settings, note if latency_runs > 0 else "not measured")
    if progress is not None:
        progress({"stage": "sweep", "best": asdict(best[0]) if best[0] else None})
    return result, best[1]


def _stronger(a: SweepRow, b: SweepRow) -> bool:
    """Stronger pruning: fewer params, then fewer BFLOPs, then the higher mAP."""
    return (a.params, a.bflops, -a.map50) < (b.params, b.bflops, -b.map50)


def run_sweep_command(args) -> int:
    """``slimyolo prune sweep``: the CLI around :func:`sweep` with the real evaluation."""
    from slimyolo.data.dataset import read_data_file
    from slimyolo.prune.algorithms import open_model
    from slimyolo.prune.cli import parse_range
    from slimyolo.train.evaluate import evaluate

    lo, hi, step = parse_range(args.percents, "percents", float)
    percents = (lo, hi, step or 0.05)
    units = None
    if args.shortcuts:
        s_lo, s_hi, s_step = parse_range(args.shortcuts, "shortcuts", int)
        units = (s_lo, s_hi, s_step or max(1, (s_hi - s_lo) // 5))
    check_args(lo, None, args.layer_keep, args.round_to)
    check_args(hi, None)
    check_out_dir(args.out)
    data = read_data_file(args.data)
    model = open_model(args.cfg, args.weights)

    def evaluate_model(m: Darknet) -> Metrics:
        return evaluate(m, data, img_size=args.img_size, batch_size=args.batch_size, max_images=args.max_images)

    def show(event: dict) -> None:
        row = event.get("row")
        if row:
            pct = "-" if row["global_percent"] is None else f"{row['global_percent']:.3f}"
            print(f"{row['stage']:<9} percent {pct:>6} units {row['shortcuts']:>3}: mAP@0.5 {row['map50']:.4f} "
                  f"params {row['params']:,}", file=sys.stderr, flush=True)

    result, best = sweep(model, evaluate_model, percents, units, args.max_map_drop, args.layer_keep, args.round_to,
                         latency_runs=args.latency_runs, progress=show)
    paths = result.save(args.out, best)
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
