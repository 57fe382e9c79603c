"""``slimyolo pipeline run``'s work: the whole method, from a data set to served IRs.

base training → sparsity training → sweep → prune (at the sweep's best point, or at the point
the config names) → fine-tuning → conversion (the baseline and the fine-tuned model in FP32, the
fine-tuned model in INT8) → evaluation, then the table (:mod:`slimyolo.pipeline.report`), printed
and saved as ``results.json`` and ``results.md`` in the run folder ``<out>/<name>-<time>/`` (or
``<out>/<--name>/``, a run that continues when started again).

Every step is a stage (:mod:`slimyolo.stages`) run by a :class:`~slimyolo.pipeline.runners.StageRunner`
and exchanging artifacts through the store. The reference (the baseline trained on) depends only on
base training: where that pays (:func:`concurrent_reference`) it trains in a thread beside sparsity
training → the sweep → pruning → fine-tuning, with the same results as after them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.params import DataRef, FileRef, import_ref
from slimyolo.pipeline import report
from slimyolo.pipeline.config import PipelineConfig
from slimyolo.pipeline.report import ROWS, story
from slimyolo.pipeline.runners import LocalRunner, Progress, StageRunner
from slimyolo.progress import Event, sweep_row_method
from slimyolo.prune.options import KeepOptions
from slimyolo.stages.archive import pack
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import ConvertSpec, EvalSpec, PruneSpec, Spec, SweepSpec, TrainSpec
from slimyolo.store import Store, validate_key


def prepare_data(config: PipelineConfig, run_dir: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """(data set folder, its .data file): the synthetic set written into the run folder, annotated photos
    imported into it (``slimyolo data import``), or the given data set."""
    from slimyolo.data.dataset import read_data_file

    if "synth" in config.data:
        from slimyolo.data.synth import write_synthetic

        synth = {"classes": 2, "train": 300, "val": 100, "size": config.img_size, "seed": 0,
                 **(config.data["synth"] or {})}
        say(f"synthetic data set: {synth['classes']} classes, {synth['train']} training and {synth['val']} "
            f"validation images of {synth['size']} px (seed {synth['seed']})")
        shutil.rmtree(run_dir / "data", ignore_errors=True)  # a continued run writes the same set again
        data_file = write_synthetic(run_dir / "data", **synth)
        return data_file.parent, data_file
    if "import" in config.data:
        from slimyolo.data.importer import import_dataset

        ref = import_ref(config.data["import"], "data.import", local=True)
        shutil.rmtree(run_dir / "data", ignore_errors=True)  # a continued run imports the same bytes again
        result = import_dataset(ref.format, ref.source, run_dir / "data", ref.options(Path(), config.name))
        for line in result.summary():
            say(line.strip())
        for issue in result.issues:
            say(f"  {issue}")
        if not result.train or not result.valid:
            raise SlimYoloError(f"data.import: the pipeline trains and evaluates, so it needs training and validation "
                                f"images; the import gave {result.train} and {result.valid} (val_fraction)")
        return run_dir / "data", Path(result.data_file)
    spec = read_data_file(config.data["path"])
    folder = spec.path.parent
    try:  # the stages read it as a data set that arrived in an archive: every path inside, and relative
        read_data_file(spec.path, root=folder)
    except SlimYoloError as exc:
        raise SlimYoloError(f"data.path: {exc}; the data set travels as an archive of {folder}, so its lists must "
                            "name images inside it by relative paths") from None
    return folder, spec.path


def _model_cfg(config: PipelineConfig, classes: int, run_dir: Path) -> Path:
    from slimyolo.darknet.cfg import parse_cfg
    from slimyolo.darknet.zoo import ZOO, make_cfg

    if config.model in ZOO:
        cfg = make_cfg(config.model, classes, config.img_size)
        path = run_dir / f"{config.model}-{classes}c.cfg"
    else:
        cfg = parse_cfg(config.model)
        path = run_dir / Path(config.model).name
    cfg.write(path)
    return path


@dataclass
class PipelineResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    stages: dict[str, dict[str, Any]]  # each stage's artifacts, metrics and seconds
    seconds: float
    served: dict[str, Any] | None = None  # the remote inference service's answer
    story: list[str] = field(default_factory=list)  # one sentence per stage, then the headline ratios

    def table(self) -> str:
        """The final table as Markdown (also what is printed)."""
        return report.table(self.rows)

    def notes(self) -> list[str]:
        return report.notes(self.rows, self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run_dir.name, "rows": self.rows, "seconds": round(self.seconds, 1),
                "story": self.story, "stages": self.stages, "served": self.served, "notes": self.notes()}

    def save(self) -> None:
        from slimyolo.fsutil import atomic_write_text

        atomic_write_text(self.run_dir / "results.json", json.dumps(self.as_dict(), indent=1, default=str) + "\n")
        md = [f"# {self.run_dir.name}", "", *self.story, "", self.table(), "", *[f"- {n}" for n in self.notes()], "",
              f"Wall time: {self.seconds:.0f} s."]
        atomic_write_text(self.run_dir / "results.md", "\n".join(md) + "\n")


def run_pipeline(config: PipelineConfig, runner: StageRunner, store: Store, *, say: Callable[[str], None] = print,
                 progress: Progress | None = None, background_progress: Progress | None = None,
                 detect: Callable[[str, str, Path], dict] | None = None, name: str | None = None) -> PipelineResult:
    """Run every stage through ``runner`` (see the module docstring); ``say`` prints the headers.

    ``progress`` receives the stages' events; ``background_progress`` those of the reference when it
    trains beside the other stages (:func:`concurrent_reference`), from its thread, so that a console
    can tell its lines apart (default: none shown but its header and time). ``say`` is called from
    that thread too.

    ``detect(model name, version, image)``, when given, asks the served fine-tuned model for
    the objects in a validation image at the end (the remote run's inference service).
    ``name`` is the run's stable name (default: the config's name and the time): running the
    same config under the same name again continues the run, since every stage is keyed by its
    ``out`` under ``runs/<name>/`` (:mod:`slimyolo.stages.durable`): finished stages return
    their results at once and an interrupted training resumes from its last checkpoint.
    """
    from slimyolo.data.dataset import read_data_file

    started = time.monotonic()
    run = _Run.start(config, runner, store, say, progress, background_progress, name)
    data, data_file, cfg = _inputs(run)
    trained, swept = _models(run, data, cfg)
    irs = _conversions(run, data, trained)
    evals = _evaluations(run, data, trained)
    rows = _rows(evals, irs)
    result = PipelineResult(run.run_dir, rows, run.stages, time.monotonic() - started,
                            story=story(config, {k: v.metrics for k, v in trained.items()}, swept.metrics, rows))
    if detect is not None:
        image = read_data_file(data_file).valid[0]
        result.served = detect(config.name, str(irs["fine-tuned"].metrics["version"]), image)
    result.seconds = time.monotonic() - started
    result.save()
    return result


@dataclass
class _Run:
    """One pipeline run under way: where it writes, and each stage it ran so far (``stages.json``)."""

    config: PipelineConfig
    runner: StageRunner
    store: Store
    say: Callable[[str], None]
    events: Progress  # where every stage's progress events go
    background_events: Progress  # ... but those of the reference trained beside the other stages
    reference_beside: bool  # it is (concurrent_reference)
    prefix: str  # the store prefix of the run's stages: runs/<name>
    run_dir: Path
    steps: list[str]  # every step's title key, in order, for the [i/n] headers
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # each stage's spec, seconds, metrics, artifacts
    lock: threading.Lock = field(default_factory=threading.Lock)  # stages and stages.json, written from two threads

    @classmethod
    def start(cls, config: PipelineConfig, runner: StageRunner, store: Store, say: Callable[[str], None],
              progress: Progress | None, background_progress: Progress | None, name: str | None) -> _Run:
        """The run folder (created, or found: the run continues) with the resolved config in ``pipeline.yaml``."""
        run_id = name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        prefix = validate_key(f"runs/{run_id}", "--name")
        if "/" in run_id:
            raise SlimYoloError(f"--name: {run_id!r} must be one name, without '/'")
        run_dir = config.out / run_id
        continued = run_dir.is_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        say(f"run {run_id}" + (" (continued)" if continued else "") + f": after an interruption, continue it with "
            f"--resume {run_id}")
        (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(_plain_config(config), sort_keys=False))
        with_reference = config.reference is not None
        beside = concurrent_reference(config, runner)
        reference = ["reference"] if with_reference else []
        steps = ["data", "base", *(reference if beside else []), "sparse", "sweep", "prune", "finetune",
                 *([] if beside else reference), "convert baseline", "convert fine-tuned", "convert int8",
                 "eval baseline", *(["eval reference"] if with_reference else []), "eval sparse", "eval pruned",
                 "eval fine-tuned"]
        return cls(config, runner, store, say, progress or _nothing, background_progress or _nothing, beside, prefix,
                   run_dir, steps)

    def header(self, step: str, title: str) -> None:
        self.say(f"\n== [{self.steps.index(step) + 1}/{len(self.steps)}] {title} ==")

    def stage(self, step: str, title: str, spec: Spec) -> StageResult:
        """Run one stage and record it in ``stages.json``."""
        self.header(step, title)
        return self.run_stage(step, title, spec, self.events)

    def run_stage(self, step: str, title: str, spec: Spec, events: Progress) -> StageResult:
        """Run one stage whose header is printed, record it in ``stages.json`` and print its time (in the
        reference's thread too, hence the lock: the other thread may be recording its own stage)."""
        t0 = time.monotonic()
        result = self.runner.run(spec, events)
        seconds = time.monotonic() - t0
        with self.lock:
            self.stages[step] = {"spec": spec.to_dict(), "seconds": round(seconds, 1), "metrics": result.metrics,
                                 "artifacts": {k: dataclasses.asdict(v) for k, v in result.artifacts.items()}}
            (self.run_dir / "stages.json").write_text(json.dumps(self.stages, indent=1, default=str) + "\n")
        self.say(f"-- {title}: {seconds:.0f} s")
        return result

    def train_spec(self, step: str, data: DataRef, **refs: Any) -> TrainSpec:
        """A training stage's spec: the config's settings of ``step`` (``sparse``: its sparsity section)."""
        options = self.config.train_options({"sparse": "sparsity"}.get(step, step))
        return TrainSpec(data=data, out=f"{self.prefix}/{step}", options=options, **refs)

    def train(self, step: str, title: str, data: DataRef, **refs: Any) -> StageResult:
        """A training stage, run now."""
        return self.stage(step, title, self.train_spec(step, data, **refs))


def _nothing(event: Event) -> None:
    """The progress callback that shows nothing."""


def concurrent_reference(config: PipelineConfig, runner: StageRunner, cpus: int | None = None) -> bool:
    """Whether the reference trains in a thread beside sparsity training → fine-tuning (``reference.concurrent``).

    It depends on base training alone, so it can, and then costs no time of its own. ``true`` and
    ``false`` decide; ``auto`` does so where that pays and gives the sequential run's results: through
    a remote runner (the trainer service schedules its own jobs), or in this process when the trainings
    that overlap (sparsity, fine-tuning, the reference) all run on the same fixed number ``t`` of torch
    threads and 2·t ≤ the CPUs this process may use (``cpus``, default its affinity). Each then has
    cores of its own, where two trainings of torch's default threads would only contend, and torch's
    thread count, which is process-wide, is one value for both. Not while the sweep times speed on
    this machine (objective ``fps`` or ``accuracy``, ``latency_runs``): a training beside it would
    slow what it measures, and so change the point it picks.
    """
    from slimyolo.prune.options import SweepOptions

    if config.reference is None:
        return False
    if config.reference_concurrent != "auto":
        return bool(config.reference_concurrent)
    if not isinstance(runner, LocalRunner):
        return True
    sweep = {"objective": SweepOptions.objective, "measure_on": SweepOptions.measure_on,
             "latency_runs": SweepOptions.latency_runs, **config.sweep}
    if (sweep["objective"] != "bflops" and sweep["measure_on"] is None) or sweep["latency_runs"]:
        return False
    threads = {config.train_options(stage).get("threads") for stage in ("sparsity", "finetune", "reference")}
    fixed = threads.pop() if len(threads) == 1 else None  # None or 0: torch's default, every core
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    return bool(fixed) and 2 * fixed <= cpus


BACKGROUND_THREAD_PREFIX = "slimyolo-"  # a stage run beside the others runs in the thread slimyolo-<step>


def background_step(thread_name: str) -> str | None:
    """The step that a thread of the pipeline's background stage runs (named by :class:`_Background`), or None for
    any other thread: how a console tells that stage's log records apart."""
    return thread_name.removeprefix(BACKGROUND_THREAD_PREFIX) if thread_name.startswith(BACKGROUND_THREAD_PREFIX) \
        else None


class _Background:
    """A stage run in a thread of its own (the reference beside sparsity training → fine-tuning).

    Its header is printed at once, its events go to the run's ``background_events``, its time is
    printed when it ends. :meth:`stop` ends it at its next progress event (its callback raises
    :class:`~slimyolo.errors.Cancelled`, which stops any stage) and waits for it: the stages beside it
    failed, and their error must not leave it training. :meth:`result` waits for it and returns its
    result or raises its error, which names it.
    """

    def __init__(self, run: _Run, step: str, title: str, spec: Spec) -> None:
        run.header(step, f"{title}, in the background")
        self.step, self._events = step, run.background_events
        self._stopping = threading.Event()
        self._result: StageResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(run, title, spec),
                                        name=f"{BACKGROUND_THREAD_PREFIX}{step}", daemon=True)
        self._thread.start()

    def _work(self, run: _Run, title: str, spec: Spec) -> None:
        try:
            self._result = run.run_stage(self.step, title, spec, self._progress)
        except BaseException as exc:  # raised in the pipeline's thread, by result()
            self._error = exc

    def _progress(self, event: Event) -> None:
        if self._stopping.is_set():
            raise Cancelled(f"the {self.step} stage: stopped, as the stages beside it failed")
        self._events(event)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def result(self) -> StageResult:
        self._thread.join()
        exc = self._error
        if exc is None:
            assert self._result is not None
            return self._result
        if isinstance(exc, SlimYoloError) and exc.args and isinstance(exc.args[0], str):  # what the CLI prints
            exc.args = (f"the {self.step} stage (in the background): {exc.args[0]}", *exc.args[1:])
        else:
            exc.add_note(f"raised by the {self.step} stage, in the background")
        raise exc


