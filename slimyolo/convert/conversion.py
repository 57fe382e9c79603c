"""cfg + weights → OpenVINO IR in a model repository, checked against PyTorch at every step.

:func:`convert` is the one entry point (the CLI and the converter service call it), steered by a
:class:`~slimyolo.convert.options.ConvertOptions`; its steps are the functions below it:

1. load the PyTorch model (the reference) and the parity images (``_reference``);
2. ``via="tf"``: build the Keras graph (:mod:`slimyolo.convert.keras_model`), compare it with
   PyTorch, and ``openvino.convert_model`` it; ``via="torch"``: ``openvino.convert_model`` the
   PyTorch module directly (``_fp32_ir``);
3. compare the FP32 IR with PyTorch at f32 inference precision — beyond the tolerance (and
   beyond PyTorch's own float32 error, see :mod:`slimyolo.convert.parity`) the conversion
   fails before anything is written;
4. INT8: ``nncf.quantize`` (or ``nncf.quantize_with_accuracy_control`` with mAP@0.5) on the
   calibration images; FP16: weights compressed when saved;
5. optionally the u8 NHWC BGR input (:func:`slimyolo.convert.ir.add_preprocessing`), then the
   metadata (:mod:`slimyolo.infer.meta`);
6. write ``<out>/<name>/<version>/`` — ``model.xml``, ``model.bin``, optionally ``model.onnx``,
   and ``conversion.json`` — through :func:`slimyolo.fsutil.atomic_dir`, after reading the
   saved IR back and comparing it with PyTorch once more: the version folder appears complete
   and checked, or not at all (also when cancelled from ``progress``) (``_publish``).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimyolo import __version__, vocab
from slimyolo.convert import ir
from slimyolo.convert.calib import ImageSource, open_source, read_frames, to_tensor
from slimyolo.convert.options import ConvertOptions
from slimyolo.convert.parity import NOISE_FACTOR, Comparison, ParityReport, compare, reference64
from slimyolo.darknet.cfg import Cfg, as_cfg
from slimyolo.darknet.graph import Head
from slimyolo.data.letterbox import PAD_VALUE, letterbox
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.fsutil import atomic_dir, atomic_write_text
from slimyolo.infer.meta import InputSpec, ModelMeta, attach_meta
from slimyolo.params import Fields
from slimyolo.progress import Progress, StageStep
from slimyolo.store import hash_file, next_version

if TYPE_CHECKING:
    from slimyolo.darknet.model import Darknet

FILES = {"xml": "model.xml", "bin": "model.bin", "onnx": "model.onnx", "report": "conversion.json"}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

@dataclass
class ConversionResult:
    """What one conversion wrote and measured (``summary`` is ``conversion.json``)."""

    path: Path  # the model version folder
    name: str
    version: str
    precision: str
    via: str
    meta: ModelMeta
    parity: ParityReport
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def xml(self) -> Path:
        return self.path / FILES["xml"]


def _check_name(value: str, what: str) -> str:
    if not _SAFE.match(value):
        raise SlimYoloError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (a folder name "
                            "in the model repository)")
    return value


RUN_FILES = ("best", "last")  # the checkpoints a training run writes: named after their run folder


def default_name(source: str | Path) -> str:
    """The model name of a conversion given no ``name``: the cfg file's (or ``.pt``'s) stem, but for a
    training run's ``best.pt``/``last.pt`` the run folder's name (``runs/ft/best.pt`` → ``ft``), so
    that every run's model is not called ``best``."""
    path = Path(source)
    if path.stem in RUN_FILES:
        folder = path.resolve().parent.name
        if _SAFE.match(folder):
            return folder
    return path.stem


def model_versions(model_dir: str | Path) -> list[tuple[str, str | None]]:
    """``(version, precision)`` of each version folder of a model in a local model repository, oldest
    first by the serving order (the last one is what a server of the repository serves by default);
    the precision is the one its ``conversion.json`` records, None when it has none."""
    from slimyolo.serving.repository import version_key

    model_dir = Path(model_dir)
    out = []
    for folder in sorted((p for p in model_dir.iterdir() if p.is_dir()) if model_dir.is_dir() else (),
                         key=lambda p: version_key(p.name)):
        try:
            precision = json.loads((folder / FILES["report"]).read_text(encoding="utf-8")).get("precision")
        except (OSError, ValueError, AttributeError):
            precision = None
        out.append((folder.name, precision if isinstance(precision, str) else None))
    return out


