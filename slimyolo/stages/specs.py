"""The specs of the stages: the one schema of each stage request, and its checks.

A spec is a frozen dataclass whose fields are declared once, with how each is read and checked
(:func:`param`). Everything else is derived from that declaration:

- the **YAML spec** of ``slimyolo stage KIND --spec FILE`` (the Kubernetes batch Jobs) and the
  pipeline's sections are read by :func:`parse_spec` (``from_dict``), field by field;
- the **gRPC request** of the stage's service carries the spec as one ``google.protobuf.Struct``
  (``Start...Request.spec``), written by ``to_dict`` and read back by the same
  :func:`parse_spec` (:mod:`slimyolo.stages.messages`), so a request is checked exactly as a
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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimyolo import vocab
from slimyolo.errors import SlimYoloError
from slimyolo.params import DataRef, Declared, Fields, FileRef, declared_fields, out_key, param, plain


class SpecBase(Declared):
    """A stage's spec: its declared fields, and the stage ``kind`` it describes."""

    kind: ClassVar[str]
    help_footer: ClassVar[str] = ""  # the last line of ``slimyolo stage KIND --help``

    @classmethod
    def from_dict(cls, doc: Any, source: str | None = None, flags: bool = False) -> Any:
        return super().from_dict(doc, source or f"{cls.kind} spec", flags)


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
    help_footer: ClassVar[str] = ("Every other key is a training setting, as in slimyolo train --config (epochs, "
                                  "batch_size, img_size, sr, s, finetune, ...).")

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


@dataclass(frozen=True)
class EvalSpec(SpecBase):
    """P, R, mAP@0.5 and F1 of a model on a data set's validation split, with its size figures."""

    weights: FileRef = param("file", help="the model's weights (.weights, or a .pt holding its cfg)")
    data: DataRef = param("data", help="the data set whose validation split is evaluated")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    img_size: int | None = param("img_size", None, help="square input size; unset: the cfg's")
    batch_size: int = param("int", 8, low=1, help="images per forward pass")
    conf_thres: float = param("float", 0.001, low=0, high=1, help="score threshold of the detections scored")
    iou_thres: float = param("float", 0.6, low=0, high=1, help="NMS IoU threshold")

    kind: ClassVar[str] = "eval"


@dataclass(frozen=True)
class PruneSpec(SpecBase):
    """Channel pruning, layer pruning or both, at one point; optionally mAP before and after."""

    weights: FileRef = param("file", help="the sparse model's weights (.weights, or a .pt holding its cfg)")
    out: str = param("out", help="the store prefix pruned.cfg, .weights, .pt and summary.json are published under")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    method: str = param("choice", "channel", options=vocab.PRUNE_METHODS, help="what to prune")
    global_percent: float | None = param("float", None, low=0, high=1, low_open=True, high_open=True,
                                         help="fraction of the prunable channels below the global |γ| threshold "
                                              "(channel and both: required)")
    shortcuts: int = param("int", 0, low=0, help="residual units to remove (layer and both: at least 1)")
    layer_keep: float = param("float", 0.01, low=0, high=1,
                              help="every layer keeps at least this fraction of its channels")
    round_to: int = param("int", 1, low=1, help="keep a multiple of this many channels per layer (1: no rounding)")
    data: DataRef | None = param("data", None, help="evaluate mAP@0.5 before and after on its validation split; "
                                 "unset: no evaluation")
    img_size: int | None = param("img_size", None, help="evaluation size; unset: the cfg's")
    batch_size: int = param("int", 8, low=1, help="evaluation images per forward pass")
    max_images: int | None = param("int", None, low=1, help="evaluate at most this many images; unset: all")

    kind: ClassVar[str] = "prune"

    def _validate(self, f: Fields) -> None:
        if self.method != "layer" and self.global_percent is None:
            raise SlimYoloError(f"{f.source}: 'global_percent' is required for {self.method} pruning")
        if self.method != "channel" and self.shortcuts < 1:
            raise SlimYoloError(f"{f.source}: 'shortcuts' (residual units to remove) must be at least 1 for "
                                f"{self.method} pruning")