def _inputs(run: _Run) -> tuple[DataRef, Path, FileRef]:
    """The data set (as an archive in the store), its local ``.data`` file, and the model's cfg, uploaded."""
    from slimyolo.data.dataset import read_data_file

    run.header("data", "data set")
    folder, data_file = prepare_data(run.config, run.run_dir, run.say)
    classes = read_data_file(data_file).classes
    archive = run.run_dir / "data.tar.gz"
    pack(folder, archive)
    data = DataRef(archive=run.store.put_file(archive), data_file=data_file.relative_to(folder).as_posix())
    archive.unlink()
    cfg: FileRef = run.store.put_file(_model_cfg(run.config, classes, run.run_dir))
    run.say(f"uploaded the data set and the cfg to {run.store.uri}")
    return data, data_file, cfg


def _models(run: _Run, data: DataRef, cfg: FileRef) -> tuple[dict[str, StageResult], StageResult]:
    """Base training, sparsity training, the sweep, pruning, fine-tuning (and the reference, after them or in a
    thread beside them, :func:`concurrent_reference`): the trained models by table row, and the sweep's result."""
    config, store = run.config, run.store
    pretrained = {k: store.put_file(Path(v)) for k, v in (("weights", config.weights),
                                                          ("weights_cfg", config.weights_cfg)) if v}
    base = run.train("base", "base training" + (f" (from {Path(config.weights).name})" if config.weights else ""),
                     data, cfg=cfg, **pretrained)
    reference = run.train_spec("reference", data, cfg=base.artifacts["cfg"], weights=base.artifacts["weights"]) \
        if config.reference is not None else None
    reference_title = (f"the reference: the baseline trained {config.epochs('reference')} more epochs (the budget "
                       "of sparsity training and fine-tuning)")
    beside = _Background(run, "reference", reference_title, reference) \
        if reference is not None and run.reference_beside else None
    try:
        sparse = run.train("sparse", "sparsity training", data, cfg=base.artifacts["cfg"],
                           weights=base.artifacts["weights"])
        model = {"cfg": sparse.artifacts["cfg"], "weights": sparse.artifacts["weights"]}
        sweep = SweepSpec.from_dict({**model, "data": data, "out": f"{run.prefix}/sweep", **config.sweep})
        swept = run.stage("sweep", "pruning sweep (no fine-tuning)", sweep)
        pruned = run.stage("prune", "pruning", PruneSpec.from_dict({**model, "out": f"{run.prefix}/prune",
                                                                    **prune_point(config, sweep, swept.metrics)}))
        teacher = {"teacher_cfg": model["cfg"], "teacher_weights": model["weights"]} if config.distill else {}
        distilled = " (distilled from the sparse model)" if config.distill else ""
        tuned = run.train("finetune", f"fine-tuning{distilled}", data, cfg=pruned.artifacts["cfg"],
                          weights=pruned.artifacts["weights"], **teacher)
    except BaseException:
        if beside is not None:
            beside.stop()
        raise
    trained = {"baseline": base, "sparse": sparse, "pruned": pruned, "fine-tuned": tuned}
    if beside is not None:  # joined here: the conversions time FPS, with nothing running beside them
        trained["reference"] = beside.result()
    elif reference is not None:
        trained["reference"] = run.stage("reference", reference_title, reference)
    return trained, swept


