"""The pipeline config: one YAML file, each section checked as the stage spec it becomes.

The config (``configs/demo.yaml`` is the example)::

    name: demo                       # run and model name (models/<name>/<version>)
    out: runs                        # local folder for the run folders
    data: {synth: {classes: 2, train: 300, val: 80, size: 160, seed: 0}}   # or {path: DATA_SET}, or {import: ...}
    model: yolov4-tiny               # a zoo name (sized for the data) or a cfg file
    weights: yolov4-tiny.conv.29     # optional: pretrained darknet weights base training starts from (a partial
    weights_cfg: yolov4-tiny.cfg     #   file, or another cfg's weights and, optional, their cfg; README)
    img_size: 160
    training: {batch_size: 16}       # training settings of all three training stages
    base: {epochs: 30}               # ... and of each one
    sparsity: {epochs: 10, s: 0.001, prune: 1}
    sweep: {percents: [0.5, 0.95, 0.05], max_map_drop: 0.05}
    prune: {}                        # empty: the sweep's best point; else the point (method, global_percent, ...)
    finetune: {epochs: 10, distill: true}
    reference: {concurrent: auto}    # base's settings for sparsity's + fine-tuning's epochs; false: left out
    convert: {via: tf, calib_images: 100, bench_seconds: 5}
    eval: {batch_size: 16}
    remote: {trainer: 127.0.0.1:50051, pruner: 127.0.0.1:50052, converter: 127.0.0.1:50053,
             inference: 127.0.0.1:50054}

``data`` is one of

- ``{synth: {classes, train, val, size, seed}}``: the synthetic data set, written into the run folder;
- ``{path: DATA_SET}``: a darknet-layout data set (a ``.data`` file or a folder holding one) whose lists
  name its images by relative paths inside its folder;
- ``{import: {format: voc|coco|yolo, source: PATH, images: PATH, val_fraction: 0.25, seed: 0,
  names: [a, b], skip_difficult: false}}``: the user's annotated photos, imported into the run folder's
  ``data/`` as ``slimyolo data import`` does (``format`` and ``source`` are required; a relative
  ``source`` or ``images`` is relative to the working directory; ``val_fraction`` absent: the source's
  own split if it has one, else 0.2). A continued run imports again and gets the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import read_yaml
from slimyolo.params import Fields, import_ref
from slimyolo.stages.kinds import SERVICES, address_variable
from slimyolo.stages.specs import ConvertSpec, EvalSpec, PruneSpec, SweepSpec, TrainSpec, store_fields
from slimyolo.store import validate_key

SECTIONS = ("training", "base", "sparsity", "finetune", "sweep", "prune", "convert", "eval", "remote")
TRAININGS = ("base", "sparsity", "finetune", "reference")  # the training sections, run in the order of the steps

# Fields of the stage specs that the pipeline sets itself (the stages' inputs, outputs and roles).
# They are the specs' store references and outputs, and the settings that say which model a step makes.
RESERVED = {section: (*store_fields(spec), *extra) for section, spec, extra in (
    ("training", TrainSpec, ("sr", "finetune")), ("sweep", SweepSpec, ()), ("prune", PruneSpec, ()),
    ("convert", ConvertSpec, ("name", "version", "precision", "evaluate")), ("eval", EvalSpec, ()))}
# Placeholders that let a config section be checked as a stage spec before anything runs.
_REF = "check/file"
_DATA = {"tree": "check/data"}


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    data: Mapping[str, Any]  # {"synth": {...}}, {"path": "..."} or {"import": {...}}
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
    # ``reference.concurrent``: whether the reference trains beside sparsity training → fine-tuning
    # ("auto": when that pays, :func:`slimyolo.pipeline.run.concurrent_reference`). A pipeline setting,
    # kept out of ``reference`` so that it never reaches the trainer.
    reference_concurrent: bool | str = "auto"
    weights: str | None = None  # pretrained weights of base training (its cfg's, a partial file, another cfg's)
    weights_cfg: str | None = None  # the cfg of ``weights`` when they are another cfg's darknet .weights

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
        if not (isinstance(data, Mapping) and len(data) == 1 and set(data) <= {"synth", "path", "import"}):
            raise SlimYoloError(f"{f.where('data')}: expected {{synth: {{classes, train, val, size, seed}}}}, "
                                f"{{path: DATA_SET}} or {{import: {{format, source, ...}}}}, got {data!r}")
        if "import" in data:
            import_ref(data["import"], f"{source}: 'data.import'", local=True)
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
        reference_concurrent = "auto"
        if reference is not None:
            reference = dict(reference)
            reference_concurrent = reference.pop("concurrent", "auto")
            if not (isinstance(reference_concurrent, bool) or reference_concurrent == "auto"):
                raise SlimYoloError(f"{source}: 'reference.concurrent' must be auto, true or false, got "
                                    f"{reference_concurrent!r}")
        out = Path(f.text("out") or "runs")
        weights, weights_cfg = f.text("weights"), f.text("weights_cfg")
        f.done()
        if weights_cfg is not None and weights is None:
            raise SlimYoloError(f"{source}: 'weights_cfg' is the cfg of 'weights'; it needs weights")
        for key, value in (("weights", weights), ("weights_cfg", weights_cfg)):
            if value is not None and not Path(value).is_file():
                raise SlimYoloError(f"{source}: '{key}': no such file {value!r}")
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
                     reference, reference_concurrent, weights, weights_cfg)
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
                                f"{source}: {stage}")  # the training settings too (TrainSpec.check)
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


def remote_addresses(config: PipelineConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Service addresses: SLIMYOLO_<SERVICE>_ADDRESS, else the config's remote section."""
    return {s: env.get(address_variable(s)) or config.remote[s] for s in SERVICES
            if env.get(address_variable(s)) or s in config.remote}
