"""The best-pruning-point sweep: prune at many strengths, evaluate each without fine-tuning.

The original projects print this table by hand, one command per point. Here the search is
automatic: for each axis a coarse grid is evaluated from the weakest point up until mAP@0.5
falls below ``baseline - max_map_drop`` (the collapse), then the gap between the last good
and the first bad point is filled at the fine step. With a shortcuts range the sweep runs
three stages — channels alone, residual units alone, then for each coarse unit count the
channel search again (up to the percent that passed alone). The best point is, among the
evaluated points whose mAP stays within the allowed drop, the one the ``objective`` prefers:

- ``bflops`` (the default): the fewest BFLOPs (then params), the original projects' rule, which
  needs no measurement and gives the same choice on every machine;
- ``fps``: the most frames per second measured with OpenVINO on this CPU
  (:class:`~slimyolo.prune.speed.FpsMeter`): every row is converted and timed, and the table
  and plot show mAP@0.5 against FPS with the Pareto front marked. Past a point BFLOPs stop
  buying speed (thin layers wait on memory), so the fastest point within the drop is often
  not the one with the fewest BFLOPs, and it keeps more mAP.

The search itself does not depend on the objective, so a sweep that measured FPS records the
choice of both (``choices`` in ``sweep.json``).

Evaluation is a parameter (any ``Darknet -> object with precision, recall, map50``, or
``Darknet -> (P, R, map50)``), so the search is testable and the service can plug in its own;
the CLI uses
:func:`slimyolo.train.evaluate.evaluate` on the ``.data`` file's validation list. Each row goes
to ``progress`` as a :class:`~slimyolo.progress.SweepPoint`, the choice at the end as a
:class:`~slimyolo.progress.SweepBest`; raising
:class:`~slimyolo.errors.Cancelled` there stops the sweep before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from slimyolo import vocab
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_dir
from slimyolo.progress import Event, Progress, SweepBest, SweepPoint, SweepRow
from slimyolo.prune.algorithms import check_args, choose_units, model_sparsity, prune_both, prune_layers
from slimyolo.prune.report import GAP_WARN, SparsityReport
from slimyolo.prune.result import PruneResult, check_out_dir, prepare_out_dir


class Metrics(Protocol):
    precision: float
    recall: float
    map50: float


EvalFn = Callable[[Darknet], "Metrics | tuple[float, float, float]"]


def as_metrics(m: object) -> tuple[float, float, float]:
    """(precision, recall, map50) of what an evaluation function returned: an object with
    ``precision``, ``recall`` and ``map50`` (an :class:`~slimyolo.train.evaluate.EvalResult`), or a
    ``(P, R, map50)`` tuple. Anything else is a :class:`SlimYoloError` that says what is needed."""
    if all(hasattr(m, a) for a in ("precision", "recall", "map50")):
        values = (m.precision, m.recall, m.map50)  # type: ignore[attr-defined]
    elif isinstance(m, (tuple, list)) and len(m) == 3:
        values = tuple(m)
    else:
        raise SlimYoloError(f"the sweep's evaluation function returned {type(m).__name__} {m!r:.80}: it must "
                            "return (precision, recall, map50) or an object with .precision, .recall and .map50 "
                            "(as slimyolo.train.evaluate.evaluate does)")
    try:
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    except (TypeError, ValueError) as e:
        raise SlimYoloError(f"the sweep's evaluation function returned non-numeric metrics {values!r:.80}: "
                            "precision, recall and map50 must be numbers") from e
FpsFn = Callable[[Darknet], float]


def _key(objective: str) -> Callable[[SweepRow], tuple]:
    """Sort key of rows, best first: fewest BFLOPs (then params), or most FPS (then fewest BFLOPs)."""
    if objective == "fps":
        return lambda r: (-(r.fps or 0.0), r.bflops, r.params, -r.map50)
    return lambda r: (r.bflops, r.params, -r.map50)


def choose(rows: list[SweepRow], objective: str) -> SweepRow | None:
    """The objective's best pruned row within the drop (None if none is)."""
    ok = [r for r in rows if r.within and r.stage != "baseline"]
    return min(ok, key=_key(objective)) if ok else None


def pareto(rows: list[SweepRow]) -> list[bool]:
    """For each row: on the mAP@0.5-against-FPS Pareto front (no row is as fast and as accurate,
    and better in one). Rows without FPS are never on it."""
    def dominated(r: SweepRow) -> bool:
        return any(o.fps is not None and o.fps >= r.fps and o.map50 >= r.map50 and (o.fps > r.fps or o.map50 > r.map50)
                   for o in rows)

    return [r.fps is not None and not dominated(r) for r in rows]