def _conversions(run: _Run, data: DataRef, trained: Mapping[str, StageResult]) -> dict[str, StageResult]:
    """The OpenVINO IRs: the baseline and the fine-tuned model in FP32, the fine-tuned model in INT8 (evaluated)."""
    name = run.config.name

    def convert(step: str, title: str, result: StageResult, model: str, precision: str,
                evaluate: bool = False) -> StageResult:
        doc = {"cfg": result.artifacts["cfg"], "weights": result.artifacts["weights"], "name": model,
               "calib_data": data, **run.config.convert_options(precision), "evaluate": evaluate}
        return run.stage(step, title, ConvertSpec.from_dict(doc))

    return {"baseline": convert("convert baseline", "OpenVINO IR of the baseline (FP32)", trained["baseline"],
                                f"{name}-baseline", "fp32"),
            "fine-tuned": convert("convert fine-tuned", "OpenVINO IR of the fine-tuned model (FP32)",
                                  trained["fine-tuned"], name, "fp32"),
            "int8": convert("convert int8", "OpenVINO IR of the fine-tuned model (INT8)", trained["fine-tuned"],
                            f"{name}-int8", "int8", evaluate=True)}


def _evaluations(run: _Run, data: DataRef, trained: Mapping[str, StageResult]) -> dict[str, StageResult]:
    """Every trained model evaluated on the validation split, in the table's order."""
    return {name: run.stage(f"eval {name}", f"evaluation of the {name} model", EvalSpec.from_dict(
                {"cfg": trained[name].artifacts["cfg"], "weights": trained[name].artifacts["weights"], "data": data,
                 **run.config.eval}))
            for name in ROWS if name in trained}


