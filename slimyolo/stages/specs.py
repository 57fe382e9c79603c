"""The specs of the stages: what each stage reads from the store, writes to it, and its parameters.

A spec is a plain frozen dataclass, the one description of a stage run shared by its three
callers: the servicers (built from a request), ``slimyolo stage NAME --spec FILE.yaml`` (the
Kubernetes batch Jobs) and the pipeline. Inputs are references into the artifact store:

- a **file** (:data:`FileRef`) is an :class:`~slimyolo.store.Artifact` ``{uri, sha256,
  size_bytes}`` (what the services exchange), or the key of a file inside a complete tree of
  the store, such as ``runs/sparse/best.weights`` (what people write in a YAML spec); either way
  the download is verified against the digest (the tree's ``SHA256SUMS`` gives it for keys);
- a **data set** (:class:`DataRef`) is a tree in the store holding a darknet-layout data set,
  or a tar archive of one (the proto's ``DatasetRef``), with the ``.data`` file inside.

Outputs go to a store prefix (``out``), uploaded as one tree when the stage is done. Specs are
checked when they are built, so a bad field is reported at once, naming the field, before a
job is queued; the checks that need the heavy libraries run in :meth:`TrainSpec.check` and the
runners.

The YAML form of each spec is its fields, flat; a training spec also takes every key of the
training configuration (``slimyolo train --config``), for example::

    # slimyolo stage train --spec train.yaml
    cfg: inputs/yolov4-tiny-2c.cfg       # a file of a tree in the store, or {uri, sha256, size_bytes}
    data: datasets/synth                 # a data set tree, or {archive: FILE, data_file: synth.data}
    out: runs/sparse                     # the store prefix of the outputs (must not exist yet)
    weights: runs/base/best.weights
    epochs: 30
    sr: true
    s: 0.001
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.store import MAX_KEY_BYTES, Artifact, validate_key

FileRef = Artifact | str
"""A stored file: an Artifact, or the key of a file inside a complete tree of the store."""

PRUNE_METHODS = ("channel", "layer", "both")
VIAS = ("tf", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
PPP_MODES = ("resize", "fixed")
# Inference precision hints of a benchmark (OpenVINO's INFERENCE_PRECISION_HINT), or the device's default.
BENCH_PRECISIONS = ("f32", "bf16", "f16", "default")
# Keys of a training spec that are store references; every other key is a training setting.
TRAIN_REFS = ("data", "cfg", "weights", "teacher_cfg", "teacher_weights", "out")
MAX_SEGMENT_BYTES = 255  # a file name, on the local store's file systems and on S3 servers that keep files
MAX_OUT_BYTES = MAX_KEY_BYTES - 256  # the rest is room for the paths inside the tree published there


@dataclass(frozen=True)
class DataRef:
    """A darknet-layout data set in the store: a tree, or a tar archive (gzip allowed) of one.

    ``data_file`` is the ``.data`` file's path inside; empty: the only ``.data`` file at the root.
    """

    tree: str | None = None
    archive: FileRef | None = None
    data_file: str = ""


def file_ref(value: Any, where: str) -> FileRef:
    """A FileRef from YAML/JSON: a store key, or a mapping with uri, sha256 and size_bytes."""
    if isinstance(value, str):
        return validate_key(value, where)
    if isinstance(value, Artifact):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"uri", "sha256", "size_bytes"})
        if unknown:
            raise SlimYoloError(f"{where}: unknown key {unknown[0]!r} (an artifact has uri, sha256, size_bytes)")
        try:
            uri, sha, size = value["uri"], value["sha256"], value["size_bytes"]
        except KeyError as exc:
            raise SlimYoloError(f"{where}: an artifact needs uri, sha256 and size_bytes ({exc.args[0]} is "
                                "missing)") from None
        if not isinstance(uri, str) or not isinstance(sha, str) or isinstance(size, bool) or not isinstance(size, int):
            raise SlimYoloError(f"{where}: uri and sha256 are strings, size_bytes an integer")
        return Artifact(uri, sha, size)
    raise SlimYoloError(f"{where}: expected a store key or {{uri, sha256, size_bytes}}, got {value!r}")


def out_key(value: Any, where: str) -> str:
    """A store prefix that a stage publishes a tree under: a key with room for every key of the tree.

    Checked when the spec is built, so a name too long for the store fails before the work,
    not at the upload after it.
    """
    key = validate_key(str(value), where)
    size = len(key.encode())
    if size > MAX_OUT_BYTES:
        raise SlimYoloError(f"{where}: {size} bytes is too long; an output prefix has at most {MAX_OUT_BYTES} bytes "
                            f"(the store's keys have at most {MAX_KEY_BYTES}, and the tree's own paths need the rest)")
    longest = max(len(segment.encode()) for segment in key.split("/"))
    if longest > MAX_SEGMENT_BYTES:
        raise SlimYoloError(f"{where}: a segment of {longest} bytes is too long; a segment of a store key is a file "
                            f"name, at most {MAX_SEGMENT_BYTES} bytes")
    return key


def data_file_path(value: Any, where: str) -> str:
    """The ``.data`` file's path inside a data set: relative, with no ``..``."""
    if not isinstance(value, str) or value.startswith("/") or ".." in value.split("/"):
        raise SlimYoloError(f"{where}: {value!r} must be a relative path inside the data set (no leading '/', "
                            "no '..')")
    return validate_key(value, where)


