"""``slimyolo pipeline run CONFIG.yaml [--remote]``: the whole method, from a data set to served IRs.

base training → sparsity training → sweep → prune (at the sweep's best point, or at the point
the config names) → fine-tuning → conversion (the baseline and the fine-tuned model in FP32, the
fine-tuned model in INT8) → evaluation, then the table: P, R, mAP@0.5, params, size, BFLOPs and
OpenVINO FPS of the baseline, sparse, pruned, fine-tuned and INT8 models, printed and saved as
``results.json`` and ``results.md`` in the run folder ``<out>/<name>-<time>/``.

Every step is a stage (:mod:`slimyolo.stages`) exchanging artifacts through the store: in this
process by default (the store of ``SLIMYOLO_STORE``, a local folder unless set), or with
``--remote`` as jobs of the trainer, pruner and converter services, which must share that store
(S3/MinIO). The remote run ends with the inference service detecting objects in a validation
image with the fine-tuned model it now serves. Service addresses come from the config's
``remote`` section or ``SLIMYOLO_<SERVICE>_ADDRESS`` (which wins).

The config (``configs/demo.yaml`` is the example)::

    name: demo                       # run and model name (models/<name>/<version>)
    out: runs                        # local folder for the run folders
    data: {synth: {classes: 2, train: 300, val: 80, size: 160, seed: 0}}   # or {path: DATA_SET}
    model: yolov4-tiny               # a zoo name (sized for the data) or a cfg file
    img_size: 160
    training: {batch_size: 16}       # training settings of all three training stages
    base: {epochs: 30}               # ... and of each one
    sparsity: {epochs: 10, s: 0.001, prune: 1}
    sweep: {percents: [0.5, 0.95, 0.05], max_map_drop: 0.05}
    prune: {}                        # empty: the sweep's best point; else the point (method, global_percent, ...)
    finetune: {epochs: 10, distill: true}
    convert: {via: tf, calib_images: 100, bench_seconds: 5}
    eval: {batch_size: 16}
    remote: {trainer: 127.0.0.1:50051, pruner: 127.0.0.1:50052, converter: 127.0.0.1:50053,
             inference: 127.0.0.1:50054}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from slimyolo.cpuinfo import describe
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import read_yaml
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import (
    ConvertSpec,
    DataRef,
    EvalSpec,
    Fields,
    FileRef,
    PruneSpec,
    Spec,
    SweepSpec,
    TrainSpec,
)
from slimyolo.store import Store, validate_key

SERVICES = ("trainer", "pruner", "converter", "inference")
ROWS = ("baseline", "reference", "sparse", "pruned", "fine-tuned")  # the table's PyTorch rows (then int8)
# Which service runs each stage, and the Start... method.
REMOTE_METHODS = {"train": ("trainer", "StartTraining"), "eval": ("trainer", "StartEvaluation"),
                  "prune": ("pruner", "StartPrune"), "sweep": ("pruner", "StartSweep"),
                  "convert": ("converter", "StartConversion")}
SECTIONS = ("training", "base", "sparsity", "finetune", "sweep", "prune", "convert", "eval", "remote")
TRAININGS = ("base", "sparsity", "finetune", "reference")  # the training sections, run in the order of the steps
Progress = Callable[[Mapping[str, Any]], None]

# Fields of the stage specs that the pipeline sets itself (the stages' inputs, outputs and roles).
RESERVED = {"training": ("data", "cfg", "weights", "out", "teacher_cfg", "teacher_weights", "sr", "finetune"),
            "sweep": ("weights", "cfg", "data", "out"), "prune": ("weights", "cfg", "out"),
            "convert": ("weights", "cfg", "name", "version", "precision", "calib_data", "evaluate"),
            "eval": ("weights", "cfg", "data")}
# Placeholders that let a config section be checked as a stage spec before anything runs.
_REF = "check/file"
_DATA = {"tree": "check/data"}


def address_variable(service: str) -> str:
    return f"SLIMYOLO_{service.upper()}_ADDRESS"


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    data: Mapping[str, Any]  # {"synth": {...}} or {"path": "..."}
    model: str  # a zoo name or a cfg file
    img_size: int
    out: Path = Path("runs")
    training: Mapping[str, Any] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    sparsity: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    distill: bool = True
    sweep: Mapping[str, Any] = field(default_factory=dict)
    prune: Mapping[str, Any] = field(default_factory=dict)
    convert: Mapping[str, Any] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)
    remote: Mapping[str, str] = field(default_factory=dict)
    # The fair reference: the baseline trained on for as many epochs as sparsity training and
    # fine-tuning took together (its own settings on top of base's); None: not trained.
    reference: Mapping[str, Any] | None = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        doc = read_yaml(path)
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, source: str = "pipeline config") -> PipelineConfig:
        """Read and check the whole config: each section is checked as the stage spec it becomes."""
        f = Fields(doc, source)
        name = f.text("name") or ""
        if not name or "/" in name:
            raise SlimYoloError(f"{f.where('name')}: one name (letters, digits, . _ -) is required, got {name!r}")
        validate_key(name, f.where("name"))
        model = f.text("model")
        if not model:
            raise SlimYoloError(f"{f.where('model')}: a zoo name (yolov4-tiny, ...) or a cfg file is required")
        img_size = f.number("img_size", int, None, 32)
        if img_size is None or img_size % 32:
            raise SlimYoloError(f"{f.where('img_size')}: a multiple of 32 is required, got {img_size}")
        data = f.raw("data")
        if not (isinstance(data, Mapping) and len(data) == 1 and set(data) <= {"synth", "path"}):
            raise SlimYoloError(f"{f.where('data')}: expected {{synth: {{classes, train, val, size, seed}}}} or "
                                f"{{path: DATA_SET}}, got {data!r}")
        sections = {}
        for key in SECTIONS:
            value = f.raw(key) or {}
            if not isinstance(value, Mapping):
                raise SlimYoloError(f"{f.where(key)}: expected a mapping, got {value!r}")
            sections[key] = dict(value)
        reference = f.raw("reference")
        if reference is False:
            reference = None
        elif reference is None:
            reference = {}
        elif not isinstance(reference, Mapping):
            raise SlimYoloError(f"{f.where('reference')}: expected training settings (a mapping, {{}} for the "
                                f"defaults) or false to leave the reference out, got {reference!r}")
        out = Path(f.text("out") or "runs")
        f.done()
        finetune = dict(sections["finetune"])
        distill = finetune.pop("distill", True)
        if not isinstance(distill, bool):
            raise SlimYoloError(f"{source}: 'finetune.distill' must be true or false")
        unknown = sorted(set(sections["remote"]) - set(SERVICES))
        if unknown:
            raise SlimYoloError(f"{source}: 'remote.{unknown[0]}' is not a service ({', '.join(SERVICES)})")
        config = cls(name, dict(data), model, img_size, out, sections["training"], sections["base"],
                     sections["sparsity"], finetune, distill, sections["sweep"], sections["prune"], sections["convert"],
                     sections["eval"], {k: str(v) for k, v in sections["remote"].items()},
                     None if reference is None else dict(reference))
        config._check(source)
        return config

    def _check(self, source: str) -> None:
        """Build every stage's spec from placeholders, so a bad setting fails now, not after an hour."""
        for section, reserved in RESERVED.items():
            names = ("training", *TRAININGS) if section == "training" else (section,)
            for name in names:
                taken = sorted(set(getattr(self, name) or {}) & set(reserved))
                if taken:
                    raise SlimYoloError(f"{source}: '{name}.{taken[0]}' is set by the pipeline itself")
        for stage in TRAININGS if self.reference is not None else TRAININGS[:-1]:
            TrainSpec.from_dict({"cfg": _REF, "data": _DATA, "out": "check/out", **self.train_options(stage)},
                                f"{source}: {stage}").check(f"{source}: {stage}")
        SweepSpec.from_dict({"weights": _REF, "data": _DATA, "out": "check/out", **self.sweep}, f"{source}: sweep")
        if self.prune:
            PruneSpec.from_dict({"weights": _REF, "out": "check/out", **self.prune}, f"{source}: prune")
        for precision in ("fp32", "int8"):
            ConvertSpec.from_dict({"weights": _REF, "name": self.name, "calib_data": _DATA,
                                   **self.convert_options(precision)}, f"{source}: convert")
        EvalSpec.from_dict({"weights": _REF, "data": _DATA, **self.eval}, f"{source}: eval")
        if "synth" in self.data:
            synth = self.data["synth"] or {}
            if not isinstance(synth, Mapping) or set(synth) - {"classes", "train", "val", "size", "seed"}:
                raise SlimYoloError(f"{source}: 'data.synth' takes classes, train, val, size, seed; got {synth!r}")

    def train_options(self, stage: str) -> dict[str, Any]:
        """The training settings of ``stage``: the shared ones, the stage's, and what the stage is.

        The reference continues the baseline as base training does (same optimiser, schedule
        and data), for the epochs of sparsity training and fine-tuning together unless it says.
        """
        if stage == "reference":
            epochs = self.epochs("sparsity") + self.epochs("finetune")
            return {"img_size": self.img_size, **self.training, **self.base, "epochs": epochs, **(self.reference or {})}
        own = {"base": self.base, "sparsity": self.sparsity, "finetune": self.finetune}[stage]
        fixed = {"base": {}, "sparsity": {"sr": True}, "finetune": {"finetune": True}}[stage]
        return {"img_size": self.img_size, **self.training, **own, **fixed}

    def epochs(self, stage: str) -> int:
        """The epochs training ``stage`` runs (its setting, the shared one, or the trainer's default)."""
        from slimyolo.train.config import TrainConfig

        return int(self.train_options(stage).get("epochs", TrainConfig.epochs))

    def convert_options(self, precision: str) -> dict[str, Any]:
        options = {**self.convert, "precision": precision}
        if precision != "int8":
            options.pop("accuracy_control", None)
        return options


