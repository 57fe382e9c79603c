"""Darknet ``.weights`` files and SlimYOLO ``.pt`` checkpoints.

The ``.weights`` layout is darknet's: a header (major, minor, revision as int32, then
``seen`` as int64 when major*10+minor >= 2, else int32), then for every convolution in cfg
order either BN β, γ, running mean, running variance — or the conv bias — followed by the
kernel, all little-endian float32. A file is read completely and checked against the size
the cfg needs before anything is copied into the model, so a bad file leaves the model as
it was.

:func:`load_pretrained` (base training, ``slimyolo init --weights``) also takes darknet's
pretrained files: a partial file (``yolov4.conv.137``: the convolutions up to a layer, what
:func:`partial_weights_bytes` and darknet's ``partial`` write) and another cfg's weights
(matched by layer index and tensor shapes), and reports what it loaded (:class:`WeightsReport`).
"""

from __future__ import annotations

import copy
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slimyolo.darknet.cfg import Cfg, as_cfg, parse_cfg_text
from slimyolo.darknet.graph import Conv, Graph, build_graph
from slimyolo.darknet.zoo import ZOO, make_cfg
from slimyolo.errors import WeightsError
from slimyolo.fsutil import atomic_path, atomic_write_bytes

if TYPE_CHECKING:  # the files are read into and written from a model; the model loads its weights with these
    from slimyolo.darknet.model import ConvBlock, Darknet

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives; darknet .weights start with a version header


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a SlimYOLO ``.pt`` checkpoint rather than darknet ``.weights``.

    Told apart by content (torch.save's zip archive), never by the file's name: a checkpoint
    saved as ``x.weights`` is a checkpoint. A file that cannot be read is a WeightsError naming it.
    """
    try:
        with open(path, "rb") as fh:
            return fh.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def darknet_tensors(model: Darknet) -> list[torch.Tensor]:
    """Every tensor of the model in ``.weights`` order."""
    return [t for _, block in model.conv_blocks() for t in _block_tensors(block)]


def _parse_header(data: bytes, path: str) -> tuple[tuple[int, int, int, int, int], int]:
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        (seen,), seen_bytes = struct.unpack_from("<q", data, 12), 8
    else:
        (seen,), seen_bytes = struct.unpack_from("<i", data, 12), 4
    return (major, minor, revision, seen, seen_bytes), 12 + seen_bytes


def load_darknet_weights(model: Darknet, path: str | Path) -> None:
    """Load a darknet ``.weights`` file; a size that does not fit the cfg is an error."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header, offset = _parse_header(data, path)
    tensors = darknet_tensors(model)
    n_floats = sum(t.numel() for t in tensors)
    expected = offset + 4 * n_floats
    if len(data) != expected:
        what = "short" if len(data) < expected else "long"
        raise WeightsError(
            f"{path}: the file is too {what} for this cfg: expected {expected} bytes "
            f"({offset}-byte header + {n_floats} float32 values for {len(model.conv_blocks())} "
            f"convolutions), got {len(data)} bytes. Is it the weights of another cfg?")
    values = np.frombuffer(data, dtype="<f4", count=n_floats, offset=offset)
    if not np.isfinite(values).all():
        raise WeightsError(f"{path}: contains NaN or infinite values")
    with torch.no_grad():
        start = 0
        for t in tensors:
            t.copy_(torch.from_numpy(values[start:start + t.numel()].copy()).view_as(t))
            start += t.numel()
    model.header = header


def darknet_weights_bytes(model: Darknet) -> bytes:
    """The ``.weights`` file content of ``model`` (header kept from the file it was loaded from)."""
    return _header_bytes(model) + _tensor_bytes(darknet_tensors(model))


def _header_bytes(model: Darknet) -> bytes:
    """The ``.weights`` header of ``model`` (kept from the file it was loaded from)."""
    major, minor, revision, seen, seen_bytes = model.header
    return struct.pack("<3i", major, minor, revision) + struct.pack("<q" if seen_bytes == 8 else "<i", seen)


def _tensor_bytes(tensors: list[torch.Tensor]) -> bytes:
    return b"".join(t.detach().cpu().float().numpy().astype("<f4").tobytes() for t in tensors)


def save_darknet_weights(model: Darknet, path: str | Path) -> None:
    atomic_write_bytes(path, darknet_weights_bytes(model))


def save_checkpoint(model: Darknet, path: str | Path, **extra: object) -> None:
    """A ``.pt`` with the cfg text and the state dict (plus ``extra``), written atomically."""
    payload = {"cfg": model.cfg.to_text(), "model": model.state_dict(), "header": list(model.header),
               **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """Load a ``.pt`` checkpoint as a dict (tensors, numbers and strings only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise WeightsError(f"{path}: not a readable SlimYOLO checkpoint: {exc}") from None


def load_checkpoint_weights(model: Darknet, path: str | Path) -> None:
    ckpt = read_checkpoint(path)
    if "model" not in ckpt:
        raise WeightsError(f"{path}: not a SlimYOLO checkpoint (no 'model' entry)")
    state = ckpt["model"]
    own = model.state_dict()
    problems = [f"{k}: file {tuple(v.shape)} vs cfg {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if problems or missing or unexpected:
        detail = "; ".join(problems[:3] + [f"missing {m}" for m in missing[:3]]
                           + [f"unexpected {u}" for u in unexpected[:3]])
        raise WeightsError(f"{path}: the checkpoint does not fit this cfg ({detail})")
    model.load_state_dict(state)
    if "header" in ckpt:
        model.header = tuple(int(v) for v in ckpt["header"])  # type: ignore[assignment]


def load_weights(model: Darknet, path: str | Path) -> None:
    """Load ``.weights`` or ``.pt`` (told apart by content, not by the file name)."""
    if is_checkpoint(path):
        load_checkpoint_weights(model, path)
    else:
        load_darknet_weights(model, path)


def checkpoint_cfg(path: str | Path) -> Cfg:
    """The cfg stored inside a ``.pt`` checkpoint (so a checkpoint alone rebuilds its model)."""
    ckpt = read_checkpoint(path)
    if "cfg" not in ckpt:
        raise WeightsError(f"{path}: the checkpoint holds no cfg")
    return parse_cfg_text(ckpt["cfg"], f"{path}[cfg]")


# -- pretrained weights: partial files and another cfg's weights ----------------------------------------------


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_pretrained` loaded: the layer indices of the convolutions it loaded and of those that kept
    their initialisation, and from where (``kind``: "full", "partial" or "other cfg")."""

    source: str
    kind: str
    loaded: tuple[int, ...]
    reinitialised: tuple[int, ...]
    source_cfg: str | None = None

    @property
    def complete(self) -> bool:
        return not self.reinitialised

    def line(self) -> str:
        """``loaded 19 of 21 convolutions from X (2 re-initialised: layers 29, 36)``."""
        total = len(self.loaded) + len(self.reinitialised)
        text = f"loaded {len(self.loaded)} of {total} convolutions from {self.source}"
        if self.reinitialised:
            text += (f" ({len(self.reinitialised)} re-initialised: "
                     f"layer{'s' if len(self.reinitialised) > 1 else ''} {', '.join(map(str, self.reinitialised))})")
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "source_cfg": self.source_cfg,
                "convolutions": len(self.loaded) + len(self.reinitialised), "loaded": len(self.loaded),
                "reinitialised_layers": list(self.reinitialised), "report": self.line()}


def _block_tensors(block: ConvBlock) -> list[torch.Tensor]:
    """A convolution's tensors in ``.weights`` order (BN β, γ, mean, variance — or the bias — then the kernel)."""
    if block.bn is not None:
        return [block.bn.bias, block.bn.weight, block.bn.running_mean, block.bn.running_var, block.conv.weight]
    assert block.conv.bias is not None
    return [block.conv.bias, block.conv.weight]


def _graph_conv_shapes(graph: Graph) -> list[tuple[int, list[tuple[int, ...]]]]:
    """(layer index, tensor shapes in ``.weights`` order) of every convolution of a graph, without building it."""
    out = []
    for i, spec in enumerate(graph.specs):
        if isinstance(spec, Conv):
            f = spec.filters
            kernel = (f, graph.in_shape(i)[0] // spec.groups, spec.size, spec.size)
            out.append((i, [(f,)] * 4 + [kernel] if spec.batch_normalize else [(f,), kernel]))
    return out


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_convolutions(layout: list[tuple[int, list[tuple[int, ...]]]], data: bytes, offset: int, path: str,
                       too_long: str) -> dict[int, list[np.ndarray]]:
    """The arrays of each convolution a darknet file holds, in ``layout`` order until the file ends (darknet's
    load_weights_upto). The file must end between two convolutions; a longer file than ``layout`` needs is an
    error ending with ``too_long``; NaN or infinite values are errors."""
    need = offset + 4 * sum(math.prod(s) for _, shapes in layout for s in shapes)
    if len(data) > need:
        raise WeightsError(f"{path}: the file is too long for this cfg: {len(data)} bytes, the cfg's "
                           f"{len(layout)} convolutions need {need} ({offset}-byte header included). {too_long}")
    out: dict[int, list[np.ndarray]] = {}
    pos = offset
    for layer, shapes in layout:
        if pos == len(data):
            break
        size = 4 * sum(math.prod(s) for s in shapes)
        if pos + size > len(data):
            raise WeightsError(
                f"{path}: the file ends inside layer {layer} (a convolution): its weights take bytes {pos} to "
                f"{pos + size} but the file has {len(data)} bytes. A partial file (darknet partial) ends between "
                f"two layers; this one is truncated or is the weights of another cfg")
        arrays = []
        for shape in shapes:
            n = math.prod(shape)
            arrays.append(np.frombuffer(data, dtype="<f4", count=n, offset=pos).reshape(shape))
            pos += 4 * n
        out[layer] = arrays
    if not out:
        raise WeightsError(f"{path}: holds no convolution weights ({len(data)} bytes: the header only)")
    if not all(np.isfinite(a).all() for arrays in out.values() for a in arrays):
        raise WeightsError(f"{path}: contains NaN or infinite values")
    return out


def load_pretrained(model: Darknet, path: str | Path, weights_cfg: Cfg | str | Path | None = None, *,
                    refuse_incomplete: str | None = None) -> WeightsReport:
    """Load pretrained weights into ``model`` as far as they go, and say what was loaded.

    ``path`` may be the weights of the model's own cfg (everything loads), a partial darknet file
    (what darknet's ``partial`` writes, e.g. ``yolov4.conv.137``: the convolutions load in cfg order
    until the file ends, and the file must end between two convolutions), the darknet weights of
    another cfg ``weights_cfg`` (themselves full or partial), or a ``.pt`` checkpoint of another cfg.
    From another cfg every convolution whose layer index and tensor shapes match loads; the others
    (e.g. the heads of another class count) keep their values. Loading nothing is an error.

    ``refuse_incomplete``: the reason why anything but the full weights of the model's cfg is an error
    here (sparsity training and fine-tuning continue a trained model). Everything is read and checked
    before anything is copied, so a bad file leaves the model unchanged.
    """
    path = str(path)
    own = [(i, [tuple(t.shape) for t in _block_tensors(b)]) for i, b in model.conv_blocks()]
    source_cfg = None
    if is_checkpoint(path):
        if weights_cfg is not None:
            raise WeightsError(f"{path}: a .pt checkpoint carries its own cfg; --weights-cfg is for darknet .weights")
        arrays, header, kind = _checkpoint_convolutions(model, path, refuse_incomplete)
        source_cfg = None if kind == "full" else f"{path}[cfg]"
    else:
        data = _read_file(path)
        header, offset = _parse_header(data, path)
        if weights_cfg is None:
            hint = (f"It is the weights of another cfg: {refuse_incomplete}" if refuse_incomplete else
                    "Is it the weights of another cfg (the heads of another class count make the file longer)? "
                    "Pass that cfg as --weights-cfg (weights_cfg) to load the convolutions that fit")
            arrays = _read_convolutions(own, data, offset, path, hint)
            kind = "full" if len(arrays) == len(own) else "partial"
        else:
            src, source_cfg = _source_cfg(weights_cfg)
            layout = _graph_conv_shapes(build_graph(src))
            read = _read_convolutions(layout, data, offset, path, f"Is --weights-cfg {source_cfg} the cfg of "
                                      f"these weights?")
            wanted = dict(own)
            arrays = {i: a for i, a in read.items() if [x.shape for x in a] == wanted.get(i)}
            kind = "other cfg"
            if not arrays:
                raise WeightsError(f"{path}: no convolution of {source_cfg} matches this cfg (same layer index "
                                   f"and tensor shapes), so nothing would load")
    report = WeightsReport(path, kind, tuple(i for i, _ in own if i in arrays),
                           tuple(i for i, _ in own if i not in arrays), source_cfg)
    if refuse_incomplete and (kind == "other cfg" or not report.complete):
        what = (f"a partial file (the convolutions of layers 0 to {max(arrays)} only: {report.line()})"
                if kind == "partial" else f"the weights of another cfg ({report.line()})")
        raise WeightsError(f"{path}: is {what}; {refuse_incomplete}")
    blocks = dict(model.conv_blocks())
    with torch.no_grad():
        for i, values in arrays.items():
            for t, v in zip(_block_tensors(blocks[i]), values, strict=True):
                t.copy_(torch.as_tensor(np.array(v, dtype=np.float32)).view_as(t))
    model.header = header
    return report


def _source_cfg(weights_cfg: Cfg | str | Path) -> tuple[Cfg, str]:
    """(cfg, name) of --weights-cfg: a cfg file, or a zoo name (its 80-class cfg, as darknet's COCO weights)."""
    if isinstance(weights_cfg, Cfg):
        return weights_cfg, "weights_cfg"
    name = str(weights_cfg)
    if not Path(name).is_file() and name in ZOO:
        return make_cfg(name, 80), f"{name} (80 classes)"
    return as_cfg(name), name


def _checkpoint_convolutions(model: Darknet, path: str, refuse_incomplete: str | None,
                             ) -> tuple[dict[int, list[np.ndarray]], tuple, str]:
    """(arrays by layer, header, kind) of a ``.pt``: all of them when it fits the model's cfg, else the
    convolutions whose layer index and tensor shapes match."""
    ckpt = read_checkpoint(path)
    if "model" not in ckpt:
        raise WeightsError(f"{path}: not a SlimYOLO checkpoint (no 'model' entry)")
    state = ckpt["model"]
    header = tuple(int(v) for v in ckpt["header"]) if "header" in ckpt else model.header
    own_state = model.state_dict()
    fits = set(state) == set(own_state) and all(state[k].shape == v.shape for k, v in own_state.items())
    if not fits and refuse_incomplete:
        try:
            load_checkpoint_weights(copy.deepcopy(model), path)  # raises, naming what does not fit
        except WeightsError as exc:
            raise WeightsError(f"{exc}; {refuse_incomplete}") from None
    arrays: dict[int, list[np.ndarray]] = {}
    for i, block in model.conv_blocks():
        keys = ([f"module_list.{i}.bn.{n}" for n in ("bias", "weight", "running_mean", "running_var")]
                if block.bn is not None else [f"module_list.{i}.conv.bias"]) + [f"module_list.{i}.conv.weight"]
        tensors = _block_tensors(block)
        if all(k in state and tuple(state[k].shape) == tuple(t.shape) for k, t in zip(keys, tensors, strict=True)):
            arrays[i] = [state[k].detach().cpu().float().numpy() for k in keys]
    if not arrays:
        raise WeightsError(f"{path}: no convolution of the checkpoint's cfg matches this cfg (same layer index "
                           f"and tensor shapes), so nothing would load")
    if not all(np.isfinite(a).all() for values in arrays.values() for a in values):
        raise WeightsError(f"{path}: contains NaN or infinite values")
    return arrays, header, "full" if fits else "other cfg"


def partial_weights_bytes(model: Darknet, layers: int) -> bytes:
    """darknet's ``partial``: the ``.weights`` content of the convolutions among layers ``0..layers-1`` (the header
    kept, so the bytes are the start of the full file)."""
    n = len(model.graph.specs)
    if not 1 <= layers <= n:
        raise WeightsError(f"the number of layers to keep must be 1 to {n} (the cfg's layers), got {layers}")
    return _header_bytes(model) + _tensor_bytes([t for i, block in model.conv_blocks() if i < layers
                                                 for t in _block_tensors(block)])
