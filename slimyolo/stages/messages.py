"""Stage specs ⇄ the Start... requests of the trainer, pruner and converter services.

``spec_from_request`` is all a servicer does with a request: it turns the message into the plain
data of a spec and builds the spec with the same checks as a YAML spec, so a bad field is
INVALID_ARGUMENT naming the field. ``spec_to_request`` is its inverse, for ``slimyolo pipeline run
--remote``: store keys are resolved to ``ArtifactRef``s (a remote service only takes those), and
settings without a typed field travel in the request's ``config`` Struct.

Conventions of the protos: a zero number or an unset message means "the default"; ``name`` is
the run's name, stored under ``runs/<name>`` (a fresh ``runs/<kind>-<id>`` when empty).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from slimyolo.errors import SlimYoloError
from slimyolo.prune.sweep import percent_grid
from slimyolo.rpc.gen.v1 import common_pb2, converter_pb2, pruner_pb2, trainer_pb2
from slimyolo.rpc.messages import artifact_from_proto, artifact_to_proto, dict_to_struct, struct_to_dict
from slimyolo.stages.specs import (
    ConvertSpec,
    DataRef,
    EvalSpec,
    FileRef,
    PruneSpec,
    Spec,
    SweepSpec,
    TrainSpec,
    out_key,
    parse_spec,
)
from slimyolo.store import Artifact

RUNS = "runs"
Resolve = Callable[[FileRef, str], Artifact]

_METHODS = {pruner_pb2.PRUNE_METHOD_UNSPECIFIED: "channel", pruner_pb2.PRUNE_METHOD_CHANNEL: "channel",
            pruner_pb2.PRUNE_METHOD_LAYER: "layer", pruner_pb2.PRUNE_METHOD_CHANNEL_AND_LAYER: "both"}
_METHOD_OF = {"channel": pruner_pb2.PRUNE_METHOD_CHANNEL, "layer": pruner_pb2.PRUNE_METHOD_LAYER,
              "both": pruner_pb2.PRUNE_METHOD_CHANNEL_AND_LAYER}
_PRECISIONS = {common_pb2.PRECISION_UNSPECIFIED: "fp32", common_pb2.PRECISION_FP32: "fp32",
               common_pb2.PRECISION_FP16: "fp16", common_pb2.PRECISION_INT8: "int8"}
_PRECISION_OF = {"fp32": common_pb2.PRECISION_FP32, "fp16": common_pb2.PRECISION_FP16,
                 "int8": common_pb2.PRECISION_INT8}
_VIAS = {converter_pb2.CONVERSION_PATH_UNSPECIFIED: "tf", converter_pb2.CONVERSION_PATH_TF: "tf",
         converter_pb2.CONVERSION_PATH_TORCH: "torch"}
_VIA_OF = {"tf": converter_pb2.CONVERSION_PATH_TF, "torch": converter_pb2.CONVERSION_PATH_TORCH}
# The training setting ``prune`` of each sparsity mode (0: every BN layer, 1: all but those feeding a shortcut).
_SPARSITY = {trainer_pb2.SPARSITY_MODE_UNSPECIFIED: 1, trainer_pb2.SPARSITY_MODE_EXCEPT_SHORTCUT: 1,
             trainer_pb2.SPARSITY_MODE_ALL: 0}


# -- request → spec ----------------------------------------------------------------------------------


def _enum(values: dict[int, Any], number: int) -> Any:
    """The spec's value of a proto enum number; an unknown number goes on as it is, so the spec refuses it
    naming the field, with the message the same value gets in a YAML spec."""
    return values.get(number, number)


def _ref(msg: Message, field: str) -> Artifact | None:
    return artifact_from_proto(getattr(msg, field), field) if msg.HasField(field) else None


def _data(msg: Message, field: str) -> DataRef | None:
    if not msg.HasField(field):
        return None
    ref = getattr(msg, field)
    return DataRef(archive=artifact_from_proto(ref.archive, f"{field}.archive"), data_file=ref.data_file)


def _square(msg: Message, field: str = "img_size") -> int | None:
    """A square input size from an ImageSize (unset or zero: the default)."""
    if not msg.HasField(field):
        return None
    size = getattr(msg, field)
    if size.width != size.height:
        raise SlimYoloError(f"{field}: this stage takes a square input size, got {size.width}x{size.height}")
    return size.width or None


def _out(request: Message, kind: str) -> str:
    """``runs/<name>`` (a fresh name when the request has none), checked as the output prefix it becomes."""
    if not request.name:
        return f"{RUNS}/{kind}-{uuid.uuid4().hex[:12]}"
    return out_key(f"{RUNS}/{request.name}", f"{type(request).__name__}: 'name'")


def _spec(kind: str, request: Message, config: dict[str, Any], typed: dict[str, Any]) -> Spec:
    """The spec from the request's config Struct with its typed fields on top (unset ones dropped)."""
    doc = {**config, **{k: v for k, v in typed.items() if v not in (None, 0, 0.0, "", ())}}
    return parse_spec(kind, doc, type(request).__name__)


