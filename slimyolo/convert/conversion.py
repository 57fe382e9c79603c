"""cfg + weights → OpenVINO IR in a model repository, checked against PyTorch at every step.

:func:`convert` is the one entry point (the CLI and the converter service call it):

1. load the PyTorch model (the reference) and the parity images;
2. ``via="tf"``: build the Keras graph (:mod:`slimyolo.convert.keras_model`), compare it with
   PyTorch, and ``openvino.convert_model`` it; ``via="torch"``: ``openvino.convert_model`` the
   PyTorch module directly;
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
   and checked, or not at all (also when cancelled from ``progress``).
"""

from __future__ import annotations

import json
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo import __version__, vocab
from slimyolo.convert import ir
from slimyolo.convert.calib import ImageSource, open_source, read_frames, to_tensor
from slimyolo.convert.parity import NOISE_FACTOR, Comparison, ParityReport, compare, reference64
from slimyolo.darknet.cfg import Cfg, as_cfg
from slimyolo.darknet.graph import Head
from slimyolo.data.letterbox import PAD_VALUE, letterbox
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.fsutil import atomic_dir, atomic_write_text
from slimyolo.infer.meta import InputSpec, ModelMeta, attach_meta
from slimyolo.progress import Progress, StageStep
from slimyolo.store import hash_file

TOLERANCE = 1e-3
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


def next_version(model_dir: Path) -> str:
    """1 + the largest integer version folder under ``model_dir`` (1 for a new model)."""
    from slimyolo.store import next_version as after

    return after(p.name for p in model_dir.iterdir() if p.is_dir()) if model_dir.is_dir() else after(())


def _read_names(names: Sequence[str] | str | Path | None, source: ImageSource | None,
                classes: int) -> tuple[str, ...]:
    """Class names: given, from a ``.names`` file, from the calibration data set, or ``class<i>``."""
    where = "the class names"
    if isinstance(names, str | Path):
        path = Path(names)
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise NotFoundError(f"{path}: cannot read the class names: {exc.strerror or exc}") from None
        where = str(path)
    elif names is None and source is not None and source.names is not None:
        names, where = source.names, f"{source.description} (class names)"
    if names is None:
        return tuple(f"class{i}" for i in range(classes))
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


def convert(cfg: Cfg | str | Path | None, weights: str | Path, out_dir: str | Path, *,
            name: str | None = None, version: str | int | None = None, via: str = "tf",
            precision: str = "fp32", calib_data: str | Path | None = None,
            img_size: int | tuple[int, int] | None = None, names: Sequence[str] | str | Path | None = None,
            ppp: str | None = None, onnx: bool = False, accuracy_control: bool = False, max_drop: float = 0.01,
            calib_images: int = 300, parity_images: int = 2, tolerance: float = TOLERANCE,
            progress: Progress | None = None) -> ConversionResult:
    """Convert ``cfg`` + ``weights`` into ``out_dir/<name>/<version>/`` (see the module docstring).

    ``cfg`` may be None when ``weights`` is a SlimYOLO ``.pt`` (it holds its cfg). ``calib_data``
    is an image folder, a ``.data`` file or a data set folder (``slimyolo data synth`` output);
    without it, a small synthetic data set is generated for calibration and parity. ``names``
    defaults to the data set's names. ``ppp`` is None (f32 NCHW RGB input), ``"fixed"`` or
    ``"resize"`` (u8 NHWC BGR, see :func:`slimyolo.convert.ir.add_preprocessing`). ``progress``
    receives a :class:`~slimyolo.progress.StageStep` of stage ``convert`` per step; raising
    :class:`~slimyolo.errors.Cancelled` from it stops the conversion with nothing written.
    """
    t_start = time.perf_counter()

    def report(step: str, **extra: Any) -> None:
        if progress is not None:
            progress(StageStep("convert", step, extra))

    # -- arguments, checked before anything slow ------------------------------------------------
    vocab.choose(via, vocab.CONVERSION_PATHS, "via")
    vocab.choose(precision, vocab.IR_PRECISIONS, "precision")
    if ppp is not None:
        vocab.choose(ppp, vocab.PPP_MODES, "ppp")
    if accuracy_control and precision != "int8":
        raise SlimYoloError("accuracy control applies to INT8 quantization: add --precision int8")
    if not 0.0 < max_drop < 1.0:
        raise SlimYoloError(f"max drop is an absolute mAP@0.5 drop between 0 and 1, got {max_drop}")
    if calib_images < 1 or parity_images < 1:
        raise SlimYoloError(f"calibration and parity need at least one image (got {calib_images}, {parity_images})")
    weights = Path(weights)
    if not weights.is_file():
        raise NotFoundError(f"{weights}: no such weights file")
    if isinstance(cfg, str | Path) and not Path(cfg).is_file():
        raise NotFoundError(f"{cfg}: no such cfg file")
    if calib_data is not None and not Path(calib_data).exists():
        raise NotFoundError(f"{calib_data}: no such calibration data (an image folder, a .data file or a "
                            "data set folder)")
    out_dir = Path(out_dir)
    parsed, cfg_sha, cfg_where = _digest_cfg(cfg, weights)
    name = _check_name(name or default_name(cfg_where.removesuffix("[cfg]")), "model name")
    model_dir = out_dir / name
    version = _check_name(str(version) if version is not None else next_version(model_dir), "version")
    target = model_dir / version
    if target.exists():
        raise SlimYoloError(f"{target} already exists: choose another --version (model versions are immutable)")
    created_model_dir = not model_dir.exists()

    opts = _Options(via, precision, calib_data, img_size, names, ppp, onnx, accuracy_control, max_drop,
                    calib_images, parity_images, tolerance)
    with tempfile.TemporaryDirectory(prefix="slimyolo-convert-") as work:
        try:
            return _convert(parsed, cfg_sha, cfg_where, weights, target, opts, report, t_start, Path(work))
        finally:
            # A failed first version leaves no empty model folder behind.
            if created_model_dir and model_dir.is_dir() and not any(model_dir.iterdir()):
                model_dir.rmdir()