@dataclass(frozen=True)
class SweepSpec(SpecBase):
    """The best-pruning-point sweep: coarse-then-fine search of channel (and layer) pruning."""

    weights: FileRef = param("file", help="the sparse model's weights (.weights, or a .pt holding its cfg)")
    data: DataRef = param("data", help="the data set whose validation split scores each point")
    out: str = param("out", help="the store prefix sweep.json, .csv, .png and best/ are published under")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    percents: tuple[float, float, float] = param("frange", (0.5, 0.95, 0.05),
                                                 help="global percents to try: low, high, coarse step")
    shortcuts: tuple[int, int, int] | None = param("irange", None, help="residual units to try as well: low, high, "
                                                   "coarse step; unset: channels only")
    max_map_drop: float = param("float", 0.01, low=0, high=1,
                                help="the best point keeps mAP@0.5 within this drop of the unpruned model's")
    fine_percent: float = param("float", 0.01, low=0, high=1, low_open=True,
                                help="the step of the fine search before the collapse")
    layer_keep: float = param("float", 0.01, low=0, high=1,
                              help="every layer keeps at least this fraction of its channels")
    round_to: int = param("int", 1, low=1, help="keep a multiple of this many channels per layer (1: no rounding)")
    img_size: int | None = param("img_size", None, help="evaluation size; unset: the cfg's")
    batch_size: int = param("int", 8, low=1, help="evaluation images per forward pass")
    max_images: int | None = param("int", None, low=1, help="evaluate at most this many images; unset: all")
    latency_runs: int = param("int", 0, low=0, help="timed PyTorch CPU forward passes per point (0: not measured)")
    objective: str = param("choice", "bflops", options=vocab.SWEEP_OBJECTIVES,
                           help="the best point: the fewest BFLOPs, or the most OpenVINO FPS measured here")
    precision: str = param("choice", "f32", options=vocab.FPS_PRECISIONS,
                           help="inference precision of the FPS measurement")
    fps_seconds: float = param("float", 1.0, low=0, high=60, low_open=True, help="length of one FPS measurement")
    fps_repeats: int = param("int", 3, low=1, help="FPS measurements per point (the best counts)")

    kind: ClassVar[str] = "sweep"

    def _validate(self, f: Fields) -> None:
        lo, hi, step = self.percents
        if not (0 < lo <= hi < 1 and step > 0):
            raise SlimYoloError(f"{f.where('percents')}: need 0 < low <= high < 1 and a positive step, got "
                                f"{list(self.percents)}")
        if self.shortcuts is not None:
            s_lo, s_hi, s_step = self.shortcuts
            if not (0 <= s_lo <= s_hi and s_step >= 1):
                raise SlimYoloError(f"{f.where('shortcuts')}: need 0 <= low <= high and a step of at least 1, got "
                                    f"{list(self.shortcuts)}")


