"""What a finished sweep shows: its printed table, ``sweep.csv``, ``sweep.png`` and the folder that holds them.

The search (:mod:`slimyolo.prune.sweep`) decides; this module only presents its
:class:`~slimyolo.prune.sweep.SweepResult`: the rows with their asked and removed fractions, the
mAP@0.5/FPS Pareto front when FPS was measured, the speed budget and the rows timed below it (not
evaluated), and the best point of each objective.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimyolo.fsutil import atomic_dir
from slimyolo.progress import SweepRow
from slimyolo.prune.report import GAP_WARN
from slimyolo.prune.result import PruneResult, prepare_out_dir

if TYPE_CHECKING:
    from slimyolo.prune.sweep import SweepResult

METHODS = ("channel", "layer", "both")  # the sweep's rows besides the baseline, one plot panel each


def pareto(rows: list[SweepRow]) -> list[bool]:
    """For each row: on the mAP@0.5-against-FPS Pareto front (no row is as fast and as accurate,
    and better in one). Rows without FPS, or not evaluated, are never on it."""
    scored = [r for r in rows if r.fps is not None and r.map50 is not None]

    def dominated(r: SweepRow) -> bool:
        return any(o.fps >= r.fps and o.map50 >= r.map50 and (o.fps > r.fps or o.map50 > r.map50) for o in scored)

    ids = {id(r) for r in scored}
    return [id(r) in ids and not dominated(r) for r in rows]


def table(result: SweepResult) -> str:
    """The printed table: asked and removed fractions, FPS and the Pareto front when measured,
    the best point marked."""
    measured = bool(result.fps_note)
    head = (f"{'method':<9}{'asked':>7}{'removed':>8}{'units':>6}{'P':>7}{'R':>7}{'mAP@0.5':>9}{'params':>13}"
            f"{'size MB':>9}{'BFLOPs':>9}{'act MB':>8}{'lat ms':>8}" + (f"{'FPS':>9}" if measured else "") + "  ok")
    lines = [f"# latency: {result.latency_note}"]
    if measured:
        lines.append(f"# FPS: {result.fps_note}; P = on the mAP@0.5/FPS Pareto front")
    if result.min_fps is not None:
        saved = result.evaluations_saved()
        lines.append(f"# budget: {result.budget_note}; {saved} point{'s' * (saved != 1)} timed but not evaluated "
                     "(the evaluations the budget saved)")
    if result.sparsity is not None:
        lines.append(f"# {result.sparsity.line()}")
    lines.append(head)
    gaps = 0
    for r, front in zip(result.rows, pareto(result.rows), strict=True):
        gap = _gap(r)
        gaps += gap
        lines.append(_line(r, front, measured, gap, r is result.best, result.min_fps))
    if gaps:
        lines.append(f"! removed differs from asked by more than {GAP_WARN:.0%} of the prunable channels "
                     "(ties at the threshold, or constraints keeping channels back: see summary.json)")
    lines += _verdict(result)
    return "\n".join(lines)


def _gap(r: SweepRow) -> bool:
    """Removed differs from asked by more than :data:`GAP_WARN`."""
    return r.global_percent is not None and r.removed_fraction is not None and \
        abs(r.removed_fraction - r.global_percent) > GAP_WARN


def _line(r: SweepRow, front: bool, measured: bool, gap: bool, best: bool, budget: float | None) -> str:
    pct = "-" if r.global_percent is None else f"{r.global_percent:.3f}"
    removed = ("-" if r.removed_fraction is None else f"{r.removed_fraction:.3f}") + ("!" if gap else "")
    lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
    fps = ("-" if r.fps is None else f"{r.fps:.1f}") + ("P" if front else " ")
    if r.evaluated:
        scores = f"{r.precision:>7.3f}{r.recall:>7.3f}{r.map50:>9.4f}"
        mark = ("yes" if r.within else "no") + ("  <- best" if best else "")
    else:
        fast = budget is not None and r.fps is not None and r.fps >= budget
        scores = f"{'-':>7}{'-':>7}{'-':>9}"
        mark = "-   not evaluated: mAP@0.5 fell before it" if fast else "-   below the budget: not evaluated"
    return (f"{r.method:<9}{pct:>7}{removed:>8}{r.shortcuts:>6}{scores}{r.params:>13,}"
            f"{r.weights_bytes / 1e6:>9.2f}{r.bflops:>9.3f}{r.activation_mb:>8.1f}{lat:>8}"
            + (f"{fps:>9}" if measured else "") + f"  {mark}")


def _verdict(result: SweepResult) -> list[str]:
    """The last lines: the best point by the sweep's objective, and where another objective differs."""
    unmet = result.unmet()
    if unmet is not None:
        return [unmet]
    if result.best is None:
        return [f"no pruned point keeps mAP@0.5 within {result.max_map_drop} of {result.baseline.map50:.4f}"]
    by = f"accuracy at {result.budget_note}" if result.objective == "accuracy" else result.objective
    lines = [f"best pruning point by {by}: {describe(result.best, result.baseline)}"]
    if result.objective == "accuracy":
        lines += _budget_notes(result)
    for objective, row in result.choices().items():
        if objective != result.objective and row is not None and row is not result.best:
            lines.append(f"(by {objective} it would be {describe(row, result.baseline)})")
    return lines