@dataclass(frozen=True)
class _Options:
    via: str
    precision: str
    calib_data: str | Path | None
    img_size: int | tuple[int, int] | None
    names: Sequence[str] | str | Path | None
    ppp: str | None
    onnx: bool
    accuracy_control: bool
    max_drop: float
    calib_images: int
    parity_images: int
    tolerance: float


def _convert(cfg: Cfg, cfg_sha: str, cfg_where: str, weights: Path, target: Path, opts: _Options,
             report: Callable[..., None], t_start: float, work: Path) -> ConversionResult:
    import torch

    from slimyolo.darknet.model import load_model

    name, version = target.parent.name, target.name
    via, precision, ppp = opts.via, opts.precision, opts.ppp
    seconds: dict[str, float] = {}

    def timed(step: str, t0: float) -> None:
        seconds[step] = round(time.perf_counter() - t0, 3)

    # -- reference model, images ---------------------------------------------------------------
    t0 = time.perf_counter()
    report("load", cfg=cfg_where, weights=str(weights))
    model = load_model(cfg, weights, opts.img_size)
    heads: list[Head] = model.heads
    out_names = ir.output_names(heads)
    height, width = model.input_size
    classes, long_side = heads[0].classes, max(height, width)
    source = None
    if opts.calib_data is not None or precision == "int8":
        source = open_source(opts.calib_data, work, classes, long_side,
                             opts.calib_images if precision == "int8" else opts.parity_images)
        if opts.accuracy_control and not source.labelled:
            raise SlimYoloError(f"{source.description}: accuracy control measures mAP@0.5 and needs labelled "
                                "images: give a .data file or a data set folder as --calib-data")
    class_names = _read_names(opts.names, source, classes)
    parity_source = source or open_source(None, work, classes, long_side, opts.parity_images)
    frames = read_frames(parity_source.paths[:opts.parity_images])
    images = to_tensor(frames, height, width)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(images))]
    parity = ParityReport(opts.tolerance, len(frames), parity_source.description, [])
    ref64: list[np.ndarray] = []  # the float64 reference, run only when a gated check needs it

    def check(other: str, got: list[np.ndarray], gated: bool = True) -> Comparison:
        """Compare with PyTorch; a gated comparison beyond the tolerance is judged against float64 too."""
        c = compare("torch", ref, other, got, out_names, gated=gated)
        if gated and not c.passes(opts.tolerance):
            if not ref64:
                report("parity", what="float64 reference")
                ref64.extend(reference64(model, images))
            c = compare("torch", ref, other, got, out_names, gated=True, reference64=ref64)
        parity.add(c)
        _check(parity, target)
        return c

    timed("load", t0)

    # -- the FP32 IR, by one of the two paths ----------------------------------------------------
    if via == "tf":
        from slimyolo.convert.keras_model import build_keras, keras_heads

        t0 = time.perf_counter()
        report("keras")
        kmodel = build_keras(model)
        check("keras", keras_heads(kmodel, images), gated=False)
        timed("keras", t0)
        t0 = time.perf_counter()
        report("ir", via=via)
        ov_model = ir.from_keras(kmodel, heads)
    else:
        t0 = time.perf_counter()
        report("ir", via=via)
        ov_model = ir.from_torch(model, heads)
    timed("ir", t0)
    t0 = time.perf_counter()
    report("parity", what="ir_fp32")
    fp32 = check("ir_fp32", ir.run(ir.compile_f32(ov_model), images, out_names))
    timed("parity", t0)
    report("parity_ok", max_abs=fp32.max_abs, max_rel=fp32.max_rel)

    # -- precision -------------------------------------------------------------------------------
    int8_info: dict[str, Any] | None = None
    if precision == "int8":
        from slimyolo.convert.quantize import quantize

        assert source is not None
        t0 = time.perf_counter()
        report("quantize", images=min(opts.calib_images, len(source.paths)), accuracy_control=opts.accuracy_control)
        ov_model, int8_info = quantize(ov_model, source, heads, (height, width), opts.calib_images,
                                       opts.accuracy_control, opts.max_drop, report)
        timed("quantize", t0)

    # -- input variant and metadata --------------------------------------------------------------
    if ppp is not None:
        ov_model = ir.add_preprocessing(ov_model, ppp, height, width, PAD_VALUE)
    spec = InputSpec(ir.INPUT_NAME, height, width, layout="NHWC" if ppp else "NCHW",
                     element_type="u8" if ppp else "f32", color="BGR" if ppp else "RGB",
                     normalized=ppp is None, resize_inside=ppp == "resize", pad_value=PAD_VALUE)
    weights_sha, weights_size = hash_file(weights)
    meta = ModelMeta(class_names, spec, tuple(heads), tuple(out_names), precision, name, version,
                     {"cfg_sha256": cfg_sha, "weights_sha256": weights_sha, "cfg": Path(cfg_where).name,
                      "weights": weights.name, "via": via})
    attach_meta(ov_model, meta)

    # -- write, read back, check, publish --------------------------------------------------------
    import openvino as ov

    with atomic_dir(target) as tmp:
        t0 = time.perf_counter()
        report("save", path=str(target))
        xml = tmp / FILES["xml"]
        ov.save_model(ov_model, xml, compress_to_fp16=precision == "fp16")
        timed("save", t0)
        t0 = time.perf_counter()
        report("parity", what="saved_ir")
        saved = ir.compile_f32(str(xml))
        inputs = _ir_inputs(ppp, frames, images, height, width)
        outs = [ir.run(saved, x, out_names) for x in inputs]
        got = [np.concatenate([o[k] for o in outs]) for k in range(len(out_names))]
        # The saved FP32 IR is held to the tolerance too, unless letterboxing happens inside it
        # (its bilinear resize works on floats, OpenCV's on bytes: a real but legitimate difference).
        check(f"saved_{precision}", got, gated=precision == "fp32" and ppp != "resize")
        if opts.onnx:
            from slimyolo.convert.onnx_export import export_onnx, run_onnx

            report("onnx")
            export_onnx(model, tmp / FILES["onnx"], out_names)
            check("onnxruntime", run_onnx(tmp / FILES["onnx"], images), gated=False)
        timed("check", t0)
        seconds["total"] = round(time.perf_counter() - t_start, 3)
        files = {}
        for f in sorted(tmp.iterdir()):
            sha, size = hash_file(f)
            files[f.name] = {"sha256": sha, "size_bytes": size}
        summary = {
            "name": name, "version": version, "precision": precision, "via": via,
            "input": asdict(spec), "outputs": out_names, "names": list(class_names),
            "heads": [asdict(h) for h in heads],
            "source": {"cfg": cfg_where, "cfg_sha256": cfg_sha, "weights": str(weights),
                       "weights_sha256": weights_sha, "weights_size_bytes": weights_size},
            "parity": parity.as_dict(), "int8": int8_info, "seconds": seconds, "tools": _tool_versions(),
            "files": files,
        }
        atomic_write_text(tmp / FILES["report"], json.dumps(summary, indent=2) + "\n")
        report("publish", path=str(target))
    report("done", path=str(target), seconds=seconds["total"])
    return ConversionResult(target, name, version, precision, via, meta, parity, summary)


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
