"""The PyTorch model built from a cfg: one module per darknet layer, in cfg order.

``Darknet(x)`` returns the raw head tensors — the outputs of the convolutions feeding the
``[yolo]`` layers, before any sigmoid — in cfg order, in train and eval mode alike. Loss,
decoding and export all start from these raw heads, so the model has one behaviour and the
conversion parity checks compare exactly what every runtime computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimyolo.darknet.cfg import Cfg, as_cfg
from slimyolo.darknet.graph import Conv, Graph, Head, MaxPool, Route, Shortcut, Upsample, Yolo, build_graph
from slimyolo.darknet.weights import (
    checkpoint_cfg,
    is_checkpoint,
    load_darknet_weights,
    load_weights,
    save_darknet_weights,
)
from slimyolo.errors import SlimYoloError

BN_EPS = 1e-5  # darknet's epsilon; every runtime (Keras, OpenVINO) must use the same
BN_MOMENTUM = 0.03

# torch's layers draw their default initial weights from its global generator, which every thread of the
# process shares. Every Darknet builds its layers under this lock, and :func:`seeded_model` seeds and builds
# under it, so a seed gives the same weights while other threads build models too (the pipeline trains its
# reference in a thread beside the other stages).
_BUILDING = threading.RLock()

# PyTorch's function of each of the activations a layer may name (graph.ACTIVATIONS).
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "relu": F.relu,
    "mish": F.mish,
    "swish": F.silu,
    "logistic": torch.sigmoid,
}


class ConvBlock(nn.Module):
    """Convolution, optional BatchNorm, activation: darknet's [convolutional]."""

    def __init__(self, in_channels: int, spec: Conv) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(in_channels, spec.filters, spec.size, spec.stride, spec.padding,
                              groups=spec.groups, bias=not spec.batch_normalize)
        self.bn = nn.BatchNorm2d(spec.filters, eps=BN_EPS, momentum=BN_MOMENTUM) if spec.batch_normalize else None
        self.act = ACTIVATION_FUNCTIONS[spec.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPoolBlock(nn.Module):
    """Darknet maxpool: ``padding // 2`` on the top/left, the rest on the bottom/right as needed."""

    def __init__(self, spec: MaxPool, in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.spec = spec
        self.pads = _maxpool_pads(spec, in_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads, value=float("-inf"))
        return F.max_pool2d(x, self.spec.size, self.spec.stride)


def _maxpool_pads(spec: MaxPool, in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that makes max_pool2d give darknet's output size."""
    pads = []
    for dim in (in_hw[1], in_hw[0]):
        out = (dim + spec.padding - spec.size) // spec.stride + 1
        before = spec.padding // 2
        after = (out - 1) * spec.stride + spec.size - dim - before
        pads += [before, max(after, 0)]
    return pads[0], pads[1], pads[2], pads[3]


class Darknet(nn.Module):
    """A darknet cfg as a torch module (see the module docstring for the outputs)."""

    def __init__(self, cfg: Cfg, img_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        if img_size is not None:
            h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
            cfg = cfg.with_size(h, w)
        self.cfg = cfg
        self.graph: Graph = build_graph(cfg)
        modules: list[nn.Module] = []
        with _BUILDING:  # the layers draw from torch's global generator (see _BUILDING)
            for i, spec in enumerate(self.graph.specs):
                in_c, in_h, in_w = self.graph.in_shape(i)
                if isinstance(spec, Conv):
                    modules.append(ConvBlock(in_c, spec))
                elif isinstance(spec, MaxPool):
                    modules.append(MaxPoolBlock(spec, (in_h, in_w)))
                else:
                    modules.append(nn.Identity())  # wiring only: handled in forward
        self.module_list = nn.ModuleList(modules)
        # Outputs that shortcuts and routes read from further back are kept during forward.
        keep: set[int] = set()
        for i, spec in enumerate(self.graph.specs):
            if isinstance(spec, Shortcut):
                keep.add(spec.source)
            elif isinstance(spec, Route):
                keep.update(j for j in spec.sources if j != i - 1)
        self._keep = frozenset(keep)
        self.heads: list[Head] = self.graph.heads()
        self.header = (0, 2, 5, 0, 8)  # darknet header: major, minor, revision, seen, seen bytes

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the cfg's [net]."""
        return self.graph.input_shape[1], self.graph.input_shape[2]

    @property
    def max_stride(self) -> int:
        return max(h.stride for h in self.heads)

    def conv_blocks(self) -> list[tuple[int, ConvBlock]]:
        """(layer index, block) of every convolution, in cfg (and .weights) order."""
        return [(i, m) for i, m in enumerate(self.module_list) if isinstance(m, ConvBlock)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, (spec, module) in enumerate(zip(self.graph.specs, self.module_list, strict=True)):
            if isinstance(spec, Shortcut):
                x = ACTIVATION_FUNCTIONS[spec.activation](x + saved[spec.source])
            elif isinstance(spec, Route):
                parts = [saved[j] if j != i - 1 else x for j in spec.sources]
                if spec.groups > 1:
                    parts = [p.chunk(spec.groups, dim=1)[spec.group_id] for p in parts]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            elif isinstance(spec, Upsample):
                x = F.interpolate(x, scale_factor=spec.stride, mode="nearest")
            elif isinstance(spec, Yolo):
                heads.append(x)
            else:
                x = module(x)
            if i in self._keep:
                saved[i] = x
        return heads

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # export traces fixed shapes; the check would only add warnings
            return
        channels = self.graph.input_shape[0]
        if x.dim() != 4 or x.shape[1] != channels:
            raise SlimYoloError(f"model input must be (N, {channels}, H, W), got {tuple(x.shape)}")
        stride = self.max_stride
        if x.shape[2] % stride or x.shape[3] % stride:
            raise SlimYoloError(f"model input height and width must be multiples of {stride}, "
                                f"got {x.shape[2]}x{x.shape[3]}")

    def load_darknet_weights(self, path: str | Path) -> None:
        load_darknet_weights(self, path)

    def save_darknet_weights(self, path: str | Path) -> None:
        save_darknet_weights(self, path)


def seeded_model(cfg: Cfg, img_size: int | tuple[int, int] | None, seed: int) -> Darknet:
    """The model of ``cfg`` with torch's default initial weights as ``seed`` gives them: torch's global
    generator seeded and drawn from under ``_BUILDING``, so no other thread takes numbers in between."""
    with _BUILDING:
        torch.manual_seed(seed)
        return Darknet(cfg, img_size)


def load_model(cfg: Cfg | str | Path | None, weights: str | Path | None = None,
               img_size: int | tuple[int, int] | None = None) -> Darknet:
    """Build the model of ``cfg`` and load ``weights`` (darknet ``.weights`` or a ``.pt``).

    A SlimYOLO ``.pt`` checkpoint holds its cfg, so ``load_model("runs/x/best.pt")`` (or
    ``load_model(None, "runs/x/best.pt")``) rebuilds and loads it alone; a checkpoint given as
    ``cfg`` with other ``weights`` lends its cfg only. Checkpoints are told apart by content
    (:func:`~slimyolo.darknet.weights.is_checkpoint`), never by the file's name. Returns the
    model in eval mode. ``img_size`` (an int or (height, width)) overrides the cfg's input size,
    which matters for FLOPs, export and the default inference size.
    """
    if cfg is None:
        if weights is None:
            raise SlimYoloError("give a cfg, or a .pt checkpoint that holds one")
        if not is_checkpoint(weights):
            raise SlimYoloError(f"{weights}: darknet .weights hold no cfg: give the cfg as well "
                                "(load_model(cfg, weights))")
        cfg = checkpoint_cfg(weights)
    elif not isinstance(cfg, Cfg) and Path(cfg).is_file() and is_checkpoint(cfg):
        weights = cfg if weights is None else weights
        cfg = checkpoint_cfg(cfg)
    model = Darknet(as_cfg(cfg), img_size)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