def _rows(evals: Mapping[str, StageResult], irs: Mapping[str, StageResult]) -> list[dict[str, Any]]:
    """The table: one row per evaluated model (its FPS from the IR of the same network), then the INT8 IR."""
    def row(name: str, metrics: Mapping[str, Any], stats: Mapping[str, Any], size: int, ir: str) -> dict[str, Any]:
        bench = irs[ir].metrics.get("bench") or {}
        return {"model": name, "precision": metrics["precision"], "recall": metrics["recall"],
                "map50": metrics["map50"], "params": stats["params"], "size_bytes": size, "bflops": stats["bflops"],
                "infer_fps": bench.get("infer_fps", 0.0), "fps": bench.get("fps", 0.0), "fps_from": ir,
                "infer_precision": bench.get("execution_precision", "")}

    ir_of = {"baseline": "baseline", "reference": "baseline", "sparse": "baseline", "pruned": "fine-tuned",
             "fine-tuned": "fine-tuned"}
    rows = [row(r, evals[r].metrics, evals[r].metrics["model"], evals[r].metrics["model"]["weights_bytes"], ir_of[r])
            for r in ROWS if r in evals]
    int8 = irs["int8"].metrics
    rows.append(row("int8", int8["eval"], evals["fine-tuned"].metrics["model"], int8["bin_bytes"], "int8"))
    return rows