def versions_report(model_dir: str | Path) -> tuple[str, str | None]:
    """(a line naming the model's versions and the one a server serves, a warning or None). The
    warning says when the versions hold more than one precision: a server serves the newest only
    (an INT8 conversion under the FP32 model's name silently replaces it), so each precision
    wants its own name."""
    model_dir = Path(model_dir)
    versions = model_versions(model_dir)
    if not versions:
        return f"{model_dir}: no versions", None

    def label(v: str, p: str | None) -> str:
        return f"{v} ({p or 'precision unknown'})"

    latest = versions[-1]
    line = (f"model {model_dir.name}: versions {', '.join(label(v, p) for v, p in versions)}; a server serves "
            f"the newest: {label(*latest)}")
    precisions = {p for _, p in versions if p is not None}
    if len(precisions) < 2:
        return line, None
    older = sorted({p for _, p in versions[:-1] if p is not None and p != latest[1]})
    warning = (f"warning: model {model_dir.name} now holds {' and '.join(sorted(precisions))} versions and a server "
               f"serves only the newest, {label(*latest)}: its {', '.join(older)} version"
               f"{'s are' if len(older) > 1 else ' is'} no longer served; give each precision its own --name "
               f"(e.g. --name {model_dir.name}-{latest[1]}) to serve them side by side")
    return line, warning


def _read_names(names: Sequence[str] | str | Path, source: ImageSource | None, classes: int) -> tuple[str, ...]:
    """Class names: given, from a ``.names`` file, else from the calibration data set, else ``class<i>``
    (no names given: an empty sequence, as a spec that leaves them out says)."""
    where = "the class names"
    if isinstance(names, str | Path):
        path = Path(names)
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise NotFoundError(f"{path}: cannot read the class names: {exc.strerror or exc}") from None
        where = str(path)
    elif not names:
        if source is None or source.names is None:
            return tuple(f"class{i}" for i in range(classes))
        names, where = source.names, f"{source.description} (class names)"
    names = tuple(str(n) for n in names)
    if len(names) != classes:
        raise SlimYoloError(f"{where}: {len(names)} class names for a model with {classes} classes")
    return names


def _digest_cfg(cfg: Cfg | str | Path | None, weights: Path) -> tuple[Cfg, str, str]:
    """(cfg, its sha256, where it came from): a cfg file, a Cfg object, or the cfg inside a ``.pt``."""
    import hashlib

    if cfg is None:
        from slimyolo.darknet.weights import checkpoint_cfg

        parsed = checkpoint_cfg(weights)
        return parsed, hashlib.sha256(parsed.to_text().encode()).hexdigest(), f"{weights}[cfg]"
    if isinstance(cfg, Cfg):
        return cfg, hashlib.sha256(cfg.to_text().encode()).hexdigest(), cfg.path or "<cfg>"
    path = Path(cfg)
    parsed = as_cfg(path)
    return parsed, hash_file(path)[0], str(path)


