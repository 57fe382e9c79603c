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
import gzip
import json
import shutil
import tarfile
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
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import ConvertSpec, EvalSpec, PruneSpec, Spec, SweepSpec, TrainSpec
from slimyolo.store import Store, validate_key


def _pack(folder: Path, archive: Path) -> None:
    """A gzip tar of the data set folder's contents (what a DatasetRef carries).

    Reproducible: the same files give the same bytes (no times, owners or gzip timestamp), so
    the stages' specs, which name the archive by its sha256, are the same when a run continues.
    """
    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:  # JPEGs do not compress; be quick
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name, filter=plain)


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
    stages: dict[str, dict[str, Any]] = {}
    with_reference = config.reference is not None
    steps = ["data", "base", "sparse", "sweep", "prune", "finetune", *(["reference"] if with_reference else []),
             "convert baseline", "convert fine-tuned", "convert int8", "eval baseline",
             *(["eval reference"] if with_reference else []), "eval sparse", "eval pruned", "eval fine-tuned"]
    report = progress or (lambda event: None)

    def header(step: str, title: str) -> None:
        say(f"\n== [{steps.index(step) + 1}/{len(steps)}] {title} ==")

    def stage(step: str, title: str, spec: Spec) -> StageResult:
        header(step, title)
        t0 = time.monotonic()
        result = runner.run(spec, report)
        seconds = time.monotonic() - t0
        stages[step] = {"spec": spec.to_dict(), "seconds": round(seconds, 1), "metrics": result.metrics,
                        "artifacts": {k: dataclasses.asdict(v) for k, v in result.artifacts.items()}}
        (run_dir / "stages.json").write_text(json.dumps(stages, indent=1, default=str) + "\n")
        say(f"-- {title}: {seconds:.0f} s")
        return result

    header("data", "data set")
    folder, data_file = prepare_data(config, run_dir, say)
    classes = read_data_file(data_file).classes
    archive = run_dir / "data.tar.gz"
    _pack(folder, archive)
    data = DataRef(archive=store.put_file(archive), data_file=data_file.relative_to(folder).as_posix())
    archive.unlink()
    cfg: FileRef = store.put_file(_model_cfg(config, classes, run_dir))
    say(f"uploaded the data set and the cfg to {store.uri}")

    def train(step: str, title: str, **refs: Any) -> StageResult:
        options = config.train_options({"sparse": "sparsity"}.get(step, step))
        return stage(step, title, TrainSpec(data=data, out=f"{prefix}/{step}", options=options, **refs))

    pretrained = {k: store.put_file(Path(v)) for k, v in (("weights", config.weights),
                                                          ("weights_cfg", config.weights_cfg)) if v}
    base = train("base", "base training" + (f" (from {Path(config.weights).name})" if config.weights else ""),
                 cfg=cfg, **pretrained)
    sparse = train("sparse", "sparsity training", cfg=base.artifacts["cfg"], weights=base.artifacts["weights"])
    model = {"cfg": sparse.artifacts["cfg"], "weights": sparse.artifacts["weights"]}
    sweep = SweepSpec.from_dict({**model, "data": data, "out": f"{prefix}/sweep", **config.sweep})
    swept = stage("sweep", "pruning sweep (no fine-tuning)", sweep)
    pruned = stage("prune", "pruning", PruneSpec.from_dict({**model, "out": f"{prefix}/prune",
                                                            **prune_point(config, sweep, swept.metrics)}))
    teacher = {"teacher_cfg": model["cfg"], "teacher_weights": model["weights"]} if config.distill else {}
    tuned = train("finetune", "fine-tuning" + (" (distilled from the sparse model)" if config.distill else ""),
                  cfg=pruned.artifacts["cfg"], weights=pruned.artifacts["weights"], **teacher)
    trained = {"baseline": base, "sparse": sparse, "pruned": pruned, "fine-tuned": tuned}
    if with_reference:
        trained["reference"] = train("reference", f"the reference: the baseline trained {config.epochs('reference')} "
                                     "more epochs (the budget of sparsity training and fine-tuning)",
                                     cfg=base.artifacts["cfg"], weights=base.artifacts["weights"])

    def convert(step: str, title: str, result: StageResult, name: str, precision: str,
                evaluate: bool = False) -> StageResult:
        doc = {"cfg": result.artifacts["cfg"], "weights": result.artifacts["weights"], "name": name,
               "calib_data": data, **config.convert_options(precision), "evaluate": evaluate}
        return stage(step, title, ConvertSpec.from_dict(doc))

    ir_base = convert("convert baseline", "OpenVINO IR of the baseline (FP32)", base, f"{config.name}-baseline",
                      "fp32")
    ir_tuned = convert("convert fine-tuned", "OpenVINO IR of the fine-tuned model (FP32)", tuned, config.name, "fp32")
    ir_int8 = convert("convert int8", "OpenVINO IR of the fine-tuned model (INT8)", tuned, f"{config.name}-int8",
                      "int8", evaluate=True)
    evals = {}
    for name in ROWS:
        if name in trained:
            result = trained[name]
            evals[name] = stage(f"eval {name}", f"evaluation of the {name} model", EvalSpec.from_dict(
                {"cfg": result.artifacts["cfg"], "weights": result.artifacts["weights"], "data": data, **config.eval}))

    def row(name: str, metrics: Mapping[str, Any], stats: Mapping[str, Any], size: int, ir: StageResult,
            ir_row: str) -> dict[str, Any]:
        bench = ir.metrics.get("bench") or {}
        return {"model": name, "precision": metrics["precision"], "recall": metrics["recall"],
                "map50": metrics["map50"], "params": stats["params"], "size_bytes": size, "bflops": stats["bflops"],
                "infer_fps": bench.get("infer_fps", 0.0), "fps": bench.get("fps", 0.0), "fps_from": ir_row,
                "infer_precision": bench.get("execution_precision", "")}

    irs = {"baseline": ir_base, "reference": ir_base, "sparse": ir_base, "pruned": ir_tuned, "fine-tuned": ir_tuned}
    rows = [row(r, evals[r].metrics, evals[r].metrics["model"], evals[r].metrics["model"]["weights_bytes"], irs[r],
                "baseline" if irs[r] is ir_base else "fine-tuned") for r in ROWS if r in evals]
    tuned_stats = evals["fine-tuned"].metrics["model"]
    rows.append(row("int8", ir_int8.metrics["eval"], tuned_stats, ir_int8.metrics["bin_bytes"], ir_int8, "int8"))
    result = PipelineResult(run_dir, rows, stages, time.monotonic() - started,
                            story=story(config, {k: v.metrics for k, v in trained.items()}, swept.metrics, rows))
    if detect is not None:
        image = read_data_file(data_file).valid[0]
        result.served = detect(config.name, str(ir_tuned.metrics["version"]), image)
    result.seconds = time.monotonic() - started
    result.save()
    return result


def prune_point(config: PipelineConfig, sweep: SweepSpec, found: Mapping[str, Any]) -> dict[str, Any]:
    """The prune settings: the config's ``prune`` section if it has one, else the sweep's best point."""
    if config.prune:
        return dict(config.prune)
    best = found.get("best")
    if best is None:
        raise SlimYoloError(f"the sweep found no pruning point within max_map_drop {sweep.max_map_drop} of the "
                            f"baseline mAP@0.5 {found['baseline']['map50']:.4f}: raise sweep.max_map_drop, or set "
                            "prune.global_percent in the config")
    point = {"method": best["stage"], "layer_keep": sweep.layer_keep, "round_to": sweep.round_to}
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