def _config(request: Message) -> dict[str, Any]:
    return struct_to_dict(request.config) if request.HasField("config") else {}


def train_from_request(request: trainer_pb2.StartTrainingRequest) -> TrainSpec:
    config = _config(request)
    typed: dict[str, Any] = {"cfg": _ref(request, "cfg"), "weights": _ref(request, "weights"),
                             "data": _data(request, "data"), "out": _out(request, "train"),
                             "epochs": request.epochs, "batch_size": request.batch_size,
                             "img_size": _square(request), "warmup_epochs": request.warmup_epochs,
                             "lr0": request.learning_rate, "seed": request.seed}
    if request.HasField("sparsity") and request.sparsity.s:
        typed.update(sr=True, s=request.sparsity.s,
                     prune=_enum(_SPARSITY, request.sparsity.mode))
    if request.HasField("distillation"):
        d = request.distillation
        typed.update(teacher_cfg=_ref(d, "teacher_cfg"), teacher_weights=_ref(d, "teacher_weights"),
                     distill_weight=d.weight)
    if "prune" in typed:  # 0 (every BN layer) is a value here, not "unset"
        config["prune"] = typed.pop("prune")
    spec = _spec("train", request, config, typed)
    spec.check()
    return spec


def eval_from_request(request: trainer_pb2.StartEvaluationRequest) -> EvalSpec:
    return _spec("eval", request, {}, {
        "cfg": _ref(request, "cfg"), "weights": _ref(request, "weights"), "data": _data(request, "data"),
        "img_size": _square(request), "batch_size": request.batch_size, "conf_thres": request.conf_threshold,
        "iou_thres": request.nms_iou_threshold})


def prune_from_request(request: pruner_pb2.StartPruneRequest) -> PruneSpec:
    return _spec("prune", request, _config(request), {
        "cfg": _ref(request, "cfg"), "weights": _ref(request, "weights"), "method": _enum(_METHODS, request.method),
        "global_percent": request.channel.global_percent, "layer_keep": request.channel.layer_keep,
        "round_to": request.channel.round_to, "shortcuts": request.layer.shortcuts, "data": _data(request, "data"),
        "img_size": _square(request), "out": _out(request, "prune")})


def _grid(points: list[float] | list[int], field: str, integer: bool) -> list | None:
    """(low, high, step) of evenly spaced coarse points (the sweep refines between them)."""
    if not points:
        return None
    lo, hi = points[0], points[-1]
    step = (points[1] - points[0] if integer else round(points[1] - points[0], 6)) if len(points) > 1 else \
        (1 if integer else 0.05)
    expected = ([*range(lo, hi + 1, step)] if integer and step > 0 else
                percent_grid(lo, hi, step) if step > 0 else [])
    if integer and expected and expected[-1] != hi:
        expected.append(hi)
    if step <= 0 or len(expected) != len(points) or any(abs(a - b) > 1e-6 for a, b in zip(expected, points,
                                                                                           strict=False)):
        raise SlimYoloError(f"{field}: the coarse points must rise in equal steps (the last may be nearer), got "
                            f"{list(points)}")
    return [lo, hi, step]