@dataclass
class SweepResult:
    baseline: SweepRow
    rows: list[SweepRow]  # every evaluated point, baseline first, in evaluation order
    best: SweepRow | None  # None when no pruned point stays within the drop
    max_map_drop: float
    settings: dict[str, Any] = field(default_factory=dict)
    latency_note: str = ""
    objective: str = "bflops"
    fps_note: str = ""  # how FPS was measured and on which CPU ("" when it was not)
    cpu: dict[str, Any] | None = None
    sparsity: SparsityReport | None = None

    def choices(self) -> dict[str, SweepRow | None]:
        """The best row by each objective the rows can judge (fps only when it was measured)."""
        objectives = vocab.SWEEP_OBJECTIVES if self.fps_note else ("bflops",)
        return {o: choose(self.rows, o) for o in objectives}

    def as_dict(self) -> dict:
        """sweep.json: ``best``, ``baseline`` and ``choices`` are copies of their rows (with ``pareto``)."""
        rows = [{**asdict(r), "pareto": p} for r, p in zip(self.rows, pareto(self.rows), strict=True)]
        by_id = {id(r): d for r, d in zip(self.rows, rows, strict=True)}

        def of(row: SweepRow | None) -> dict | None:
            return None if row is None else by_id[id(row)]

        return {"settings": self.settings, "max_map_drop": self.max_map_drop, "objective": self.objective,
                "latency": self.latency_note, "fps_measurement": self.fps_note, "cpu": self.cpu,
                "sparsity": self.sparsity.as_dict() if self.sparsity else None, "baseline": of(self.baseline),
                "best": of(self.best), "choices": {o: of(r) for o, r in self.choices().items()}, "rows": rows}

    def table(self) -> str:
        """The printed table: asked and removed fractions, FPS and the Pareto front when measured,
        the best point marked."""
        measured = bool(self.fps_note)
        head = (f"{'stage':<9}{'asked':>7}{'removed':>8}{'units':>6}{'P':>7}{'R':>7}{'mAP@0.5':>9}{'params':>13}"
                f"{'size MB':>9}{'BFLOPs':>9}{'act MB':>8}{'lat ms':>8}" + (f"{'FPS':>9}" if measured else "")
                + "  ok")
        lines = [f"# latency: {self.latency_note}"]
        if measured:
            lines.append(f"# FPS: {self.fps_note}; P = on the mAP@0.5/FPS Pareto front")
        if self.sparsity is not None:
            lines.append(f"# {self.sparsity.line()}")
        lines.append(head)
        gaps = 0
        for r, front in zip(self.rows, pareto(self.rows), strict=True):
            pct = "-" if r.global_percent is None else f"{r.global_percent:.3f}"
            removed = "-" if r.removed_fraction is None else f"{r.removed_fraction:.3f}"
            if r.global_percent is not None and r.removed_fraction is not None and \
                    abs(r.removed_fraction - r.global_percent) > GAP_WARN:
                removed += "!"
                gaps += 1
            lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
            fps = ("-" if r.fps is None else f"{r.fps:.1f}") + ("P" if front else " ")
            mark = "yes" if r.within else "no"
            if r is self.best:
                mark += "  <- best"
            lines.append(f"{r.stage:<9}{pct:>7}{removed:>8}{r.shortcuts:>6}{r.precision:>7.3f}{r.recall:>7.3f}"
                         f"{r.map50:>9.4f}{r.params:>13,}{r.weights_bytes / 1e6:>9.2f}{r.bflops:>9.3f}"
                         f"{r.activation_mb:>8.1f}{lat:>8}" + (f"{fps:>9}" if measured else "") + f"  {mark}")
        if gaps:
            lines.append(f"! removed differs from asked by more than {GAP_WARN:.0%} of the prunable channels "
                         "(ties at the threshold, or constraints keeping channels back: see summary.json)")
        if self.best is None:
            lines.append(f"no pruned point keeps mAP@0.5 within {self.max_map_drop} of {self.baseline.map50:.4f}")
        else:
            lines.append(f"best pruning point by {self.objective}: {_describe(self.best, self.baseline)}")
            for objective, row in self.choices().items():
                if objective != self.objective and row is not None and row is not self.best:
                    lines.append(f"(by {objective} it would be {_describe(row, self.baseline)})")
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        names = list(SweepRow.__dataclass_fields__)
        writer = csv.DictWriter(buf, fieldnames=[*names, "pareto", "best"])
        writer.writeheader()
        for r, front in zip(self.rows, pareto(self.rows), strict=True):
            writer.writerow({**asdict(r), "pareto": front, "best": r is self.best})
        return buf.getvalue()

    def plot(self, path: Path) -> None:
        """mAP@0.5 and params against pruning strength, one panel per stage, and mAP@0.5 against
        measured FPS with the Pareto front when FPS was measured (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stages = [s for s in ("channel", "layer", "both") if any(r.stage == s for r in self.rows)]
        panels = max(len(stages), 1) + bool(self.fps_note)
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
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
        if self.fps_note:
            self._plot_fps(axes[0][-1], floor)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def _plot_fps(self, ax: Any, floor: float) -> None:
        for stage, marker in (("baseline", "D"), ("channel", "o"), ("layer", "s"), ("both", "^")):
            pts = [r for r in self.rows if r.stage == stage and r.fps is not None]
            if pts:
                ax.scatter([r.fps for r in pts], [r.map50 for r in pts], marker=marker, alpha=0.7, label=stage)
        front = sorted((r for r, p in zip(self.rows, pareto(self.rows), strict=True) if p), key=lambda r: r.fps)
        ax.plot([r.fps for r in front], [r.map50 for r in front], "k--", lw=1, label="Pareto front")
        ax.axhline(floor, color="red", lw=0.8, ls=":", label=f"baseline - {self.max_map_drop}")
        for objective, row in self.choices().items():
            if row is not None and row.fps is not None:
                ax.plot([row.fps], [row.map50], "*" if objective == self.objective else "P", ms=16,
                        color="gold" if objective == "fps" else "violet", mec="black", label=f"best by {objective}")
        ax.set_xlabel("measured FPS (OpenVINO)")
        ax.set_ylabel("mAP@0.5")
        ax.set_title("mAP@0.5 against measured FPS", fontsize=10)
        ax.legend(fontsize=7, loc="lower left")

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


def _describe(row: SweepRow, baseline: SweepRow) -> str:
    what = " + ".join(([f"global percent {row.global_percent:.3f}"] if row.global_percent is not None else [])
                      + ([f"{row.shortcuts} residual units"] if row.shortcuts else []))
    fps = f", FPS {baseline.fps:.1f} -> {row.fps:.1f}" if row.fps is not None and baseline.fps is not None else ""
    return (f"{what}: mAP@0.5 {row.map50:.4f} (baseline {baseline.map50:.4f}), params {baseline.params:,} -> "
            f"{row.params:,}, BFLOPs {baseline.bflops:.3f} -> {row.bflops:.3f}{fps}")


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
          progress: Progress | None = None, objective: str = "bflops",
          measure_fps: FpsFn | None = None,
          known: Mapping[tuple, SweepRow] | None = None) -> tuple[SweepResult, PruneResult | None]:
    """Search the best pruning point of ``model`` (see the module docstring).

    ``percents`` and ``shortcuts`` are (lo, hi, coarse step). ``measure_fps`` (a
    :class:`~slimyolo.prune.speed.FpsMeter`, or any ``Darknet -> FPS``) is required by the
    ``fps`` objective and fills every row's ``fps``. ``known`` holds rows an interrupted sweep of
    the same model and settings evaluated (by :func:`point_key`): they are taken as they are,
    without evaluating again (the search visits the same points in the same order). Returns the
    result and the pruned model at the best point (None if no point stays within the drop).
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
    vocab.choose(objective, vocab.SWEEP_OBJECTIVES, "objective")
    if objective == "fps" and measure_fps is None:
        raise SlimYoloError("the fps objective needs an FPS measurement (measure_fps)")
    if shortcuts is not None:
        s_lo, s_hi, s_step = shortcuts
        if s_lo < 0 or s_hi < s_lo or s_step < 1:
            raise SlimYoloError(f"bad shortcuts range {shortcuts}: need 0 <= lo <= hi and a positive step")
        choose_units(model, s_hi)  # more units than the model has is an error now, not after an hour
    note = (f"PyTorch CPU, batch 1 at {model.input_size[1]}x{model.input_size[0]}, {torch.get_num_threads()} "
            f"threads, fastest of {latency_runs} runs (a quick relative figure, not the OpenVINO latency)")
    sparsity = model_sparsity(model)
    rows: list[SweepRow] = []
    better = _key(objective)
    best: list = [None, None]  # (row, PruneResult) of the objective's best point within the drop so far

    def add(stage: str, percent: float | None, units: int, pruned: Darknet, stats, floor: float | None,
            removed: float | None = None) -> SweepRow:
        reused = (known or {}).get((stage, percent, units))
        if reused is not None:
            rows.append(reused)
            if progress is not None:
                progress(SweepPoint(reused))
            return reused
        precision, recall, map50 = as_metrics(evaluate(pruned))
        lat = measure_latency(pruned, latency_runs) if latency_runs > 0 else None
        fps = float(measure_fps(pruned)) if measure_fps is not None else None
        within = True if floor is None else map50 >= floor - 1e-12
        row = SweepRow(stage, percent, units, precision, recall, map50, stats.params,
                       stats.weights_bytes, float(stats.bflops), lat, within, removed, stats.activation_mb, fps)
        rows.append(row)
        if progress is not None:
            progress(SweepPoint(row))
        return row

    from slimyolo.darknet.flops import model_stats

    baseline = add("baseline", None, 0, model, model_stats(model.cfg), None)
    floor = baseline.map50 - max_map_drop

    def point(stage: str, percent: float | None, units: int) -> SweepRow:
        if percent is None:
            result = prune_layers(model, units)
        else:
            result = prune_both(model, percent, units, layer_keep, round_to)
        report = result.channel_report
        row = add(stage, percent, units, result.model, result.after, floor,
                  None if report is None else round(report.removed_fraction, 6))
        # Only the best pruned model is kept in memory: a sweep of yolov4 evaluates dozens.
        if row.within and (best[0] is None or better(row) < better(best[0])):
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
    meter_note = getattr(measure_fps, "note", None)
    fps_note = (meter_note() if meter_note else "measured by the caller") if measure_fps is not None else ""
    result = SweepResult(baseline, rows, best[0], max_map_drop, settings, note if latency_runs > 0 else "not measured",
                         objective, fps_note, getattr(measure_fps, "cpu", None), sparsity)
    if progress is not None:
        progress(SweepBest(best[0]))
    return result, best[1]