# -- running stages: in this process, or as jobs of the services ------------------------------------


class StageRunner(Protocol):
    def run(self, spec: Spec, progress: Progress) -> StageResult:
        """Run one stage; returns its artifacts by role and its metrics."""


class LocalRunner:
    """Stages in this process, against ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        from slimyolo.stages.runners import run_stage

        return run_stage(self.store, spec, progress)


class RemoteRunner:
    """Stages as jobs of the services at ``addresses``; inputs are resolved in ``store`` (shared with them)."""

    def __init__(self, addresses: Mapping[str, str], store: Store, ready_timeout: float = 120.0) -> None:
        self.addresses, self.store, self.ready_timeout = dict(addresses), store, ready_timeout
        self._channels: dict[str, Any] = {}

    def channel(self, service: str) -> Any:
        from slimyolo.rpc.client import connect, wait_ready

        if service not in self._channels:
            if service not in self.addresses:
                raise SlimYoloError(f"--remote: no address for the {service} service: set {address_variable(service)} "
                                    f"or remote.{service} in the config")
            channel = connect(self.addresses[service])
            # The inference service is ready only while it serves a model; the pipeline brings it one (LoadModel).
            wait_ready(channel, "liveness" if service == "inference" else "", self.ready_timeout)
            self._channels[service] = channel
        return self._channels[service]

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        import grpc

        from slimyolo.rpc.client import follow_job, remote_error
        from slimyolo.rpc.gen.v1 import converter_pb2_grpc, jobs_pb2, jobs_pb2_grpc, pruner_pb2_grpc, trainer_pb2_grpc
        from slimyolo.rpc.messages import artifact_from_proto, struct_to_dict
        from slimyolo.stages.messages import TO_REQUEST
        from slimyolo.stages.workspace import resolve

        service, method = REMOTE_METHODS[spec.kind]
        stub = {"trainer": trainer_pb2_grpc.TrainerStub, "pruner": pruner_pb2_grpc.PrunerStub,
                "converter": converter_pb2_grpc.ConverterStub}[service](self.channel(service))
        request = TO_REQUEST[spec.kind](spec, lambda ref, where: resolve(self.store, ref, where))
        try:
            job = getattr(stub, method)(request, timeout=60).job
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc

        def on_event(event: Any) -> None:
            if event.HasField("progress"):
                progress(struct_to_dict(event.progress))

        try:
            final = follow_job(self.channel(service), job.id, on_event)
        except KeyboardInterrupt:  # stop the remote job too, not just this client
            jobs_pb2_grpc.JobsStub(self.channel(service)).CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)
            raise
        artifacts = {role: artifact_from_proto(ref, role) for role, ref in final.result.artifacts.items()}
        return StageResult(artifacts, struct_to_dict(final.result.metrics))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


# -- the pipeline -----------------------------------------------------------------------------------


def _pack(folder: Path, archive: Path) -> None:
    """A gzip tar of the data set folder's contents (what a DatasetRef carries)."""
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # JPEGs do not compress; be quick
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)