def prune_point(config: PipelineConfig, sweep: SweepSpec, found: Mapping[str, Any]) -> dict[str, Any]:
    """The prune settings: the config's ``prune`` section if it has one, else the sweep's best point
    pruned with what the sweep kept of every layer (its :class:`~slimyolo.prune.options.KeepOptions`)."""
    if config.prune:
        return dict(config.prune)
    best = found.get("best")
    if best is None:
        raise SlimYoloError(f"the sweep found no pruning point within max_map_drop {sweep.max_map_drop} of the "
                            f"baseline mAP@0.5 {found['baseline']['map50']:.4f}: raise sweep.max_map_drop, or set "
                            "prune.global_percent in the config")
    point = {"method": sweep_row_method(best), **KeepOptions.taken_from(sweep).to_dict()}
    if best["global_percent"] is not None:
        point["global_percent"] = best["global_percent"]
    if best["shortcuts"]:
        point["shortcuts"] = best["shortcuts"]
    return point


def _plain_config(config: PipelineConfig) -> dict[str, Any]:
    doc = dataclasses.asdict(config)
    doc["out"] = str(config.out)
    doc["finetune"] = {**doc["finetune"], "distill": doc.pop("distill")}
    concurrent = doc.pop("reference_concurrent")
    if doc["reference"] is not None:
        doc["reference"] = {**doc["reference"], "concurrent": concurrent}
    return doc