def _tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"slimyolo": __version__, "python": platform.python_version()}
    for dist in ("openvino", "nncf", "tensorflow-cpu", "keras", "torch", "onnx", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def convert(cfg: Cfg | str | Path | None, weights: str | Path, out_dir: str | Path,
            options: ConvertOptions | None = None, *, name: str | None = None, version: str | int | None = None,
            calib_data: str | Path | None = None, progress: Progress | None = None,
            **changes: Any) -> ConversionResult:
    """Convert ``cfg`` + ``weights`` into ``out_dir/<name>/<version>/`` as ``options`` say (see the module docstring).

    ``options`` (default: the declared defaults) is taken whole; ``changes`` are fields of
    :class:`~slimyolo.convert.options.ConvertOptions` set on top of it, as ``dataclasses.replace`` does
    (``convert(cfg, weights, out, via="torch")``). ``cfg`` may be None when ``weights`` is a SlimYOLO
    ``.pt`` (it holds its cfg). ``name`` defaults to :func:`default_name` of the cfg, ``version`` to one
    more than the model's highest. ``calib_data`` is an image folder, a ``.data`` file or a data set
    folder (``slimyolo data synth`` output); without it, a small synthetic data set is generated for
    calibration and parity. ``progress`` receives a :class:`~slimyolo.progress.StageStep` of stage
    ``convert`` per step; raising :class:`~slimyolo.errors.Cancelled` from it stops the conversion with
    nothing written.
    """
    t_start = time.perf_counter()
    opts = dataclasses.replace(options or ConvertOptions(), **changes)

    def report(step: str, **extra: Any) -> None:
        if progress is not None:
            progress(StageStep("convert", step, extra))

    # -- arguments, checked before anything slow ------------------------------------------------
    _check_options(opts)
    weights = Path(weights)
    if not weights.is_file():
        raise NotFoundError(f"{weights}: no such weights file")
    if isinstance(cfg, str | Path) and not Path(cfg).is_file():
        raise NotFoundError(f"{cfg}: no such cfg file")
    if calib_data is not None and not Path(calib_data).exists():
        raise NotFoundError(f"{calib_data}: no such calibration data (an image folder, a .data file or a "
                            "data set folder)")
    parsed, cfg_sha, cfg_where = _digest_cfg(cfg, weights)
    name = _check_name(name or default_name(cfg_where.removesuffix("[cfg]")), "model name")
    model_dir = Path(out_dir) / name
    versions = [p.name for p in model_dir.iterdir() if p.is_dir()] if model_dir.is_dir() else []
    version = _check_name(str(version) if version is not None else next_version(versions), "version")
    target = model_dir / version
    if target.exists():
        raise SlimYoloError(f"{target} already exists: choose another --version (model versions are immutable)")
    created_model_dir = not model_dir.exists()

    source = _Source(parsed, cfg_sha, cfg_where, weights, calib_data)
    with tempfile.TemporaryDirectory(prefix="slimyolo-convert-") as work:
        try:
            return _convert(source, target, opts, report, t_start, Path(work))
        finally:
            # A failed first version leaves no empty model folder behind.
            if created_model_dir and model_dir.is_dir() and not any(model_dir.iterdir()):
                model_dir.rmdir()


def _check_options(opts: ConvertOptions) -> None:
    """The options a caller built in Python (not read by ``from_dict``, which checks each field) checked here too,
    and the combinations that no single field's bounds catch."""
    vocab.choose(opts.via, vocab.CONVERSION_PATHS, "via")
    vocab.choose(opts.precision, vocab.IR_PRECISIONS, "precision")
    if opts.ppp is not None:
        vocab.choose(opts.ppp, vocab.PPP_MODES, "ppp")
    opts._validate(Fields({}, "convert options"))
    if not 0.0 < opts.max_drop <= 1.0:  # as ConvertOptions declares it: (0, 1]
        raise SlimYoloError(f"max drop is an absolute mAP@0.5 drop in (0, 1], got {opts.max_drop}")
    if opts.calib_images < 1 or opts.parity_images < 1:
        raise SlimYoloError(f"calibration and parity need at least one image (got {opts.calib_images}, "
                            f"{opts.parity_images})")


@dataclass(frozen=True)
class _Source:
    """What is converted: the parsed cfg (its sha256 and where it came from) and the weights file; and the
    calibration data (None: a synthetic set)."""

    cfg: Cfg
    cfg_sha: str
    cfg_where: str
    weights: Path
    calib_data: str | Path | None


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall time of a step in ``seconds`` (conversion.json's ``seconds``)."""
    t0 = time.perf_counter()
    yield
    seconds[step] = round(time.perf_counter() - t0, 3)


@dataclass
class _Reference:
    """The PyTorch model and its outputs on the parity images: what every step is compared with."""

    model: Darknet
    heads: list[Head]
    out_names: list[str]
    height: int
    width: int
    class_names: tuple[str, ...]
    source: ImageSource | None  # the calibration images (INT8, or given); None: the parity images are synthetic
    parity_source: str  # where the parity images come from
    frames: list[np.ndarray]  # the parity images as read
    images: np.ndarray  # ... letterboxed into one f32 NCHW batch
    outputs: list[np.ndarray]  # PyTorch's heads on them


class _Parity:
    """The parity checks of one conversion against PyTorch, recorded in ``parity``; a failed one stops it.

    A gated comparison beyond the tolerance is judged against a float64 run of PyTorch too, made once,
    when the first such comparison needs it.
    """

    def __init__(self, ref: _Reference, tolerance: float, target: Path, report: Callable[..., None]) -> None:
        self.ref, self.target, self.progress = ref, target, report
        self.parity = ParityReport(tolerance, len(ref.frames), ref.parity_source, [])
        self.ref64: list[np.ndarray] = []

    def __call__(self, other: str, got: list[np.ndarray], gated: bool = True) -> Comparison:
        ref = self.ref
        c = compare("torch", ref.outputs, other, got, ref.out_names, gated=gated)
        if gated and not c.passes(self.parity.tolerance):
            if not self.ref64:
                self.progress("parity", what="float64 reference")
                self.ref64.extend(reference64(ref.model, ref.images))
            c = compare("torch", ref.outputs, other, got, ref.out_names, gated=True, reference64=self.ref64)
        self.parity.add(c)
        _check(self.parity, self.target)
        return c


def _convert(source: _Source, target: Path, opts: ConvertOptions, report: Callable[..., None], t_start: float,
             work: Path) -> ConversionResult:
    """The steps of :func:`convert` once its arguments are checked: each one timed, every IR checked."""
    name, version = target.parent.name, target.name
    seconds: dict[str, float] = {}
    with _timed(seconds, "load"):
        report("load", cfg=source.cfg_where, weights=str(source.weights))
        ref = _reference(source, opts, work)
        check = _Parity(ref, opts.tolerance, target, report)
    ov_model = _fp32_ir(ref, opts.via, check, report, seconds)
    int8_info: dict[str, Any] | None = None
    if opts.precision == "int8":
        from slimyolo.convert.quantize import quantize

        assert ref.source is not None
        with _timed(seconds, "quantize"):
            report("quantize", images=min(opts.calib_images, len(ref.source.paths)),
                   accuracy_control=opts.accuracy_control)
            ov_model, int8_info = quantize(ov_model, ref.source, ref.heads, (ref.height, ref.width),
                                           opts.calib_images, opts.accuracy_control, opts.max_drop, report)
    if opts.ppp is not None:
        ov_model = ir.add_preprocessing(ov_model, opts.ppp, ref.height, ref.width, PAD_VALUE)
    model_input = _input_spec(opts.ppp, ref.height, ref.width)
    weights_sha, weights_size = hash_file(source.weights)
    meta = ModelMeta(ref.class_names, model_input, tuple(ref.heads), tuple(ref.out_names), opts.precision, name,
                     version, {"cfg_sha256": source.cfg_sha, "weights_sha256": weights_sha,
                               "cfg": Path(source.cfg_where).name, "weights": source.weights.name, "via": opts.via})
    attach_meta(ov_model, meta)
    summary = {
        "name": name, "version": version, "precision": opts.precision, "via": opts.via,
        "input": asdict(model_input), "outputs": ref.out_names, "names": list(ref.class_names),
        "heads": [asdict(h) for h in ref.heads],
        "source": {"cfg": source.cfg_where, "cfg_sha256": source.cfg_sha, "weights": str(source.weights),
                   "weights_sha256": weights_sha, "weights_size_bytes": weights_size},
        "parity": None,  # the parity report and the files: filled in by _publish once the saved IR is checked
        "int8": int8_info, "seconds": seconds, "tools": _tool_versions(),
    }
    _publish(ov_model, ref, opts, check, target, summary, report, seconds, t_start)
    report("done", path=str(target), seconds=seconds["total"])
    return ConversionResult(target, name, version, opts.precision, opts.via, meta, check.parity, summary)


def _reference(source: _Source, opts: ConvertOptions, work: Path) -> _Reference:
    """Load the PyTorch model, open the calibration images (INT8, or given), read the class names and run the
    model on the parity images."""
    import torch

    from slimyolo.darknet.model import load_model

    model = load_model(source.cfg, source.weights, opts.img_size)
    heads: list[Head] = model.heads
    height, width = model.input_size
    classes, long_side = heads[0].classes, max(height, width)
    images = None
    if source.calib_data is not None or opts.precision == "int8":
        images = open_source(source.calib_data, work, classes, long_side,
                             opts.calib_images if opts.precision == "int8" else opts.parity_images)
        if opts.accuracy_control and not images.labelled:
            raise SlimYoloError(f"{images.description}: accuracy control measures mAP@0.5 and needs labelled "
                                "images: give a .data file or a data set folder as --calib-data")
    class_names = _read_names(opts.names, images, classes)
    parity = images or open_source(None, work, classes, long_side, opts.parity_images)
    frames = read_frames(parity.paths[:opts.parity_images])
    batch = to_tensor(frames, height, width)
    with torch.no_grad():
        outputs = [t.numpy() for t in model(torch.from_numpy(batch))]
    return _Reference(model, heads, ir.output_names(heads), height, width, class_names, images, parity.description,
                      frames, batch, outputs)


def _fp32_ir(ref: _Reference, via: str, check: _Parity, report: Callable[..., None],
             seconds: dict[str, float]) -> Any:
    """The FP32 IR by one of the two paths (via Keras: the Keras graph checked against PyTorch on the way),
    compiled at f32 inference precision and checked against PyTorch."""
    if via == "tf":
        from slimyolo.convert.keras_model import build_keras, keras_heads

        with _timed(seconds, "keras"):
            report("keras")
            kmodel = build_keras(ref.model)
            check("keras", keras_heads(kmodel, ref.images), gated=False)
        with _timed(seconds, "ir"):
            report("ir", via=via)
            ov_model = ir.from_keras(kmodel, ref.heads)
    else:
        with _timed(seconds, "ir"):
            report("ir", via=via)
            ov_model = ir.from_torch(ref.model, ref.heads)
    with _timed(seconds, "parity"):
        report("parity", what="ir_fp32")
        fp32 = check("ir_fp32", ir.run(ir.compile_f32(ov_model), ref.images, ref.out_names))
    report("parity_ok", max_abs=fp32.max_abs, max_rel=fp32.max_rel)
    return ov_model


def _input_spec(ppp: str | None, height: int, width: int) -> InputSpec:
    """The IR's input: f32 NCHW RGB in [0, 1], or with ``ppp`` the u8 NHWC BGR frames of a camera."""
    return InputSpec(ir.INPUT_NAME, height, width, layout="NHWC" if ppp else "NCHW",
                     element_type="u8" if ppp else "f32", color="BGR" if ppp else "RGB",
                     normalized=ppp is None, resize_inside=ppp == "resize", pad_value=PAD_VALUE)


def _publish(ov_model: Any, ref: _Reference, opts: ConvertOptions, check: _Parity, target: Path,
             summary: dict[str, Any], report: Callable[..., None], seconds: dict[str, float],
             t_start: float) -> None:
    """Save the IR in a folder beside ``target``, read it back and check it against PyTorch (and the ONNX file
    with ``onnx``), write ``conversion.json`` (``summary``, completed here with the parity report and the files),
    and only then move the folder into place (:func:`~slimyolo.fsutil.atomic_dir`)."""
    import openvino as ov

    with atomic_dir(target) as tmp:
        with _timed(seconds, "save"):
            report("save", path=str(target))
            xml = tmp / FILES["xml"]
            ov.save_model(ov_model, xml, compress_to_fp16=opts.precision == "fp16")
        with _timed(seconds, "check"):
            report("parity", what="saved_ir")
            saved = ir.compile_f32(str(xml))
            inputs = _ir_inputs(opts.ppp, ref.frames, ref.images, ref.height, ref.width)
            outs = [ir.run(saved, x, ref.out_names) for x in inputs]
            got = [np.concatenate([o[k] for o in outs]) for k in range(len(ref.out_names))]
            # The saved FP32 IR is held to the tolerance too, unless letterboxing happens inside it
            # (its bilinear resize works on floats, OpenCV's on bytes: a real but legitimate difference).
            check(f"saved_{opts.precision}", got, gated=opts.precision == "fp32" and opts.ppp != "resize")
            if opts.onnx:
                from slimyolo.convert.onnx_export import export_onnx, run_onnx

                report("onnx")
                export_onnx(ref.model, tmp / FILES["onnx"], ref.out_names)
                check("onnxruntime", run_onnx(tmp / FILES["onnx"], ref.images), gated=False)
        seconds["total"] = round(time.perf_counter() - t_start, 3)
        summary["parity"] = check.parity.as_dict()
        files = {}
        for f in sorted(tmp.iterdir()):
            sha, size = hash_file(f)
            files[f.name] = {"sha256": sha, "size_bytes": size}
        summary["files"] = files
        atomic_write_text(tmp / FILES["report"], json.dumps(summary, indent=2) + "\n")
        report("publish", path=str(target))


def _ir_inputs(ppp: str | None, frames: list[np.ndarray], images: np.ndarray, height: int,
               width: int) -> list[np.ndarray]:
    """What to feed the saved IR for the parity images, one batch per image, in its input format."""
    if ppp is None:
        return [images[i:i + 1] for i in range(len(images))]
    if ppp == "fixed":
        return [letterbox(f, height, width, PAD_VALUE)[0][None] for f in frames]
    return [f[None] for f in frames]


def _check(parity: ParityReport, target: Path) -> None:
    failed = parity.failures()
    if failed:
        c = failed[0]
        w = next(h for h in c.heads if not h.passes(parity.tolerance))
        detail = ""
        if w.vs_f64 is not None and w.f32_noise is not None:
            detail = (f", and {w.vs_f64:.3g} from a float64 run of PyTorch, where PyTorch's own float32 error is "
                      f"{w.f32_noise:.3g} (at most {NOISE_FACTOR:g}x that is accepted)")
        raise SlimYoloError(
            f"{target}: conversion failed the parity check: {c.other} differs from {c.reference} by "
            f"{w.max_abs:.3g} on head {w.output} (max |head| {w.scale:.3g}, tolerance {parity.tolerance:g}){detail}; "
            "nothing was written")