def prepare_data(config: PipelineConfig, run_dir: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """(data set folder, its .data file): the synthetic set written into the run folder, or the given one."""
    from slimyolo.data.dataset import read_data_file

    if "synth" in config.data:
        from slimyolo.data.synth import write_synthetic

        synth = {"classes": 2, "train": 300, "val": 100, "size": config.img_size, "seed": 0,
                 **(config.data["synth"] or {})}
        say(f"synthetic data set: {synth['classes']} classes, {synth['train']} training and {synth['val']} "
            f"validation images of {synth['size']} px (seed {synth['seed']})")
        data_file = write_synthetic(run_dir / "data", **synth)
        return data_file.parent, data_file
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
        head = "| model | P | R | mAP@0.5 | params | size MB | BFLOPs | OpenVINO FPS | FPS end to end |"
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            shared = " *" if r["fps_from"] != r["model"] else ""
            lines.append(f"| {r['model']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.3f} | "
                         f"{r['params']:,} | {r['size_bytes'] / 1e6:.3g} | {_bflops(r['bflops'])} | "
                         f"{r['infer_fps']:.1f}{shared} | {r['fps']:.1f}{shared} |")
        return "\n".join(lines)

    def notes(self) -> list[str]:
        precisions = sorted({r["infer_precision"] for r in self.rows if r.get("infer_precision")})
        bench = (self.stages.get("convert baseline", {}).get("metrics") or {}).get("bench") or {}
        machine = f" ({describe(bench['cpu'])})" if bench.get("cpu") else ""
        pruned = (self.stages.get("prune", {}).get("metrics") or {}).get("channel_report")
        channels = [] if not pruned else [
            f"pruned: asked {pruned['asked']:.1%} of {pruned['prunable']:,} prunable channels, removed "
            f"{pruned['removed_fraction']:.1%} (kept back: "
            + (", ".join(f"{k} {v:,}" for k, v in pruned["kept_back"].items() if v) or "none") + ")."]
        return [*channels, "size: the darknet .weights file; for int8 the IR's model.bin.",
                f"OpenVINO FPS: inference-only throughput of the IR on this machine{machine}, throughput hint, "
                f"inference precision {'/'.join(precisions) or 'the device default'}; end to end adds letterbox, "
                "decode and NMS.",
                "* the same network as the row it is measured on (reference, sparse: baseline; pruned: "
                "fine-tuned); only the weights differ.",
                "int8: P, R and mAP@0.5 of the INT8 IR run by OpenVINO; the other rows of the PyTorch model "
                "(the FP32 IRs match it within 1e-3)."]

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run_dir.name, "rows": self.rows, "seconds": round(self.seconds, 1),
                "story": self.story, "stages": self.stages, "served": self.served, "notes": self.notes()}

    def save(self) -> None:
        from slimyolo.fsutil import atomic_write_text

        atomic_write_text(self.run_dir / "results.json", json.dumps(self.as_dict(), indent=1, default=str) + "\n")
        md = [f"# {self.run_dir.name}", "", *self.story, "", self.table(), "", *[f"- {n}" for n in self.notes()], "",
              f"Wall time: {self.seconds:.0f} s."]
        atomic_write_text(self.run_dir / "results.md", "\n".join(md) + "\n")


