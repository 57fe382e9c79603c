"""``slimyolo pipeline run``'s work: the whole method, from a data set to served IRs.

base training → sparsity training → sweep → prune (at the sweep's best point, or at the point
the config names) → fine-tuning → conversion (the baseline and the fine-tuned model in FP32, the
fine-tuned model in INT8) → evaluation, then the table (:mod:`slimyolo.pipeline.report`), printed
and saved as ``results.json`` and ``results.md`` in the run folder ``<out>/<name>-<time>/`` (or
``<out>/<--name>/``, a run that continues when started again).

Every step is a stage (:mod:`slimyolo.stages`) run by a :class:`~slimyolo.pipeline.runners.StageRunner`
and exchanging artifacts through the store.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimyolo.errors import SlimYoloError
from slimyolo.params import DataRef, FileRef, import_ref
from slimyolo.pipeline import report
from slimyolo.pipeline.config import PipelineConfig
from slimyolo.pipeline.report import ROWS, story
from slimyolo.pipeline.runners import Progress, StageRunner
from slimyolo.progress import sweep_row_method
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
                 progress: Progress | None = None, detect: Callable[[str, str, Path], dict] | None = None,
                 name: str | None = None) -> PipelineResult:
    """Run every stage through ``runner`` (see the module docstring); ``say`` prints the headers.

    ``detect(model name, version, image)``, when given, asks the served fine-tuned model for
    the objects in a validation image at the end (the remote run's inference service).
    ``name`` is the run's stable name (default: the config's name and the time): running the
    same config under the same name again continues the run, since every stage is keyed by its
    ``out`` under ``runs/<name>/`` (:mod:`slimyolo.stages.durable`): finished stages return
    their results at once and an interrupted training resumes from its last checkpoint.
    """
    from slimyolo.data.dataset import read_data_file

    started = time.monotonic()
    run = _Run.start(config, runner, store, say, progress, name)
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
    prefix: str  # the store prefix of the run's stages: runs/<name>
    run_dir: Path
    steps: list[str]  # every step's title key, in order, for the [i/n] headers
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # each stage's spec, seconds, metrics, artifacts

    @classmethod
    def start(cls, config: PipelineConfig, runner: StageRunner, store: Store, say: Callable[[str], None],
              progress: Progress | None, name: str | None) -> _Run:
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
        steps = ["data", "base", "sparse", "sweep", "prune", "finetune", *(["reference"] if with_reference else []),
                 "convert baseline", "convert fine-tuned", "convert int8", "eval baseline",
                 *(["eval reference"] if with_reference else []), "eval sparse", "eval pruned", "eval fine-tuned"]
        return cls(config, runner, store, say, progress or (lambda event: None), prefix, run_dir, steps)

    def header(self, step: str, title: str) -> None:
        self.say(f"\n== [{self.steps.index(step) + 1}/{len(self.steps)}] {title} ==")

    def stage(self, step: str, title: str, spec: Spec) -> StageResult:
        """Run one stage and record it in ``stages.json``."""
        self.header(step, title)
        t0 = time.monotonic()
        result = self.runner.run(spec, self.events)
        seconds = time.monotonic() - t0
        self.stages[step] = {"spec": spec.to_dict(), "seconds": round(seconds, 1), "metrics": result.metrics,
                             "artifacts": {k: dataclasses.asdict(v) for k, v in result.artifacts.items()}}
        (self.run_dir / "stages.json").write_text(json.dumps(self.stages, indent=1, default=str) + "\n")
        self.say(f"-- {title}: {seconds:.0f} s")
        return result

    def train(self, step: str, title: str, data: DataRef, **refs: Any) -> StageResult:
        """A training stage: the config's settings of ``step`` (``sparse``: its sparsity section)."""
        options = self.config.train_options({"sparse": "sparsity"}.get(step, step))
        return self.stage(step, title, TrainSpec(data=data, out=f"{self.prefix}/{step}", options=options, **refs))


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
    """Base training, sparsity training, the sweep, pruning, fine-tuning (and the reference): the trained
    models by table row, and the sweep's result."""
    config, store = run.config, run.store
    pretrained = {k: store.put_file(Path(v)) for k, v in (("weights", config.weights),
                                                          ("weights_cfg", config.weights_cfg)) if v}
    base = run.train("base", "base training" + (f" (from {Path(config.weights).name})" if config.weights else ""),
                     data, cfg=cfg, **pretrained)
    sparse = run.train("sparse", "sparsity training", data, cfg=base.artifacts["cfg"],
                       weights=base.artifacts["weights"])
    model = {"cfg": sparse.artifacts["cfg"], "weights": sparse.artifacts["weights"]}
    sweep = SweepSpec.from_dict({**model, "data": data, "out": f"{run.prefix}/sweep", **config.sweep})
    swept = run.stage("sweep", "pruning sweep (no fine-tuning)", sweep)
    pruned = run.stage("prune", "pruning", PruneSpec.from_dict({**model, "out": f"{run.prefix}/prune",
                                                                **prune_point(config, sweep, swept.metrics)}))
    teacher = {"teacher_cfg": model["cfg"], "teacher_weights": model["weights"]} if config.distill else {}
    tuned = run.train("finetune", "fine-tuning" + (" (distilled from the sparse model)" if config.distill else ""),
                      data, cfg=pruned.artifacts["cfg"], weights=pruned.artifacts["weights"], **teacher)
    trained = {"baseline": base, "sparse": sparse, "pruned": pruned, "fine-tuned": tuned}
    if config.reference is not None:
        trained["reference"] = run.train("reference", f"the reference: the baseline trained "
                                         f"{config.epochs('reference')} more epochs (the budget of sparsity training "
                                         "and fine-tuning)", data, cfg=base.artifacts["cfg"],
                                         weights=base.artifacts["weights"])
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
    return doc