def _budget_notes(result: SweepResult) -> list[str]:
    """What the budget's choice leaves open: no pruning needed, a weaker point outside the range, the mAP it costs."""
    assert result.best is not None and result.min_fps is not None
    base, budget = result.baseline, result.min_fps
    if base.fps is not None and base.fps >= budget:
        return [f"(the unpruned model reaches the budget too, {base.fps:.1f} FPS at mAP@0.5 {base.map50:.4f}: the "
                "budget needs no pruning)"]
    notes = []
    low = result.settings.get("percents", [None])[0]
    weakest = next((r for r in result.rows if r.method == "channel" and r.global_percent == low), None)
    if weakest is not None and weakest.fps is not None and weakest.fps >= budget:
        notes.append(f"(the weakest point tried, {point_name(weakest)}, reaches the budget already: a weaker one may "
                     "too, with more mAP@0.5; start percents lower to see)")
    if not result.best.within:
        notes.append(f"(its mAP@0.5 is more than {result.max_map_drop} below the baseline's: the budget costs that "
                     "much before fine-tuning)")
    return notes


def point_name(row: SweepRow) -> str:
    """A point in words: ``global percent 0.700 + 2 residual units``, or ``the unpruned model``."""
    if row.method == "baseline":
        return "the unpruned model"
    return " + ".join(([f"global percent {row.global_percent:.3f}"] if row.global_percent is not None else [])
                      + ([f"{row.shortcuts} residual units"] if row.shortcuts else []))


def describe(row: SweepRow, baseline: SweepRow) -> str:
    """A point and what it costs against the baseline, in words."""
    what = point_name(row)
    fps = f", FPS {baseline.fps:.1f} -> {row.fps:.1f}" if row.fps is not None and baseline.fps is not None else ""
    return (f"{what}: mAP@0.5 {row.map50:.4f} (baseline {baseline.map50:.4f}), params {baseline.params:,} -> "
            f"{row.params:,}, BFLOPs {baseline.bflops:.3f} -> {row.bflops:.3f}{fps}")