def data_ref(value: Any, where: str) -> DataRef:
    """A DataRef from YAML/JSON: a tree key, or a mapping with ``tree`` or ``archive`` (and ``data_file``)."""
    if isinstance(value, DataRef):  # from a request: checked as the same fields in YAML would be
        value = {"tree": value.tree, "archive": value.archive, "data_file": value.data_file}
    if isinstance(value, str):
        return DataRef(tree=validate_key(value, where))
    if not isinstance(value, Mapping):
        raise SlimYoloError(f"{where}: expected a data set tree key or {{tree|archive, data_file}}, got {value!r}")
    unknown = sorted(set(value) - {"tree", "archive", "data_file"})
    if unknown:
        raise SlimYoloError(f"{where}: unknown key {unknown[0]!r} (a data set has tree or archive, and data_file)")
    tree, archive = value.get("tree"), value.get("archive")
    if (tree is None) == (archive is None):
        raise SlimYoloError(f"{where}: give exactly one of tree (a store key) and archive (a tar file)")
    data_file = value.get("data_file") or ""
    if data_file:
        data_file_path(data_file, f"{where}.data_file")
    return DataRef(tree=validate_key(tree, f"{where}.tree") if tree is not None else None,
                   archive=file_ref(archive, f"{where}.archive") if archive is not None else None,
                   data_file=data_file)