@dataclass(frozen=True)
class ConvertSpec(SpecBase):
    """Conversion to an OpenVINO IR published as ``<model_repository>/<name>/<version>/`` in the store.

    With ``evaluate`` the written IR is also evaluated on ``calib_data``'s validation split
    (P, R, mAP@0.5 of what OpenVINO runs, INT8 included), and with ``bench_seconds`` its
    OpenVINO throughput is measured on this machine at ``bench_precision`` (f32 by default, so
    that figures from CPUs with and without bf16 compare; ``default``: the device's choice).
    """

    weights: FileRef = param("file", help="the model's weights (.weights, or a .pt holding its cfg)")
    name: str = param("text", help="the model's name in the repository: one path segment")
    cfg: FileRef | None = param("file", None, help="the model's cfg; unset: the cfg inside weights (a .pt)")
    version: str | None = param("text", None, help="the version to publish; unset: one more than the newest")
    model_repository: str | None = param("key", None, help="the store prefix of the model repository; unset: "
                                         "$SLIMYOLO_MODEL_REPOSITORY, else models")
    via: str = param("choice", "tf", options=vocab.CONVERSION_PATHS,
                     help="tf: cfg, Keras/TensorFlow, IR; torch: the PyTorch module to IR")
    precision: str = param("choice", "fp32", options=vocab.IR_PRECISIONS, help="the IR's precision")
    calib_data: DataRef | None = param("data", None, help="calibration (INT8), parity images, class names and "
                                       "evaluation; unset: a small synthetic set")
    calib_images: int = param("int", 300, low=1, help="INT8 calibration images")
    img_size: int | None = param("img_size", None, help="the IR's input size; unset: the cfg's")
    names: tuple[str, ...] = param("strings", (), help="class names; unset: calib_data's, else class<i>")
    accuracy_control: bool = param("bool", False, help="INT8: keep mAP@0.5 within max_drop of FP32")
    max_drop: float = param("float", 0.01, low=0, high=1, low_open=True,
                            help="the largest mAP@0.5 drop accuracy control accepts")
    ppp: str | None = param("choice", None, options=vocab.PPP_MODES, help="u8 NHWC BGR input, letterboxed "
                            "inside the IR (resize) or by the host (fixed); unset: f32 NCHW RGB")
    onnx: bool = param("bool", False, help="also write model.onnx")
    parity_images: int = param("int", 2, low=1, help="images of the parity checks against PyTorch")
    tolerance: float = param("float", 1e-3, low=0, low_open=True,
                             help="the largest |FP32 IR - PyTorch| on any head, as slimyolo convert --tolerance")
    evaluate: bool = param("bool", False, help="evaluate the IR on calib_data's validation split")
    bench_seconds: float = param("float", 0.0, low=0, help="measure the IR's OpenVINO FPS this long (0: not)")
    bench_precision: str = param("choice", "f32", options=vocab.BENCH_PRECISIONS,
                                 help="inference precision of that measurement; default: the device's own choice")

    kind: ClassVar[str] = "convert"

    def _validate(self, f: Fields) -> None:
        if not self.name:
            raise SlimYoloError(f"{f.source}: 'name' (the model's name in the repository) is required")
        out_key(self.name, f.where("name"))
        if "/" in self.name:
            raise SlimYoloError(f"{f.where('name')}: a model name is one path segment, got {self.name!r}")
        if self.version is not None and (not self.version.isdigit() or int(self.version) < 1):
            raise SlimYoloError(f"{f.where('version')} must be a positive integer, got {self.version!r}")
        if self.precision == "int8" and self.calib_data is None:
            raise SlimYoloError(f"{f.source}: INT8 quantization needs 'calib_data' (a data set to calibrate on)")
        if self.accuracy_control and self.precision != "int8":
            raise SlimYoloError(f"{f.source}: 'accuracy_control' applies to precision int8")
        if self.evaluate and (self.calib_data is None or self.ppp is not None):
            raise SlimYoloError(f"{f.source}: 'evaluate' needs 'calib_data' (labelled images) and an IR with the "
                                "plain f32 input (no 'ppp')")


SPECS: dict[str, type] = {s.kind: s for s in (TrainSpec, EvalSpec, PruneSpec, SweepSpec, ConvertSpec)}
Spec = TrainSpec | EvalSpec | PruneSpec | SweepSpec | ConvertSpec


def parse_spec(kind: str, doc: Any, source: str | None = None) -> Spec:
    """The spec of stage ``kind`` ("train", "eval", "prune", "sweep", "convert") from YAML/JSON data.

    The one entry of every path (YAML file, gRPC request, pipeline), so all three accept the
    same values and refuse the same ones with the same message.
    """
    if kind not in SPECS:
        raise SlimYoloError(f"unknown stage {kind!r} (stages: {', '.join(SPECS)})")
    return SPECS[kind].from_dict(doc if doc is not None else {}, source or f"{kind} spec")