def story(config: PipelineConfig, trained: Mapping[str, Mapping[str, Any]], swept: Mapping[str, Any],
          rows: list[dict[str, Any]]) -> list[str]:
    """What happened, one sentence per stage, and the three headline ratios (params, FPS, mAP against
    the reference): what a user needs to read the table, from the stages' own metrics."""
    by = {r["model"]: r for r in rows}
    base, tuned = by["baseline"], by["fine-tuned"]
    sparse, pruned = trained["sparse"], trained["pruned"]
    lines = [f"base training: {config.epochs('base')} epochs, mAP@0.5 {base['map50']:.3f}.",
             f"sparsity training: {config.epochs('sparsity')} epochs (s {config.train_options('sparsity').get('s')}) "
             f"took the prunable |γ| below 0.01 from {trained['baseline'].get('gamma_below_0.01', 0):.0%} to "
             f"{sparse.get('gamma_below_0.01', 0):.0%}; mAP@0.5 {by['sparse']['map50']:.3f}."]
    best = swept.get("best")
    if config.prune:
        lines.append(f"sweep: not used, the config's prune section names the point ({dict(config.prune)}).")
    elif best is not None:
        point = " + ".join(p for p in (f"{best['global_percent']:.2f} of the channels"
                                       if best.get("global_percent") is not None else "",
                                       f"{best['shortcuts']} residual units" if best.get("shortcuts") else "") if p)
        rule = "the most measured FPS" if swept.get("objective") == "fps" else "the fewest BFLOPs"
        lines.append(f"sweep: chose {best['stage']} pruning of {point}: of the points whose mAP@0.5 stays within "
                     f"{swept.get('max_map_drop')} of the sparse model's {swept['baseline']['map50']:.3f} "
                     f"(before fine-tuning), the one with {rule} ({best['map50']:.3f}).")
    report = pruned.get("channel_report")
    removed = (f"asked {report['asked']:.0%} of the {report['prunable']:,} prunable channels, removed "
               f"{report['removed_fraction']:.0%}; " if report else "")
    lines.append(f"pruning: {removed}params {base['params']:,} → {by['pruned']['params']:,}, BFLOPs "
                 f"{_bflops(base['bflops'])} → {_bflops(by['pruned']['bflops'])}; mAP@0.5 {by['pruned']['map50']:.3f} "
                 "before fine-tuning.")
    distilled = " distilled from the sparse model" if config.distill else ""
    lines.append(f"fine-tuning: {config.epochs('finetune')} epochs{distilled} brought mAP@0.5 to {tuned['map50']:.3f}.")
    ref = by.get("reference")
    if ref is not None:
        lines.append(f"reference: the baseline trained {config.epochs('reference')} more epochs (as many as sparsity "
                     f"training and fine-tuning) reaches mAP@0.5 {ref['map50']:.3f}.")
    fps = tuned["infer_fps"] / base["infer_fps"] if base["infer_fps"] else 0.0
    against = ref or base
    params = tuned["params"] / base["params"]
    precision = tuned.get("infer_precision") or "default precision"
    lines.append(f"headline: {params:.2f}× the params ({1 - params:.0%} fewer), {fps:.2f}× the OpenVINO FPS "
                 f"({precision}), "
                 f"mAP@0.5 {100 * (tuned['map50'] - against['map50']):+.1f} points against the "
                 f"{'reference' if ref is not None else 'baseline'} ({tuned['map50']:.3f} vs {against['map50']:.3f}).")
    return lines