def sweep_from_request(request: pruner_pb2.StartSweepRequest) -> SweepSpec:
    method = _enum(_METHODS, request.method)
    if method == "layer":
        raise SlimYoloError("method: the sweep searches channels, or channels and residual units "
                            "(PRUNE_METHOD_CHANNEL_AND_LAYER); a layer-only sweep is not offered")
    if method not in ("channel", "both"):
        raise SlimYoloError(f"{type(request).__name__}: 'method' must be one of channel, both, got {method!r}")
    shortcuts = _grid(list(request.shortcuts), "shortcuts", True)
    if (method == "both") != (shortcuts is not None):
        raise SlimYoloError("shortcuts: give the residual-unit points with PRUNE_METHOD_CHANNEL_AND_LAYER, "
                            "and only with it")
    return _spec("sweep", request, _config(request), {
        "cfg": _ref(request, "cfg"), "weights": _ref(request, "weights"), "data": _data(request, "data"),
        "percents": _grid(list(request.global_percents), "global_percents", False), "shortcuts": shortcuts,
        "layer_keep": request.layer_keep, "round_to": request.round_to, "max_map_drop": request.max_map_drop,
        "img_size": _square(request), "batch_size": request.batch_size, "out": _out(request, "sweep")})


def convert_from_request(request: converter_pb2.StartConversionRequest) -> ConvertSpec:
    return _spec("convert", request, _config(request), {
        "cfg": _ref(request, "cfg"), "weights": _ref(request, "weights"), "via": _enum(_VIAS, request.via),
        "precision": _enum(_PRECISIONS, request.precision), "calib_data": _data(request, "calibration"),
        "calib_images": request.calibration_images, "name": request.name, "version": request.version,
        "img_size": _square(request), "names": tuple(request.class_names),
        "model_repository": request.model_repository})


# -- spec → request ----------------------------------------------------------------------------------


def _size(size: int | None) -> common_pb2.ImageSize | None:
    return common_pb2.ImageSize(width=size, height=size) if size else None


def _ref_msg(ref: FileRef | None, field: str, resolve: Resolve) -> common_pb2.ArtifactRef | None:
    return None if ref is None else artifact_to_proto(resolve(ref, field))


def _data_msg(ref: DataRef | None, field: str, resolve: Resolve) -> common_pb2.DatasetRef | None:
    if ref is None:
        return None
    if ref.archive is None:
        raise SlimYoloError(f"{field}: a service takes a data set as an archive (DatasetRef), not the tree "
                            f"{ref.tree!r}")
    return common_pb2.DatasetRef(archive=artifact_to_proto(resolve(ref.archive, f"{field}.archive")),
                                 data_file=ref.data_file)


def _name(out: str) -> str:
    if not out.startswith(f"{RUNS}/"):
        raise SlimYoloError(f"out: a service stores its outputs under {RUNS}/<name>, got {out!r}")
    return out[len(RUNS) + 1:]


def _set(msg: Message, **fields: Any) -> Message:
    """Set the fields whose value is not None (messages are copied in)."""
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Message):
            getattr(msg, key).CopyFrom(value)
        elif isinstance(value, list | tuple):
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)
    return msg


def train_to_request(spec: TrainSpec, resolve: Resolve) -> trainer_pb2.StartTrainingRequest:
    options = dict(spec.options)
    typed = {key: options.pop(key) for key in ("epochs", "batch_size", "seed") if isinstance(options.get(key), int)}
    msg = trainer_pb2.StartTrainingRequest(name=_name(spec.out), **typed)
    if isinstance(options.get("img_size"), int):
        msg.img_size.CopyFrom(_size(options.pop("img_size")))
    if isinstance(options.get("lr0"), int | float):
        msg.learning_rate = options.pop("lr0")
    warmup = options.get("warmup_epochs")
    if isinstance(warmup, int | float) and float(warmup).is_integer() and warmup > 0:
        msg.warmup_epochs = int(options.pop("warmup_epochs"))
    if options.get("sr") is True and isinstance(options.get("s"), int | float) and options.get("prune", 0) in (0, 1):
        options.pop("sr")
        every_bn = options.pop("prune", 0) == 0
        mode = trainer_pb2.SPARSITY_MODE_ALL if every_bn else trainer_pb2.SPARSITY_MODE_EXCEPT_SHORTCUT
        msg.sparsity.CopyFrom(trainer_pb2.Sparsity(s=options.pop("s"), mode=mode))
    if spec.teacher_weights is not None:
        msg.distillation.CopyFrom(trainer_pb2.Distillation(
            teacher_weights=_ref_msg(spec.teacher_weights, "teacher_weights", resolve),
            teacher_cfg=_ref_msg(spec.teacher_cfg, "teacher_cfg", resolve),
            weight=options.pop("distill_weight", 0.0)))
    return _set(msg, cfg=_ref_msg(spec.cfg, "cfg", resolve), weights=_ref_msg(spec.weights, "weights", resolve),
                data=_data_msg(spec.data, "data", resolve), config=dict_to_struct(options) if options else None)