def _is_number(value: Any, kind: type) -> bool:
    """A YAML/JSON number usable as ``kind`` (an integral float is an int; a bool is neither)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind is not int or float(value).is_integer()


class Fields:
    """Reads the fields of a spec (or a config) out of a mapping, each checked and named in errors."""

    def __init__(self, doc: Any, source: str) -> None:
        if not isinstance(doc, Mapping):
            raise SlimYoloError(f"{source}: expected a mapping of fields, got {type(doc).__name__}")
        self.doc, self.source, self.used = doc, source, set()

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        value = self.doc.get(name)
        if value is None and required:
            raise SlimYoloError(f"{self.source}: '{name}' is required")
        return value

    def where(self, name: str) -> str:
        return f"{self.source}: '{name}'"

    def raw(self, name: str) -> Any:
        """The value as it is (None when absent), for fields a caller checks itself."""
        return self._get(name, False)

    def file(self, name: str, required: bool = False) -> FileRef | None:
        value = self._get(name, required)
        return None if value is None else file_ref(value, self.where(name))

    def data(self, name: str, required: bool = False) -> DataRef | None:
        value = self._get(name, required)
        return None if value is None else data_ref(value, self.where(name))

    def key(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        return None if value is None else validate_key(str(value), self.where(name))

    def out(self, name: str) -> str:
        """A required output prefix (see :func:`out_key`)."""
        return out_key(self._get(name, True), self.where(name))

    def number(self, name: str, kind: type, default: Any, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> Any:
        value = self._get(name, False)
        if value is None:
            return default
        if not _is_number(value, kind):
            raise SlimYoloError(f"{self.where(name)} must be {'an integer' if kind is int else 'a number'}, "
                                f"got {value!r}")
        value = kind(value)
        if low is not None and (value <= low if low_open else value < low):
            raise SlimYoloError(f"{self.where(name)} must be {'above' if low_open else 'at least'} {low}, got {value}")
        if high is not None and value > high:
            raise SlimYoloError(f"{self.where(name)} must be at most {high}, got {value}")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SlimYoloError(f"{self.where(name)} must be true or false, got {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None) -> str | None:
        value = self._get(name, False)
        if value is None:
            return default
        if value not in options:
            raise SlimYoloError(f"{self.where(name)} must be one of {', '.join(options)}, got {value!r}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name, False)
        return default if value is None else str(value)

    def numbers(self, name: str, kind: type, count: int, default: Any) -> Any:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, list | tuple) or len(value) != count:
            raise SlimYoloError(f"{self.where(name)} must be a list of {count} numbers (low, high, step), "
                                f"got {value!r}")
        out = []
        for v in value:
            if not _is_number(v, kind):
                raise SlimYoloError(f"{self.where(name)}: {v!r} is not {'an integer' if kind is int else 'a number'}")
            out.append(kind(v))
        return tuple(out)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._get(name, False)
        if value is None:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise SlimYoloError(f"{self.where(name)} must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def rest(self) -> dict[str, Any]:
        """The keys not read so far."""
        return {k: v for k, v in self.doc.items() if k not in self.used}

    def done(self) -> None:
        """No key may be left unread: a misspelt key is an error, not a silently ignored setting."""
        unknown = sorted(self.rest())
        if unknown:
            raise SlimYoloError(f"{self.source}: unknown field '{unknown[0]}' (known: {', '.join(sorted(self.used))})")


def _img_size(f: Fields) -> int | None:
    size = f.number("img_size", int, None, 32)
    if size is not None and size % 32:
        raise SlimYoloError(f"{f.where('img_size')} must be a multiple of 32, got {size}")
    return size


@dataclass(frozen=True)
class TrainSpec:
    """Base training, sparsity training or fine-tuning (``options`` says which, as in TrainConfig)."""

    data: DataRef
    out: str
    cfg: FileRef | None = None  # None: the cfg inside ``weights`` (a .pt checkpoint)
    weights: FileRef | None = None  # None: trained from scratch
    teacher_cfg: FileRef | None = None
    teacher_weights: FileRef | None = None  # distillation from this teacher while fine-tuning
    options: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig settings (epochs, sr, s, ...)

    kind = "train"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "train spec") -> TrainSpec:
        f = Fields(doc, source)
        spec = cls(data=f.data("data", True), out=f.out("out"), cfg=f.file("cfg"), weights=f.file("weights"),
                   teacher_cfg=f.file("teacher_cfg"), teacher_weights=f.file("teacher_weights"), options=f.rest())
        if spec.cfg is None and spec.weights is None:
            raise SlimYoloError(f"{source}: 'cfg' is required unless 'weights' is a .pt checkpoint holding its cfg")
        if spec.teacher_cfg is not None and spec.teacher_weights is None:
            raise SlimYoloError(f"{source}: 'teacher_cfg' needs 'teacher_weights'")
        return spec

    def check(self, source: str = "train spec") -> None:
        """Check the training settings now (they are TrainConfig's: unknown keys, types, ranges)."""
        from slimyolo.train.config import TrainConfig

        doc = {**self.options, "data": "data", "cfg": "model.cfg", "out": "run"}
        TrainConfig.from_dict(doc, source).resolved(source)

    def to_dict(self) -> dict[str, Any]:
        doc = _plain({k: getattr(self, k) for k in TRAIN_REFS})
        return {**{k: v for k, v in doc.items() if v is not None}, **dict(self.options)}


@dataclass(frozen=True)
class EvalSpec:
    """P, R, mAP@0.5 and F1 of a model on a data set's validation split, with its size figures."""

    weights: FileRef
    data: DataRef
    cfg: FileRef | None = None
    img_size: int | None = None  # None: the cfg's
    batch_size: int = 8
    conf_thres: float = 0.001
    iou_thres: float = 0.6

    kind = "eval"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "eval spec") -> EvalSpec:
        f = Fields(doc, source)
        spec = cls(weights=f.file("weights", True), data=f.data("data", True), cfg=f.file("cfg"), img_size=_img_size(f),
                   batch_size=f.number("batch_size", int, 8, 1), conf_thres=f.number("conf_thres", float, 0.001, 0, 1),
                   iou_thres=f.number("iou_thres", float, 0.6, 0, 1))
        f.done()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class PruneSpec:
    """Channel pruning, layer pruning or both, at one point; optionally mAP before and after."""

    weights: FileRef
    out: str
    cfg: FileRef | None = None
    method: str = "channel"
    global_percent: float | None = None  # channel and both
    shortcuts: int = 0  # layer and both
    layer_keep: float = 0.01
    round_to: int = 1
    data: DataRef | None = None  # evaluate mAP@0.5 before and after on its validation split
    img_size: int | None = None
    batch_size: int = 8
    max_images: int | None = None

    kind = "prune"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "prune spec") -> PruneSpec:
        f = Fields(doc, source)
        spec = cls(weights=f.file("weights", True), out=f.out("out"), cfg=f.file("cfg"),
                   method=f.choice("method", PRUNE_METHODS, "channel"),
                   global_percent=f.number("global_percent", float, None, 0, 1, low_open=True),
                   shortcuts=f.number("shortcuts", int, 0, 0), layer_keep=f.number("layer_keep", float, 0.01, 0, 1),
                   round_to=f.number("round_to", int, 1, 1), data=f.data("data"), img_size=_img_size(f),
                   batch_size=f.number("batch_size", int, 8, 1), max_images=f.number("max_images", int, None, 1))
        f.done()
        if spec.method != "layer" and spec.global_percent is None:
            raise SlimYoloError(f"{source}: 'global_percent' is required for {spec.method} pruning")
        if spec.global_percent is not None and spec.global_percent >= 1:
            raise SlimYoloError(f"{source}: 'global_percent' must be below 1, got {spec.global_percent}")
        if spec.method != "channel" and spec.shortcuts < 1:
            raise SlimYoloError(f"{source}: 'shortcuts' (residual units to remove) must be at least 1 for "
                                f"{spec.method} pruning")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class SweepSpec:
    """The best-pruning-point sweep: coarse-then-fine search of channel (and layer) pruning."""

    weights: FileRef
    data: DataRef
    out: str
    cfg: FileRef | None = None
    percents: tuple[float, float, float] = (0.5, 0.95, 0.05)  # low, high, coarse step
    shortcuts: tuple[int, int, int] | None = None  # low, high, coarse step; None: channels only
    max_map_drop: float = 0.01
    fine_percent: float = 0.01
    layer_keep: float = 0.01
    round_to: int = 1
    img_size: int | None = None
    batch_size: int = 8
    max_images: int | None = None
    latency_runs: int = 0  # PyTorch timing per point (0: not measured)
    objective: str = "bflops"  # the best point: fewest BFLOPs, or most measured OpenVINO FPS ("fps")
    precision: str = "f32"  # of the FPS measurement: f32, bf16 or int8
    fps_seconds: float = 1.0  # one FPS measurement
    fps_repeats: int = 3  # FPS measurements per point (the best counts)

    kind = "sweep"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "sweep spec") -> SweepSpec:
        f = Fields(doc, source)
        spec = cls(weights=f.file("weights", True), data=f.data("data", True), out=f.out("out"),
                   cfg=f.file("cfg"), percents=f.numbers("percents", float, 3, (0.5, 0.95, 0.05)),
                   shortcuts=f.numbers("shortcuts", int, 3, None),
                   max_map_drop=f.number("max_map_drop", float, 0.01, 0, 1),
                   fine_percent=f.number("fine_percent", float, 0.01, 0, 1, low_open=True),
                   layer_keep=f.number("layer_keep", float, 0.01, 0, 1), round_to=f.number("round_to", int, 1, 1),
                   img_size=_img_size(f), batch_size=f.number("batch_size", int, 8, 1),
                   max_images=f.number("max_images", int, None, 1), latency_runs=f.number("latency_runs", int, 0, 0),
                   objective=f.choice("objective", ("bflops", "fps"), "bflops"),
                   precision=f.choice("precision", ("f32", "bf16", "int8"), "f32"),
                   fps_seconds=f.number("fps_seconds", float, 1.0, 0, 60, low_open=True),
                   fps_repeats=f.number("fps_repeats", int, 3, 1))
        f.done()
        lo, hi, step = spec.percents
        if not (0 < lo <= hi < 1 and step > 0):
            raise SlimYoloError(f"{f.where('percents')}: need 0 < low <= high < 1 and a positive step, got "
                                f"{list(spec.percents)}")
        if spec.shortcuts is not None:
            s_lo, s_hi, s_step = spec.shortcuts
            if not (0 <= s_lo <= s_hi and s_step >= 1):
                raise SlimYoloError(f"{f.where('shortcuts')}: need 0 <= low <= high and a step of at least 1, got "
                                    f"{list(spec.shortcuts)}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class ConvertSpec:
    """Conversion to an OpenVINO IR published as ``<model_repository>/<name>/<version>/`` in the store.

    With ``evaluate`` the written IR is also evaluated on ``calib_data``'s validation split
    (P, R, mAP@0.5 of what OpenVINO runs, INT8 included), and with ``bench_seconds`` its
    OpenVINO throughput is measured on this machine at ``bench_precision`` (f32 by default, so
    that figures from CPUs with and without bf16 compare; ``default``: the device's choice).
    """

    weights: FileRef
    name: str
    cfg: FileRef | None = None
    version: str | None = None  # None: one more than the newest in the repository
    model_repository: str | None = None  # None: $SLIMYOLO_MODEL_REPOSITORY, else "models"
    via: str = "tf"
    precision: str = "fp32"
    calib_data: DataRef | None = None  # calibration (INT8), parity images, class names, evaluation
    calib_images: int = 300
    img_size: int | None = None
    names: tuple[str, ...] = ()
    accuracy_control: bool = False
    max_drop: float = 0.01
    ppp: str | None = None
    onnx: bool = False
    parity_images: int = 2
    tolerance: float = 1e-3
    evaluate: bool = False
    bench_seconds: float = 0.0
    bench_precision: str = "f32"

    kind = "convert"

    @classmethod
    def from_dict(cls, doc: Any, source: str = "convert spec") -> ConvertSpec:
        f = Fields(doc, source)
        name = f.text("name")
        if not name:
            raise SlimYoloError(f"{source}: 'name' (the model's name in the repository) is required")
        version = f.text("version")
        spec = cls(weights=f.file("weights", True), name=out_key(name, f.where("name")), cfg=f.file("cfg"),
                   version=version, model_repository=f.key("model_repository"), via=f.choice("via", VIAS, "tf"),
                   precision=f.choice("precision", PRECISIONS, "fp32"), calib_data=f.data("calib_data"),
                   calib_images=f.number("calib_images", int, 300, 1), img_size=_img_size(f),
                   names=f.strings("names"), accuracy_control=f.flag("accuracy_control"),
                   max_drop=f.number("max_drop", float, 0.01, 0, 1, low_open=True),
                   ppp=f.choice("ppp", PPP_MODES, None),
                   onnx=f.flag("onnx"), parity_images=f.number("parity_images", int, 2, 1),
                   tolerance=f.number("tolerance", float, 1e-3, 0, low_open=True), evaluate=f.flag("evaluate"),
                   bench_seconds=f.number("bench_seconds", float, 0.0, 0),
                   bench_precision=f.choice("bench_precision", BENCH_PRECISIONS, "f32"))
        f.done()
        if "/" in spec.name:
            raise SlimYoloError(f"{f.where('name')}: a model name is one path segment, got {spec.name!r}")
        if version is not None and (not version.isdigit() or int(version) < 1):
            raise SlimYoloError(f"{f.where('version')} must be a positive integer, got {version!r}")
        if spec.precision == "int8" and spec.calib_data is None:
            raise SlimYoloError(f"{source}: INT8 quantization needs 'calib_data' (a data set to calibrate on)")
        if spec.accuracy_control and spec.precision != "int8":
            raise SlimYoloError(f"{source}: 'accuracy_control' applies to precision int8")
        if spec.evaluate and (spec.calib_data is None or spec.ppp is not None):
            raise SlimYoloError(f"{source}: 'evaluate' needs 'calib_data' (labelled images) and an IR with the "
                                "plain f32 input (no 'ppp')")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


SPECS: dict[str, type] = {s.kind: s for s in (TrainSpec, EvalSpec, PruneSpec, SweepSpec, ConvertSpec)}
Spec = TrainSpec | EvalSpec | PruneSpec | SweepSpec | ConvertSpec


def parse_spec(kind: str, doc: Any, source: str | None = None) -> Spec:
    """The spec of stage ``kind`` ("train", "eval", "prune", "sweep", "convert") from YAML/JSON data."""
    if kind not in SPECS:
        raise SlimYoloError(f"unknown stage {kind!r} (stages: {', '.join(SPECS)})")
    source = source or f"{kind} spec"
    _check_finite(doc, source)
    return SPECS[kind].from_dict(doc if doc is not None else {}, source)


def _check_finite(value: Any, source: str, where: str = "") -> None:
    """Refuse NaN and infinities anywhere in a spec (its settings included): no stage takes one, and a NaN
    passes every range check (every comparison with it is false), so it would fail deep inside the work."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SlimYoloError(f"{source}: '{where}' must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, source, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, source, f"{where}[{i}]")


def _plain(value: Any) -> Any:
    """Specs as YAML/JSON data: Artifacts and DataRefs as mappings, tuples as lists, no empty fields."""
    if isinstance(value, Artifact):
        return dataclasses.asdict(value)
    if isinstance(value, DataRef):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items() if v not in (None, "")}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