def to_csv(result: SweepResult) -> str:
    """sweep.csv: every row's fields, its Pareto flag and whether it is the best."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*(f.name for f in fields(SweepRow)), "pareto", "best"])
    writer.writeheader()
    for r, front in zip(result.rows, pareto(result.rows), strict=True):
        writer.writerow({**asdict(r), "pareto": front, "best": r is result.best})
    return buf.getvalue()


def plot(result: SweepResult, path: Path) -> None:
    """mAP@0.5 and params against pruning strength, one panel per method, and mAP@0.5 against
    measured FPS with the Pareto front when FPS was measured (PNG)."""
    # a Figure of its own, not pyplot's: pyplot's figures are process-global state, and two stages plot at once
    # when the pipeline trains its reference in a thread beside the others
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if any(r.method == m for r in result.rows)]
    panels = max(len(methods), 1) + bool(result.fps_note)
    fig = Figure(figsize=(6 * panels, 4.2))
    axes = fig.subplots(1, panels, squeeze=False)
    floor = result.baseline.map50 - result.max_map_drop
    for ax, method in zip(axes[0], methods, strict=False):
        _plot_method(ax, result, method, floor)
    if result.fps_note:
        _plot_fps(axes[0][-1], result, floor)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_method(ax: Any, result: SweepResult, method: str, floor: float) -> None:
    """One method's panel: mAP@0.5 (and params, on the right axis) against its strength."""
    rows = [r for r in result.rows if r.method == method and r.evaluated]
    series = ([(f"{n} units", [r for r in rows if r.shortcuts == n]) for n in sorted({r.shortcuts for r in rows})]
              if method == "both" else [("", rows)])

    def strength(r: SweepRow) -> Any:
        return r.shortcuts if method == "layer" else r.global_percent

    twin = ax.twinx()
    for label, pts in series:
        pts = sorted(pts, key=strength)
        xs = [strength(r) for r in pts]
        ax.plot(xs, [r.map50 for r in pts], "o-", label=f"mAP@0.5 {label}".strip())
        twin.plot(xs, [r.params / 1e6 for r in pts], "s--", alpha=0.5, label=f"params {label}".strip())
    ax.axhline(floor, color="red", lw=0.8, ls=":", label=f"baseline - {result.max_map_drop}")
    if result.best is not None and result.best.method == method:
        ax.plot([strength(result.best)], [result.best.map50], "*", ms=16, color="gold", mec="black", label="best")
    ax.set_xlabel("residual units removed" if method == "layer" else "global percent")
    ax.set_ylabel("mAP@0.5")
    twin.set_ylabel("params (M)")
    ax.set_title(f"{method} pruning (no fine-tuning)")
    ax.legend(fontsize=7, loc="lower left")


def _plot_fps(ax: Any, result: SweepResult, floor: float) -> None:
    for method, marker in (("baseline", "D"), ("channel", "o"), ("layer", "s"), ("both", "^")):
        pts = [r for r in result.rows if r.method == method and r.fps is not None and r.evaluated]
        if pts:
            ax.scatter([r.fps for r in pts], [r.map50 for r in pts], marker=marker, alpha=0.7, label=method)
    if result.min_fps is not None:
        slow = [r.fps for r in result.rows if r.fps is not None and not r.evaluated]
        if slow:  # timed below the budget, never evaluated: their FPS along the bottom
            ax.plot(slow, [0.0] * len(slow), "|", ms=12, color="gray", label="timed, not evaluated")
        ax.axvline(result.min_fps, color="green", lw=0.8, ls="--", label=f"budget {result.min_fps:g} FPS")
    front = sorted((r for r, p in zip(result.rows, pareto(result.rows), strict=True) if p), key=lambda r: r.fps)
    ax.plot([r.fps for r in front], [r.map50 for r in front], "k--", lw=1, label="Pareto front")
    ax.axhline(floor, color="red", lw=0.8, ls=":", label=f"baseline - {result.max_map_drop}")
    for objective, row in result.choices().items():
        if row is not None and row.fps is not None:
            ax.plot([row.fps], [row.map50], "*" if objective == result.objective else "P", ms=16,
                    color="violet" if objective == "bflops" else "gold", mec="black", label=f"best by {objective}")
    ax.set_xlabel("measured FPS (OpenVINO)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title("mAP@0.5 against measured FPS", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


def save(result: SweepResult, out_dir: str | Path, best_model: PruneResult | None = None) -> dict[str, Path]:
    """Write sweep.json, sweep.csv, sweep.png (and best/ with the best pruned model) at once."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "sweep.json").write_text(json.dumps(result.as_dict(), indent=1) + "\n", encoding="utf-8")
        (tmp / "sweep.csv").write_text(to_csv(result), encoding="utf-8")
        plot(result, tmp / "sweep.png")
        if best_model is not None:
            best_model.save(tmp / "best")
    paths = {name: out_dir / f"sweep.{name}" for name in ("json", "csv", "png")}
    if best_model is not None:
        paths["best"] = out_dir / "best"
    return paths
