"""Darknet ``.weights`` files and SlimYOLO ``.pt`` checkpoints.

The ``.weights`` layout is darknet's: a header (major, minor, revision as int32, then
``seen`` as int64 when major*10+minor >= 2, else int32), then for every convolution in cfg
order either BN β, γ, running mean, running variance — or the conv bias — followed by the
kernel, all little-endian float32. A file is read completely and checked against the size
the cfg needs before anything is copied into the model, so a bad file leaves the model as
it was.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from slimyolo.darknet.cfg import Cfg, parse_cfg_text
from slimyolo.darknet.model import Darknet
from slimyolo.errors import WeightsError
from slimyolo.fsutil import atomic_path, atomic_write_bytes

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
    out: list[torch.Tensor] = []
    for _, block in model.conv_blocks():
        if block.bn is not None:
            out += [block.bn.bias, block.bn.weight, block.bn.running_mean, block.bn.running_var]
        else:
            assert block.conv.bias is not None
            out.append(block.conv.bias)
        out.append(block.conv.weight)
    return out


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
    major, minor, revision, seen, seen_bytes = model.header
    head = struct.pack("<3i", major, minor, revision) + struct.pack("<q" if seen_bytes == 8 else "<i", seen)
    body = b"".join(t.detach().cpu().float().numpy().astype("<f4").tobytes() for t in darknet_tensors(model))
    return head + body


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