def _bflops(value: float) -> str:
    """Three decimals as darknet prints them; tiny test models get significant digits instead of 0.000."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.2g}"


def run_pipeline(config: PipelineConfig, runner: StageRunner, store: Store, *, say: Callable[[str], None] = print,
                 progress: Progress | None = None, detect: Callable[[str, str, Path], dict] | None = None
                 ) -> PipelineResult:
    """Run every stage through ``runner`` (see the module docstring); ``say`` prints the headers.

    ``detect(model name, version, image)``, when given, asks the served fine-tuned model for
    the objects in a validation image at the end (the remote run's inference service).
    """
    from slimyolo.data.dataset import read_data_file

    started = time.monotonic()
    run_id = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = config.out / run_id
    run_dir.mkdir(parents=True)
    prefix = f"runs/{run_id}"
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

    base = train("base", "base training", cfg=cfg)
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


# -- the command line -------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole method: train, sparsify, sweep, prune, fine-tune, convert, evaluate")
    cmds = p.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")
    r = cmds.add_parser("run", help="run a pipeline config (configs/demo.yaml) and print the final table")
    r.add_argument("config", type=Path, help="pipeline YAML config")
    r.add_argument("--remote", action="store_true", help="run the stages as jobs of the services (addresses from "
                                                         "the config's remote section or SLIMYOLO_<SERVICE>_ADDRESS)")
    r.add_argument("--out", type=Path, help="folder for the run folder (default: the config's out, else runs)")
    r.set_defaults(func=_run)


def remote_addresses(config: PipelineConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Service addresses: SLIMYOLO_<SERVICE>_ADDRESS, else the config's remote section."""
    return {s: env.get(address_variable(s)) or config.remote[s] for s in SERVICES
            if env.get(address_variable(s)) or s in config.remote}


def served_detection(runner: RemoteRunner) -> Callable[[str, str, Path], dict]:
    """Ask the inference service to load a model version and detect the objects of one image."""

    def detect(name: str, version: str, image: Path) -> dict[str, Any]:
        import grpc

        from slimyolo.rpc.client import remote_error
        from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc

        stub = inference_pb2_grpc.InferenceStub(runner.channel("inference"))
        try:
            stub.LoadModel(inference_pb2.LoadModelRequest(name=name, version=version), timeout=300)
            answer = stub.Detect(inference_pb2.DetectRequest(
                model_name=name, model_version=version, image=inference_pb2.Image(encoded=image.read_bytes())),
                timeout=60)
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc
        return {"address": runner.addresses["inference"], "model": name, "version": answer.model_version,
                "image": str(image), "detections": [
                    {"class": d.class_name, "score": round(d.score, 3),
                     "box": [round(v, 1) for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2)]}
                    for d in answer.detections]}

    return detect


