"""Progress events: what a long core function reports while it runs, one frozen dataclass per kind.

Every long function of the library (training, evaluation, the pruning sweep, conversion, the
stage runners, data set synthesis, detection) takes a ``progress: Progress | None`` and calls it
with one of the events below; raising :class:`~slimyolo.errors.Cancelled` from the callback stops
the work. Consumers (the consoles, the trainer's Prometheus gauges, the pipeline) read fields.

A job's events reach WatchJob clients as a ``google.protobuf.Struct``: :func:`event_to_dict` gives
the JSON document (its ``type`` names the kind), :func:`event_from_dict` rebuilds the event exactly,
so a remote run prints the same lines as an in-process one. A Struct keeps neither the order of an
object's keys nor whether a number was an int or a float, so a mapping field (losses, a step's
details) travels as a list of ``[key, value]`` pairs, a field declared ``float`` comes back as a
float, and a StageStep names its float details in ``float_details``.

This module imports nothing heavy: clients without PyTorch read the events too.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from slimyolo.errors import SlimYoloError

Scalar = str | int | float | bool | None  # a value of a StageStep's details


@dataclass(frozen=True)
class TrainStep:
    """One optimizer step of training (rank 0 reports)."""

    type: ClassVar[str] = "train_step"
    renamed: ClassVar[Mapping[str, str]] = {"stage": "phase"}  # an event of a server before the phase was named so
    phase: str  # the training phase: train (base training), sparsity, finetune
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    losses: Mapping[str, float]  # the epoch's mean so far, by component (box, obj, cls, distill, loss)
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class ClassMetrics:
    """One class of an evaluation; the figures are None for a class without ground truth."""

    class_id: int
    name: str
    targets: int
    precision: float | None = None
    recall: float | None = None
    ap50: float | None = None
    f1: float | None = None


@dataclass(frozen=True)
class TrainEpoch:
    """One finished epoch: its row of ``results.csv``; the evaluation fields are None when it was not evaluated."""

    type: ClassVar[str] = "train_epoch"
    renamed: ClassVar[Mapping[str, str]] = {"stage": "phase"}
    phase: str  # as TrainStep's
    epoch: int
    epochs: int
    lr: float
    box: float
    obj: float
    cls: float
    distill: float
    loss: float
    gamma_below_001: float  # the fraction of prunable |γ| below 0.01 (results.csv's gamma_below_0.01)
    s: float  # the sparsity rate of the epoch
    images_per_s: float
    time_s: float
    bad_images: int = 0
    bad_label_lines: int = 0
    precision: float | None = None
    recall: float | None = None
    map50: float | None = None
    f1: float | None = None
    per_class: tuple[ClassMetrics, ...] = ()

    @property
    def evaluated(self) -> bool:
        return self.map50 is not None


@dataclass(frozen=True)
class SweepRow:
    """One point of a pruning sweep (a row of its table, ``sweep.json`` and ``sweep.csv``).

    A point the budget search (objective ``accuracy``) timed but did not evaluate (it runs below the budget, or
    a weaker point's mAP@0.5 already fell) has no precision, recall and mAP@0.5 (None, ``within`` false): it is
    not :attr:`evaluated`.
    """

    # Keys of rows written before a field was renamed (a sweep checkpoint's points.json, a stored sweep.json),
    # read as the field's name now: ``stage`` was the pruning method.
    renamed: ClassVar[Mapping[str, str]] = {"stage": "method"}
    method: str  # "baseline", "channel", "layer" or "both"
    global_percent: float | None  # asked: the fraction of prunable channels to remove
    shortcuts: int
    precision: float | None
    recall: float | None
    map50: float | None
    params: int
    weights_bytes: int
    bflops: float
    latency_ms: float | None
    within: bool  # mAP within the allowed drop of the baseline
    removed_fraction: float | None = None  # removed: the fraction of prunable channels that went
    activation_mb: float = 0.0
    fps: float | None = None  # measured OpenVINO frames per second (objectives fps and accuracy)
    measured_on: str | None = None  # where fps was measured: this machine or an inference service, and its CPU

    @property
    def evaluated(self) -> bool:
        return self.map50 is not None


@dataclass(frozen=True)
class SweepPoint:
    """The sweep evaluated one more point."""

    type: ClassVar[str] = "sweep_row"
    row: SweepRow


@dataclass(frozen=True)
class SweepBest:
    """The sweep's choice, at its end: None when no pruned point stays within the allowed mAP drop."""

    type: ClassVar[str] = "sweep_best"
    row: SweepRow | None


@dataclass(frozen=True)
class StageStep:
    """A step of a stage (``convert``: load, keras, ir, parity, quantize, save, ...; ``prune``: evaluate, the method),
    with its details in the order they are printed."""

    type: ClassVar[str] = "stage_step"
    stage: str
    step: str
    details: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Count:
    """``done`` of ``total`` items of a stage: images evaluated (``eval``), images written (``synth``)."""

    type: ClassVar[str] = "count"
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class FrameRate:
    """Frames detected so far and the frames per second since the start (``slimyolo infer detect``)."""

    type: ClassVar[str] = "frame_rate"
    frames: int
    fps: float


Event = TrainStep | TrainEpoch | SweepPoint | SweepBest | StageStep | Count | FrameRate
Progress = Callable[[Event], None]

EVENT_TYPES: dict[str, type] = {cls.type: cls for cls in get_args(Event)}
_FLOAT_DETAILS = "float_details"  # which details of a StageStep are floats (a Struct turns 2.0 into 2)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as JSON values with its ``type``; a TypeError for anything but an event of plain values."""
    if type(event) not in EVENT_TYPES.values():
        raise TypeError(f"a progress event is one of {', '.join(c.__name__ for c in EVENT_TYPES.values())}, "
                        f"got {type(event).__name__}")
    doc = {"type": event.type, **_encode(event, event.type)}
    if isinstance(event, StageStep):
        floats = [k for k, v in event.details.items() if isinstance(v, float)]
        if floats:
            doc[_FLOAT_DETAILS] = floats
    return doc


def event_from_dict(doc: Mapping[str, Any]) -> Event:
    """The event :func:`event_to_dict` gave ``doc`` for; a SlimYoloError naming an unknown type or a bad field."""
    if not isinstance(doc, Mapping):
        raise SlimYoloError(f"progress event: expected an object, got {type(doc).__name__}")
    kind = doc.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SlimYoloError(f"progress event: unknown type {kind!r} (known: {', '.join(EVENT_TYPES)})")
    body = {k: v for k, v in doc.items() if k not in ("type", _FLOAT_DETAILS)}
    if _FLOAT_DETAILS in doc and cls is not StageStep:
        raise SlimYoloError(f"{kind}: unknown field {_FLOAT_DETAILS!r}")
    event = _decode(body, cls, kind)
    if isinstance(event, StageStep):
        floats = _decode(doc.get(_FLOAT_DETAILS, []), tuple[str, ...], f"{kind}.{_FLOAT_DETAILS}")
        details = dict(event.details)
        for key in floats:
            if not isinstance(details.get(key), int | float) or isinstance(details[key], bool):
                raise SlimYoloError(f"{kind}.details.{key}: listed in {_FLOAT_DETAILS} but not a number")
            details[key] = float(details[key])
        event = StageStep(event.stage, event.step, details)
    return event


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name), f"{where}.{f.name}") for f in fields(value)}
    if isinstance(value, Mapping):  # pairs: a Struct keeps no order of keys
        return [[str(k), _encode(v, f"{where}.{k}")] for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy/torch scalar
        return _encode(value.item(), where)
    raise TypeError(f"{where}: {value!r} ({type(value).__name__}) is not a JSON value")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(value: Any, tp: Any, where: str) -> Any:
    """``value`` (JSON, or a Struct as a dict) as the type ``tp`` declares."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Scalar:
        if value is None or isinstance(value, bool | int | float | str):
            return value
    elif origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(value, inner, where)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is Mapping:  # [key, value] pairs, in order
        if isinstance(value, list | tuple) and all(isinstance(p, list | tuple) and len(p) == 2
                                                   and isinstance(p[0], str) for p in value):
            return {k: _decode(v, args[1], f"{where}.{k}") for k, v in value}
    elif is_dataclass(tp):
        if isinstance(value, Mapping):
            return _decode_fields(tp, value, where)
    else:  # a type this module does not declare
        raise TypeError(f"{where}: cannot read a {tp}")
    expected = "[key, value] pairs" if origin is Mapping else "a list" if origin is tuple else \
        "an object" if is_dataclass(tp) else "a JSON value" if tp is Scalar else tp.__name__
    raise SlimYoloError(f"{where}: expected {expected}, got {value!r}")


def sweep_row_method(row: Mapping[str, Any]) -> str:
    """The pruning method of a sweep row as JSON (``sweep.json``, a sweep stage's metrics), also of one
    written before ``stage`` was renamed ``method`` (a result stored by an earlier version)."""
    return _renamed(SweepRow, row)["method"]


def _renamed(cls: type, doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """``doc`` with the keys ``cls`` renamed since it was written under their names now."""
    old = getattr(cls, "renamed", {})
    return {old.get(k, k): v for k, v in doc.items()} if any(k in old for k in doc) else doc


def _decode_fields(cls: type, doc: Mapping[str, Any], where: str) -> Any:
    doc = _renamed(cls, doc)
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise SlimYoloError(f"{where}: unknown field {unknown[0]!r}")
    values = {}
    for name, f in known.items():
        if name in doc:
            values[name] = _decode(doc[name], hints[name], f"{where}.{name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SlimYoloError(f"{where}: missing field {name!r}")
    return cls(**values)