def point_key(row: SweepRow) -> tuple:
    """What identifies a point of the search: (stage, asked fraction, residual units)."""
    return row.stage, row.global_percent, row.shortcuts


def run_sweep_command(args) -> int:
    """``slimyolo prune sweep``: the CLI around :func:`sweep` with the real evaluation."""
    from slimyolo.data.dataset import read_data_file
    from slimyolo.prune.algorithms import open_model
    from slimyolo.prune.cli import parse_range
    from slimyolo.prune.speed import FpsMeter
    from slimyolo.train.evaluate import evaluate

    lo, hi, step = parse_range(args.percents, "percents", float)
    percents = (lo, hi, step or 0.05)
    units = None
    if args.shortcuts:
        s_lo, s_hi, s_step = parse_range(args.shortcuts, "shortcuts", int)
        units = (s_lo, s_hi, s_step or max(1, (s_hi - s_lo) // 5))
    check_args(lo, None, args.layer_keep, args.round_to)
    check_args(hi, None)
    meter = FpsMeter(args.precision, args.fps_seconds, args.fps_repeats) if args.objective == "fps" else None
    check_out_dir(args.out)
    data = read_data_file(args.data)
    model = open_model(args.cfg, args.weights)

    def evaluate_model(m: Darknet) -> Metrics:
        return evaluate(m, data, img_size=args.img_size, batch_size=args.batch_size, max_images=args.max_images)

    def show(event: Event) -> None:
        if isinstance(event, SweepPoint):
            row = event.row
            pct = "-" if row.global_percent is None else f"{row.global_percent:.3f}"
            removed = "" if row.removed_fraction is None else f" removed {row.removed_fraction:.3f}"
            fps = "" if row.fps is None else f" FPS {row.fps:.1f}"
            print(f"{row.stage:<9} percent {pct:>6}{removed} units {row.shortcuts:>3}: mAP@0.5 "
                  f"{row.map50:.4f} params {row.params:,}{fps}", file=sys.stderr, flush=True)

    result, best = sweep(model, evaluate_model, percents, units, args.max_map_drop, args.layer_keep, args.round_to,
                         latency_runs=args.latency_runs, progress=show, objective=args.objective, measure_fps=meter)
    paths = result.save(args.out, best)
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
