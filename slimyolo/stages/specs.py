"""The specs of the stages: the one schema of each stage request, and its checks.

A spec is a frozen dataclass whose fields are declared once, with how each is read and checked
(:func:`param`). Everything else is derived from that declaration:

- the **YAML spec** of ``slimyolo stage KIND --spec FILE`` (the Kubernetes batch Jobs) and the
  pipeline's sections are read by :func:`~slimyolo.stages.kinds.parse_spec` (``from_dict``), field by field;
- the **gRPC request** of the stage's service carries the spec as one ``google.protobuf.Struct``
  (``Start...Request.spec``), written by ``to_dict`` and read back by the same
  :func:`~slimyolo.stages.kinds.parse_spec` (:mod:`slimyolo.rpc.messages`), so a request is checked exactly as a
  YAML spec is, with the same messages, and every legal value (zero included) arrives unchanged;
- the **core call**: the stage's runner (:mod:`slimyolo.stages.runners`) passes the fields on;
  ``tests/test_stage_contract.py`` fails when a declared field is missing from any of the three.

Adding a setting to a stage is one line here (and its use in the runner). Inputs are references
into the artifact store (files, data sets: :mod:`slimyolo.params`, which also holds the engine
that reads and checks every declared field). Outputs go to a store prefix (``out``), published as
one tree when the stage is done. The YAML form of each spec is its fields, flat; a training spec
also takes every key of the training configuration (``slimyolo train --config``), for example::

    # slimyolo stage train --spec train.yaml
    cfg: inputs/model/yolov4-tiny-2c.cfg # a file of a tree in the store, or {uri, sha256, size_bytes}
    data: datasets/synth                 # a data set tree, or {archive: FILE, data_file: synth.data}
    out: runs/sparse                     # the store prefix of the outputs (must not exist yet)
    weights: runs/base/best.weights
    epochs: 30
    sr: true
    s: 0.001
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimyolo import vocab
from slimyolo.convert.options import ConvertOptions
from slimyolo.errors import SlimYoloError
from slimyolo.params import DataRef, Declared, Fields, FileRef, declared_fields, out_key, param, plain
from slimyolo.prune.options import PruneOptions, SweepOptions
from slimyolo.train.options import EvalOptions


class SpecBase(Declared):
    """A stage's spec: its declared fields, and the stage ``kind`` it describes."""

    kind: ClassVar[str]
    help_footer: ClassVar[str] = ""  # the last line of ``slimyolo stage KIND --help``
    # The version of the fields' meaning, part of the spec's digest (slimyolo.stages.durable): raise it when a
    # field comes to mean something else, so results stored before stop passing for this spec. Adding a field
    # with a default needs no new version.
    schema: ClassVar[int] = 1

    @classmethod
    def from_dict(cls, doc: Any, source: str | None = None, flags: bool = False) -> Any:
        return super().from_dict(doc, source or f"{cls.kind} spec", flags)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The YAML/JSON value of each field that has one by default: what a spec that leaves the field out means
        (a field unset by default, None, ``to_dict`` leaves out). Durable stages identify a spec without them."""
        return {fld.name: plain(fld.default) for fld in declared_fields(cls)
                if fld.default is not dataclasses.MISSING and fld.default is not None}


def store_fields(cls: type) -> tuple[str, ...]:
    """The fields of a spec that name store files, data sets or the output prefix."""
    return tuple(f.name for f in declared_fields(cls) if f.metadata["check"].kind in ("file", "data", "out"))


@dataclass(frozen=True)
class TrainSpec(SpecBase):
    """Base training, sparsity training or fine-tuning (the settings say which: sr, finetune; as in TrainConfig)."""

    data: DataRef = param("data", help="the training data set (its train and valid lists)")
    out: str = param("out", help="the store prefix the run folder is published under")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    weights: FileRef | None = param("file", None, help="initial weights; unset: trained from scratch; base "
                                    "training also takes a partial darknet file or another cfg's weights")
    weights_cfg: FileRef | None = param("file", None, help="the cfg of weights when they are another cfg's .weights")
    teacher_cfg: FileRef | None = param("file", None, help="the distillation teacher's cfg (default: the one "
                                        "inside teacher_weights)")
    teacher_weights: FileRef | None = param("file", None, help="distillation from this teacher while fine-tuning")
    # Every other key: a TrainConfig setting (epochs, sr, s, ...), checked by TrainConfig itself (check()).
    options: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "train"
    help_footer: ClassVar[str] = ("Every other key is a training setting, as in slimyolo train --config: the settings "
                                  "slimyolo train --help lists as flags, with underscores (epochs, batch_size, "
                                  "img_size, sr, s, finetune, ...), and the augment and loss sections.")

    @classmethod
    def _extra(cls, f: Fields) -> dict[str, Any]:
        return {"options": f.rest()}

    def _validate(self, f: Fields) -> None:
        if self.cfg is None and self.weights is None:
            raise SlimYoloError(f"{f.source}: 'cfg' is required unless 'weights' is a .pt checkpoint holding its cfg")
        if self.teacher_cfg is not None and self.teacher_weights is None:
            raise SlimYoloError(f"{f.source}: 'teacher_cfg' needs 'teacher_weights'")
        if self.weights_cfg is not None and self.weights is None:
            raise SlimYoloError(f"{f.source}: 'weights_cfg' is the cfg of 'weights'; it needs weights")
        self.check(f.source)

    def check(self, source: str = "train spec") -> None:
        """Check the training settings (they are TrainConfig's: unknown keys, types, ranges)."""
        from slimyolo.train.config import TrainConfig

        doc = {**self.options, "data": "data", "cfg": "model.cfg", "out": "run"}
        if self.weights_cfg is not None:  # base training only (checked with the settings)
            doc.update(weights="init.weights", weights_cfg="weights.cfg")
        TrainConfig.from_dict(doc, source).resolved(source)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **plain(dict(self.options))}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The declared fields' defaults and the training settings' (TrainConfig's; its sections ``augment`` and
        ``loss`` as mappings): a setting written out at its default is the same training spec."""
        from slimyolo.train.config import TrainConfig

        declared = super().defaults()
        names = {fld.name for fld in declared_fields(cls)}
        settings = {k: v for k, v in plain(TrainConfig(data="").to_dict()).items() if k not in names and v is not None}
        return {**declared, **settings}


@dataclass(frozen=True)
class EvalSpec(SpecBase, EvalOptions):
    """P, R, mAP@0.5 and F1 of a model on a data set's validation split, with its size figures."""

    weights: FileRef = param("file", help="the model's weights (.weights, or a .pt holding its cfg)")
    data: DataRef = param("data", help="the data set whose validation split is evaluated")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")

    kind: ClassVar[str] = "eval"


