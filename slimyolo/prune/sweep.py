"""The best-pruning-point sweep: prune at many strengths, evaluate each without fine-tuning.

The original projects print this table by hand, one command per point. Here the search is
automatic: for each axis a coarse grid is evaluated from the weakest point up until mAP@0.5
falls below ``baseline - max_map_drop`` (the collapse), then the gap between the last good
and the first bad point is filled at the fine step. With a shortcuts range the sweep runs
three methods — channels alone, residual units alone, then for each coarse unit count the
channel search again (up to the percent that passed alone). The best point is, among the
evaluated points whose mAP stays within the allowed drop, the one the ``objective`` prefers:

- ``bflops`` (the default): the fewest BFLOPs (then params), the original projects' rule, which
  needs no measurement and gives the same choice on every machine;
- ``fps``: the most frames per second measured with OpenVINO on this CPU
  (:class:`~slimyolo.prune.speed.FpsMeter`): every row is converted and timed, and the table
  and plot show mAP@0.5 against FPS with the Pareto front marked. Past a point BFLOPs stop
  buying speed (thin layers wait on memory), so the fastest point within the drop is often
  not the one with the fewest BFLOPs, and it keeps more mAP.

For these two the search itself does not depend on the objective, so a sweep that measured FPS
records the choice of both (``choices`` in ``sweep.json``). The third answers the question users
ask of a deployment, "the most accurate model that keeps up with my cameras":

- ``accuracy``: among the points whose measured FPS reaches the budget (``min_fps``, or
  ``streams`` x ``stream_fps``, frames of a KxK ``mosaic`` counted as such), the highest mAP@0.5,
  ties to the fewer BFLOPs (then params); the allowed drop does not constrain it (``within`` is
  still reported). Its search spends its evaluations where the budget is (:func:`budget_axis`):
  each axis is timed first, coarse, then the gap below its first fast point bisected at the fine
  step, and only points that reach the budget are evaluated; a point timed but not evaluated is
  a row without mAP (``SweepRow.evaluated``), and the evaluations saved so are said (a
  :class:`~slimyolo.progress.StageStep` before the choice, ``budget`` in ``sweep.json``). When no
  point reaches the budget there is no best point, and :meth:`SweepResult.unmet` says which is
  fastest: the command and the stage fail with it.
  ``choices`` holds the accuracy choice alone, since the other objectives' searches did not run.

FPS is measured on this machine, or with ``measure_on`` on an inference service's CPU
(:class:`~slimyolo.prune.speed.RemoteFpsMeter`, :func:`fps_meter`); every row records where
(``measured_on``). The settings arrive whole as a :class:`~slimyolo.prune.options.SweepOptions`;
the table, ``sweep.csv`` and the plot are drawn by :mod:`slimyolo.prune.sweep_report`.

Evaluation is a parameter (any ``Darknet -> object with precision, recall, map50``, or
``Darknet -> (P, R, map50)``), so the search is testable and the service can plug in its own;
the CLI and the stage use :func:`slimyolo.train.evaluate.evaluate` on the validation list
(:func:`slimyolo.train.evaluate.evaluator`). Each row goes to ``progress`` as a
:class:`~slimyolo.progress.SweepPoint`, the choice at the end as a :class:`~slimyolo.progress.SweepBest`;
raising :class:`~slimyolo.errors.Cancelled` there stops the sweep before anything is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from slimyolo.darknet.flops import ModelStats, model_stats
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.progress import Progress, StageStep, SweepBest, SweepPoint, SweepRow
from slimyolo.prune.algorithms import choose_units, model_sparsity, prune, prune_layers
from slimyolo.prune.options import KeepOptions, PruneOptions, SweepOptions
from slimyolo.prune.report import SparsityReport
from slimyolo.prune.result import PruneResult
from slimyolo.prune.sweep_report import pareto, plot, point_name, save, table, to_csv

if TYPE_CHECKING:
    from slimyolo.prune.speed import FpsMeter, RemoteFpsMeter
    from slimyolo.store import Store


class Metrics(Protocol):
    precision: float
    recall: float
    map50: float


EvalFn = Callable[[Darknet], "Metrics | tuple[float, float, float]"]
FpsFn = Callable[[Darknet], float]
Point = tuple[str, float | None, int]  # (method, asked fraction, residual units)
BASELINE: Point = ("baseline", None, 0)


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


def fps_meter(options: SweepOptions, store: Store | None = None) -> FpsMeter | RemoteFpsMeter | None:
    """The FPS measurement the ``fps`` and ``accuracy`` objectives need (None for ``bflops``): on this machine, or,
    with ``measure_on``, server-side on that inference service, which reads the points from ``store`` (default:
    this process's, :func:`slimyolo.store.open_store`); each point timed as the ``mosaic`` if one is set."""
    if options.objective == "bflops":
        return None
    from slimyolo.prune.speed import FpsMeter, RemoteFpsMeter

    timing = {"precision": options.precision, "seconds": options.fps_seconds, "repeats": options.fps_repeats,
              "mosaic": options.mosaic_k}
    if options.measure_on is not None:
        return RemoteFpsMeter(options.measure_on, store=store, **timing)
    return FpsMeter(**timing)


def _key(objective: str) -> Callable[[SweepRow], tuple]:
    """Sort key of eligible rows, best first: fewest BFLOPs (then params), most FPS (then fewest BFLOPs), or
    (accuracy) highest mAP@0.5 (then fewest BFLOPs, params)."""
    if objective == "fps":
        return lambda r: (-(r.fps or 0.0), r.bflops, r.params, -r.map50)
    if objective == "accuracy":
        return lambda r: (-r.map50, r.bflops, r.params)
    return lambda r: (r.bflops, r.params, -r.map50)


def eligible(row: SweepRow, objective: str, budget: float | None = None) -> bool:
    """Whether ``row`` may be the objective's best: an evaluated pruned point within the drop, or (accuracy) one
    whose measured FPS reaches ``budget``."""
    if row.method == "baseline" or not row.evaluated:
        return False
    if objective == "accuracy":
        return budget is not None and row.fps is not None and row.fps >= budget
    return row.within


def choose(rows: list[SweepRow], objective: str, budget: float | None = None) -> SweepRow | None:
    """The objective's best pruned row (None if no row is eligible)."""
    ok = [r for r in rows if eligible(r, objective, budget)]
    return min(ok, key=_key(objective)) if ok else None


@dataclass
class SweepResult:
    baseline: SweepRow
    rows: list[SweepRow]  # one per point visited (timed or evaluated), baseline first, in the order of the first visit
    best: SweepRow | None  # None when no pruned point is eligible: none within the drop, or none reaching the budget
    max_map_drop: float
    settings: dict[str, Any] = field(default_factory=dict)
    latency_note: str = ""
    objective: str = "bflops"
    fps_note: str = ""  # how FPS was measured and on which CPU ("" when it was not)
    cpu: dict[str, Any] | None = None
    sparsity: SparsityReport | None = None
    min_fps: float | None = None  # the accuracy objective's budget, in frames per second
    budget_note: str = ""  # the budget in words: "100 FPS (4 streams x 25 FPS)"
    measured_on: str | None = None  # where FPS was measured (the meter's measured_on)

    def choices(self) -> dict[str, SweepRow | None]:
        """The best row by each objective the rows can judge: bflops, fps when FPS was measured; accuracy alone
        for a budget sweep (its search evaluates only the points that reach the budget: the others' did not run)."""
        if self.objective == "accuracy":
            objectives: tuple[str, ...] = ("accuracy",)
        else:
            objectives = ("bflops", "fps") if self.fps_note else ("bflops",)
        return {o: choose(self.rows, o, self.min_fps) for o in objectives}

    def evaluations_saved(self) -> int:
        """The points timed but not evaluated (0 for the other objectives): slower than the budget, or stronger than
        a point whose mAP@0.5 already fell."""
        return sum(not r.evaluated for r in self.rows)

    def unmet(self) -> str | None:
        """The one sentence that says no point reaches the budget, naming the fastest and its FPS; None when one
        does, or without a budget."""
        if self.objective != "accuracy" or self.best is not None:
            return None
        timed = [r for r in self.rows if r.fps is not None]
        if not timed:
            return f"no point of the sweep reaches {self.budget_note}: none was timed"
        fastest = max(timed, key=lambda r: r.fps)
        return (f"no point of the sweep reaches {self.budget_note}: the fastest, {point_name(fastest)}, runs "
                f"{fastest.fps:.1f} FPS; lower the budget, prune harder (percents, shortcuts) or measure on a "
                "faster CPU")

    def as_dict(self) -> dict:
        """sweep.json: ``best``, ``baseline`` and ``choices`` are copies of their rows (with ``pareto``)."""
        rows = [{**asdict(r), "pareto": p} for r, p in zip(self.rows, pareto(self.rows), strict=True)]
        by_id = {id(r): d for r, d in zip(self.rows, rows, strict=True)}

        def of(row: SweepRow | None) -> dict | None:
            return None if row is None else by_id[id(row)]

        budget = None if self.min_fps is None else {
            "min_fps": self.min_fps, "text": self.budget_note,
            "points_timed": sum(r.fps is not None for r in self.rows),
            "points_evaluated": sum(r.evaluated for r in self.rows), "evaluations_saved": self.evaluations_saved()}
        return {"settings": self.settings, "max_map_drop": self.max_map_drop, "objective": self.objective,
                "budget": budget, "latency": self.latency_note, "fps_measurement": self.fps_note,
                "measured_on": self.measured_on, "cpu": self.cpu,
                "sparsity": self.sparsity.as_dict() if self.sparsity else None, "baseline": of(self.baseline),
                "best": of(self.best), "choices": {o: of(r) for o, r in self.choices().items()}, "rows": rows}

    def table(self) -> str:
        """The printed table (:func:`slimyolo.prune.sweep_report.table`)."""
        return table(self)

    def csv(self) -> str:
        """sweep.csv (:func:`slimyolo.prune.sweep_report.to_csv`)."""
        return to_csv(self)

    def plot(self, path: Path) -> None:
        """sweep.png (:func:`slimyolo.prune.sweep_report.plot`)."""
        plot(self, path)

    def save(self, out_dir: str | Path, best_model: PruneResult | None = None) -> dict[str, Path]:
        """Write sweep.json, sweep.csv, sweep.png (and best/ with the best pruned model) at once."""
        return save(self, out_dir, best_model)


def measure_latency(model: Darknet, runs: int = 3) -> float:
    """Fastest of ``runs`` timed batch-1 forward passes (ms) in PyTorch on this CPU, after a warm-up.

    The minimum, not the median: on a shared machine other work only ever adds time, so the
    fastest run is the best estimate of what the model itself costs.
    """
    h, w = model.input_size
    # its own generator: torch's global one may be seeding a model's weights in another thread
    x = torch.rand(1, model.graph.input_shape[0], h, w, generator=torch.Generator().manual_seed(0))
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


def unit_grid(lo: int, hi: int, step: int) -> list[int]:
    """The coarse residual-unit counts: ``lo`` to ``hi`` by ``step`` (``hi`` always included), no zero."""
    grid = [n for n in range(lo, hi + 1, step) if n > 0]
    if grid and grid[-1] != hi:
        grid.append(hi)
    return grid


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


def budget_axis(coarse: list, fine_step: float | int, fast_at: Callable[[Any], bool],
                map_at: Callable[[Any], float]) -> Any:
    """The weakest value of one axis whose point reaches the speed budget (None if none does), with the
    evaluations spent only on points that reach it.

    Speed grows with pruning strength and mAP@0.5 falls with it (the assumption of :func:`search_axis`
    too), so the most accurate point that reaches the budget is the weakest that does, or a stronger one
    as accurate, which the fewer BFLOPs win. The ``coarse`` values are timed (``fast_at``: reaches the
    budget) in increasing strength up to the first that reaches it, then the gap below that one is
    bisected at ``fine_step`` (timing is what costs here: a conversion, and on a service an upload, per
    point). From there the values timed fast enough are evaluated (``map_at``): the weakest, then the
    stronger ones (those the bisection timed, then the coarse ones) while mAP@0.5 does not fall. A value
    slower than the budget is never evaluated.
    """
    slow, first = None, None
    for i, v in enumerate(coarse):
        if fast_at(v):
            first = i
            break
        slow = v
    if first is None:
        return None
    fast = [coarse[first]]  # the values timed fast enough, weakest first
    if slow is not None:
        between = fine_values(slow, coarse[first], fine_step)
        lo, hi = -1, len(between)  # between[lo] (or slow) is too slow, between[hi] (or coarse[first]) fast enough
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fast_at(between[mid]):
                hi = mid
                fast.insert(0, between[mid])
            else:
                lo = mid
    start = fast[0]
    best = -math.inf
    for v in [*fast, *coarse[first + 1:]]:
        if not fast_at(v):
            continue  # slower than a weaker point after all (measurement noise): not a candidate
        found = map_at(v)
        if found < best - 1e-12:
            break
        best = max(best, found)
    return start


def fine_values(low: Any, high: Any, step: float | int) -> list:
    """The values strictly between ``low`` and ``high`` at ``step`` (percents rounded as the grids are)."""
    if isinstance(step, int):
        return list(range(low + step, high, step))
    values, v = [], low + step
    while v < high - 1e-9:
        values.append(round(v, 6))
        v += step
    return values


def point_key(row: SweepRow) -> tuple:
    """What identifies a row of the search: (method, asked fraction, residual units, evaluated).

    A point the budget search timed and later evaluated has two rows in the progress events (and in a
    sweep checkpoint): timed, then evaluated; the result keeps the second.
    """
    return row.method, row.global_percent, row.shortcuts, row.evaluated


class _Search:
    """One sweep's state: the rows so far (one per point) and the best pruned model of the objective.

    Only the best pruned model is kept in memory (a sweep of yolov4 evaluates dozens), and the last one
    pruned, so that a point timed and then evaluated is pruned once.
    """

    def __init__(self, model: Darknet, evaluate: EvalFn, options: SweepOptions, progress: Progress | None,
                 measure_fps: FpsFn | None, known: Mapping[tuple, SweepRow]) -> None:
        self.model, self.evaluate, self.options = model, evaluate, options
        self.progress, self.measure_fps, self.known = progress, measure_fps, known
        self.keep = KeepOptions.taken_from(options)
        self.budget = options.budget()
        self.better = _key(options.objective)
        self.rows: list[SweepRow] = []
        self.index: dict[Point, int] = {}  # a point's row in rows
        self.best: tuple[SweepRow, PruneResult] | None = None
        self.floor = -math.inf  # the baseline's mAP@0.5 less the allowed drop, once the baseline is evaluated
        self.last: tuple[Point, PruneResult] | None = None

    def pruned(self, point: Point) -> PruneResult:
        """The model pruned at ``point`` (``percent`` None: units alone)."""
        if self.last is None or self.last[0] != point:
            _, percent, units = point
            if percent is None:
                result = prune_layers(self.model, units)
            else:
                result = prune(self.model, PruneOptions(method="both" if units else "channel", global_percent=percent,
                                                        shortcuts=units, **self.keep.to_dict()))
            self.last = (point, result)
        return self.last[1]

    def _facts(self, point: Point) -> tuple[Darknet, ModelStats, float | None]:
        """The point's model, its statistics and the fraction of the prunable channels it removed."""
        if point == BASELINE:
            return self.model, model_stats(self.model.cfg), None
        result = self.pruned(point)
        report = result.channel_report
        return result.model, result.after, None if report is None else round(report.removed_fraction, 6)

    def _speed(self, model: Darknet) -> tuple[float | None, float | None, str | None]:
        """(PyTorch latency ms, FPS, where the FPS was measured) of ``model``, each None when not measured."""
        runs = self.options.latency_runs
        latency = measure_latency(model, runs) if runs > 0 else None
        if self.measure_fps is None:
            return latency, None, None
        fps = float(self.measure_fps(model))
        return latency, fps, getattr(self.measure_fps, "measured_on", None)

    def row(self, point: Point) -> SweepRow | None:
        i = self.index.get(point)
        return None if i is None else self.rows[i]

    def _put(self, row: SweepRow) -> None:
        """Record ``row`` as its point's (an evaluated row replaces the timed one) and report it."""
        point = (row.method, row.global_percent, row.shortcuts)
        if point in self.index:
            self.rows[self.index[point]] = row
        else:
            self.index[point] = len(self.rows)
            self.rows.append(row)
        if self.progress is not None:
            self.progress(SweepPoint(row))

    def timed(self, point: Point) -> SweepRow:
        """The point's row with its FPS, not evaluated unless it was: its row so far, an interrupted sweep's
        (``known``), or timed now."""
        row = self.row(point)
        if row is None:
            row = self.known.get((*point, False))
            if row is None:
                model, stats, removed = self._facts(point)
                latency, fps, where = self._speed(model)
                row = SweepRow(*point, None, None, None, stats.params, stats.weights_bytes, float(stats.bflops),
                               latency, False, removed, stats.activation_mb, fps, where)
            self._put(row)
        return row

    def scored(self, point: Point) -> SweepRow:
        """The point's row evaluated: its row so far if evaluated, an interrupted sweep's (``known``), or evaluated
        now (and timed, unless it was); kept as the best pruned model when the objective prefers it."""
        row = self.row(point)
        if row is None or not row.evaluated:
            done = self.known.get((*point, True))
            if done is None:
                model, stats, removed = self._facts(point)
                precision, recall, map50 = as_metrics(self.evaluate(model))
                latency, fps, where = self._speed(model) if row is None else (row.latency_ms, row.fps,
                                                                                 row.measured_on)
                within = point == BASELINE or map50 >= self.floor - 1e-12
                done = SweepRow(*point, precision, recall, map50, stats.params, stats.weights_bytes,
                                float(stats.bflops), latency, within, removed, stats.activation_mb, fps, where)
            row = done
            self._put(row)
        if eligible(row, self.options.objective, self.budget) and \
                (self.best is None or self.better(row) < self.better(self.best[0])):
            self.best = (row, self.pruned(point))
        return row

    def run(self) -> SweepRow:
        """The baseline; channels alone; with a shortcuts range, units alone, then both: searched to the collapse
        of mAP@0.5, or (a budget) to the weakest points that reach it. Returns the baseline's row."""
        baseline = self.scored(BASELINE)
        assert baseline.map50 is not None
        self.floor = baseline.map50 - self.options.max_map_drop
        if self.budget is None:
            self._axes()
        else:
            self._budget_axes()
        return baseline

    def _axes(self) -> None:
        p_lo, p_hi, p_step = self.options.percents
        fine = self.options.fine_percent
        best_p = search_axis(percent_grid(p_lo, p_hi, p_step), fine, lambda p: self.scored(("channel", p, 0)))
        if self.options.shortcuts is None:
            return
        s_grid = unit_grid(*self.options.shortcuts)
        best_n = search_axis(s_grid, 1, lambda n: self.scored(("layer", None, n)))
        if best_p is None or best_n is None:
            return
        cap = best_p
        for n in sorted({*[v for v in s_grid if v <= best_n], best_n}):
            found = search_axis(percent_grid(p_lo, cap, p_step), fine, lambda p, n=n: self.scored(("both", p, n)))
            if found is None:
                break
            cap = found

    def _budget_axes(self) -> None:
        """Channels alone; units alone; then, for each unit count too slow alone, channels on top of it, up to the
        percent that reached the budget alone (a stronger one only costs mAP)."""
        p_lo, p_hi, p_step = self.options.percents
        fine = self.options.fine_percent
        p_fast = self._budget_axis(percent_grid(p_lo, p_hi, p_step), fine, lambda p: ("channel", p, 0))
        if self.options.shortcuts is None:
            return
        s_grid = unit_grid(*self.options.shortcuts)
        n_fast = self._budget_axis(s_grid, 1, lambda n: ("layer", None, n))
        cap = p_hi if p_fast is None else p_fast
        for n in s_grid:
            if n_fast is not None and n >= n_fast:
                break  # these units alone reach the budget: channels pruned on top only cost mAP
            self._budget_axis(percent_grid(p_lo, cap, p_step), fine, lambda p, n=n: ("both", p, n))

    def _budget_axis(self, coarse: list, fine_step: float | int, point_at: Callable[[Any], Point]) -> Any:
        assert self.budget is not None
        budget = self.budget

        def fast_at(v: Any) -> bool:
            fps = self.timed(point_at(v)).fps
            return fps is not None and fps >= budget

        return budget_axis(coarse, fine_step, fast_at, lambda v: self.scored(point_at(v)).map50)


def check_sweep(model: Darknet, options: SweepOptions, measure_fps: FpsFn | None) -> SweepOptions:
    """``options`` checked against their declarations and ``model``, before anything is evaluated."""
    options = options.checked()
    if options.objective != "bflops" and measure_fps is None:
        raise SlimYoloError(f"the {options.objective} objective needs an FPS measurement (measure_fps)")
    if options.shortcuts is not None:
        choose_units(model, options.shortcuts[1])  # more units than the model has is an error now, not after an hour
    return options


def sweep(model: Darknet, evaluate: EvalFn, options: SweepOptions | None = None, *,
          progress: Progress | None = None, measure_fps: FpsFn | None = None,
          known: Mapping[tuple, SweepRow] | None = None) -> tuple[SweepResult, PruneResult | None]:
    """Search the best pruning point of ``model`` as ``options`` say (None: the defaults; see the module docstring).

    ``measure_fps`` (a :class:`~slimyolo.prune.speed.FpsMeter` or
    :class:`~slimyolo.prune.speed.RemoteFpsMeter` such as :func:`fps_meter` builds, or any
    ``Darknet -> FPS``) is required by the ``fps`` and ``accuracy`` objectives and fills the rows' ``fps``
    (and ``measured_on``, from the meter's). ``known`` holds rows an interrupted sweep of the same model
    and settings reported (by :func:`point_key`): they are taken as they are, without timing or evaluating
    again (the search visits the same points in the same order). Returns the result and the pruned model
    at the best point (None if no point is eligible: none within the drop, or none reaching the budget,
    which :meth:`SweepResult.unmet` then says).
    """
    options = check_sweep(model, options or SweepOptions(), measure_fps)
    sparsity = model_sparsity(model)
    search = _Search(model, evaluate, options, progress, measure_fps, known or {})
    baseline = search.run()
    best, best_model = search.best if search.best is not None else (None, None)
    settings = {"percents": list(options.percents), "fine_percent": options.fine_percent,
                "shortcuts": list(options.shortcuts) if options.shortcuts else None,
                **KeepOptions.taken_from(options).to_dict()}
    meter_note = getattr(measure_fps, "note", None)
    fps_note = (meter_note() if meter_note else "measured by the caller") if measure_fps is not None else ""
    budget = options.budget()
    result = SweepResult(baseline, search.rows, best, options.max_map_drop, settings,
                         _latency_note(model, options.latency_runs), options.objective, fps_note,
                         getattr(measure_fps, "cpu", None), sparsity, budget,
                         options.budget_text() if budget is not None else "",
                         getattr(measure_fps, "measured_on", None))
    if progress is not None:
        if budget is not None:
            saved = result.evaluations_saved()
            progress(StageStep("sweep", f"the budget saved {saved} evaluation{'s' * (saved != 1)}",
                               {"min_fps": float(budget), "timed": sum(r.fps is not None for r in result.rows),
                                "evaluated": sum(r.evaluated for r in result.rows), "saved": saved}))
        progress(SweepBest(best))
    return result, best_model


def _latency_note(model: Darknet, runs: int) -> str:
    if runs <= 0:
        return "not measured"
    return (f"PyTorch CPU, batch 1 at {model.input_size[1]}x{model.input_size[0]}, {torch.get_num_threads()} "
            f"threads, fastest of {runs} runs (a quick relative figure, not the OpenVINO latency)")