def _run(args: argparse.Namespace) -> int:
    from slimyolo.stages.console import StageConsole
    from slimyolo.store import open_store

    config = PipelineConfig.from_yaml(args.config)
    if args.out:
        config = dataclasses.replace(config, out=args.out)
    store = open_store()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    console = StageConsole()
    runner: LocalRunner | RemoteRunner
    if args.remote:
        runner = RemoteRunner(remote_addresses(config, os.environ), store)
        detect = served_detection(runner) if "inference" in runner.addresses else None
        say(f"remote: {', '.join(f'{s} {a}' for s, a in runner.addresses.items())}; store {store.uri}")
    else:
        runner, detect = LocalRunner(store), None
        say(f"in process; store {store.uri}")
    try:
        result = run_pipeline(config, runner, store, say=say, progress=console, detect=detect)
    finally:
        console.close()
        if isinstance(runner, RemoteRunner):
            runner.close()
    print("\n" + "\n".join(result.story))
    if result.served is not None:
        s = result.served
        say(f"\nserved by {s['address']}: {s['model']} version {s['version']} found {len(s['detections'])} objects "
            f"in {Path(s['image']).name}: " + ", ".join(f"{d['class']} {d['score']:.2f}" for d in s["detections"][:5]))
    print(f"\n{result.table()}\n")
    for note in result.notes():
        print(f"- {note}")
    print(f"\n{result.run_dir}: results.json, results.md, stages.json ({result.seconds:.0f} s)")
    return 0