@dataclass(frozen=True)
class PruneSpec(SpecBase, EvalOptions, PruneOptions):
    """Channel pruning, layer pruning or both, at one point; optionally mAP before and after.

    The point is :class:`~slimyolo.prune.options.PruneOptions` (method, global_percent, shortcuts, what every
    layer keeps) and the evaluation :class:`~slimyolo.train.options.EvalOptions`, embedded: their fields are
    this spec's, flat, checked as they declare (the method's required fields included).
    """

    weights: FileRef = param("file", help="the sparse model's weights (.weights, or a .pt holding its cfg)")
    out: str = param("out", help="the store prefix pruned.cfg, .weights, .pt and summary.json are published under")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    data: DataRef | None = param("data", None, help="evaluate mAP@0.5 before and after on its validation split; "
                                 "unset: no evaluation")

    kind: ClassVar[str] = "prune"


@dataclass(frozen=True)
class SweepSpec(SpecBase, EvalOptions, SweepOptions):
    """The best-pruning-point sweep: coarse-then-fine search of channel (and layer) pruning.

    The search is :class:`~slimyolo.prune.options.SweepOptions` and the scoring of each point
    :class:`~slimyolo.train.options.EvalOptions`, embedded: their fields are this spec's, flat.
    """

    weights: FileRef = param("file", help="the sparse model's weights (.weights, or a .pt holding its cfg)")
    data: DataRef = param("data", help="the data set whose validation split scores each point")
    out: str = param("out", help="the store prefix sweep.json, .csv, .png and best/ are published under")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")

    kind: ClassVar[str] = "sweep"


@dataclass(frozen=True)
class ConvertSpec(SpecBase, ConvertOptions):
    """Conversion to an OpenVINO IR published as ``<model_repository>/<name>/<version>/`` in the store.

    How the model is converted is :class:`~slimyolo.convert.options.ConvertOptions` (via, precision, ...),
    embedded: its fields are this spec's, flat. With ``evaluate`` the written IR is also evaluated on
    ``calib_data``'s validation split (P, R, mAP@0.5 of what OpenVINO runs, INT8 included), and with
    ``bench_seconds`` its OpenVINO throughput is measured on this machine at ``bench_precision`` (f32 by
    default, so that figures from CPUs with and without bf16 compare; ``default``: the device's choice).
    """

    weights: FileRef = param("file", help="the model's weights (.weights, or a .pt holding its cfg)")
    name: str = param("text", help="the model's name in the repository: one path segment")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    version: str | None = param("text", None, help="the version to publish; unset: one more than the newest")
    model_repository: str | None = param("key", None, help="the store prefix of the model repository; unset: "
                                         "$SLIMYOLO_MODEL_REPOSITORY, else models")
    calib_data: DataRef | None = param("data", None, help="calibration (INT8), parity images, class names and "
                                       "evaluation; unset: a small synthetic set")
    evaluate: bool = param("bool", False, help="evaluate the IR on calib_data's validation split")
    bench_seconds: float = param("float", 0.0, low=0, help="measure the IR's OpenVINO FPS this long (0: not)")
    bench_precision: str = param("choice", "f32", options=vocab.BENCH_PRECISIONS,
                                 help="inference precision of that measurement; default: the device's own choice")

    kind: ClassVar[str] = "convert"

    def _validate(self, f: Fields) -> None:
        super()._validate(f)
        if not self.name:
            raise SlimYoloError(f"{f.source}: 'name' (the model's name in the repository) is required")
        out_key(self.name, f.where("name"))
        if "/" in self.name:
            raise SlimYoloError(f"{f.where('name')}: a model name is one path segment, got {self.name!r}")
        if self.version is not None and (not self.version.isdigit() or int(self.version) < 1):
            raise SlimYoloError(f"{f.where('version')} must be a positive integer, got {self.version!r}")
        if self.precision == "int8" and self.calib_data is None:
            raise SlimYoloError(f"{f.source}: INT8 quantization needs 'calib_data' (a data set to calibrate on)")
        if self.evaluate and (self.calib_data is None or self.ppp is not None):
            raise SlimYoloError(f"{f.source}: 'evaluate' needs 'calib_data' (labelled images) and an IR with the "
                                "plain f32 input (no 'ppp')")


Spec = TrainSpec | EvalSpec | PruneSpec | SweepSpec | ConvertSpec