def eval_to_request(spec: EvalSpec, resolve: Resolve) -> trainer_pb2.StartEvaluationRequest:
    return _set(trainer_pb2.StartEvaluationRequest(batch_size=spec.batch_size, conf_threshold=spec.conf_thres,
                                                   nms_iou_threshold=spec.iou_thres),
                cfg=_ref_msg(spec.cfg, "cfg", resolve), weights=_ref_msg(spec.weights, "weights", resolve),
                data=_data_msg(spec.data, "data", resolve), img_size=_size(spec.img_size))


def prune_to_request(spec: PruneSpec, resolve: Resolve) -> pruner_pb2.StartPruneRequest:
    config = {"batch_size": spec.batch_size, **({"max_images": spec.max_images} if spec.max_images else {})}
    return _set(pruner_pb2.StartPruneRequest(method=_METHOD_OF[spec.method], name=_name(spec.out)),
                cfg=_ref_msg(spec.cfg, "cfg", resolve), weights=_ref_msg(spec.weights, "weights", resolve),
                channel=pruner_pb2.ChannelPruning(global_percent=spec.global_percent or 0.0,
                                                  layer_keep=spec.layer_keep, round_to=spec.round_to),
                layer=pruner_pb2.LayerPruning(shortcuts=spec.shortcuts), data=_data_msg(spec.data, "data", resolve),
                img_size=_size(spec.img_size), config=dict_to_struct(config))


def sweep_to_request(spec: SweepSpec, resolve: Resolve) -> pruner_pb2.StartSweepRequest:
    shortcuts = None
    if spec.shortcuts is not None:
        lo, hi, step = spec.shortcuts
        shortcuts = [*range(lo, hi + 1, step)]
        if shortcuts[-1] != hi:
            shortcuts.append(hi)
    config = {"fine_percent": spec.fine_percent, "latency_runs": spec.latency_runs, "objective": spec.objective,
              "precision": spec.precision, "fps_seconds": spec.fps_seconds, "fps_repeats": spec.fps_repeats,
              **({"max_images": spec.max_images} if spec.max_images else {})}
    return _set(pruner_pb2.StartSweepRequest(
        method=_METHOD_OF["both" if shortcuts else "channel"], layer_keep=spec.layer_keep, round_to=spec.round_to,
        max_map_drop=spec.max_map_drop, batch_size=spec.batch_size, name=_name(spec.out)),
        cfg=_ref_msg(spec.cfg, "cfg", resolve), weights=_ref_msg(spec.weights, "weights", resolve),
        data=_data_msg(spec.data, "data", resolve), global_percents=percent_grid(*spec.percents),
        shortcuts=shortcuts, img_size=_size(spec.img_size), config=dict_to_struct(config))


def convert_to_request(spec: ConvertSpec, resolve: Resolve) -> converter_pb2.StartConversionRequest:
    config = {"accuracy_control": spec.accuracy_control, "max_drop": spec.max_drop, "onnx": spec.onnx,
              "parity_images": spec.parity_images, "tolerance": spec.tolerance, "evaluate": spec.evaluate,
              "bench_seconds": spec.bench_seconds, "bench_precision": spec.bench_precision,
              **({"ppp": spec.ppp} if spec.ppp else {})}
    return _set(converter_pb2.StartConversionRequest(
        via=_VIA_OF[spec.via], precision=_PRECISION_OF[spec.precision], calibration_images=spec.calib_images,
        name=spec.name, version=spec.version or "", model_repository=spec.model_repository or ""),
        cfg=_ref_msg(spec.cfg, "cfg", resolve), weights=_ref_msg(spec.weights, "weights", resolve),
        calibration=_data_msg(spec.calib_data, "calib_data", resolve), img_size=_size(spec.img_size),
        class_names=list(spec.names), config=dict_to_struct(config))


TO_REQUEST: dict[str, Callable[[Any, Resolve], Message]] = {
    "train": train_to_request, "eval": eval_to_request, "prune": prune_to_request, "sweep": sweep_to_request,
    "convert": convert_to_request}
FROM_REQUEST: dict[str, Callable[[Any], Spec]] = {
    "train": train_from_request, "eval": eval_from_request, "prune": prune_from_request,
    "sweep": sweep_from_request, "convert": convert_from_request}
