"""Per-layer pruning: turn a plan (channels to keep, residual units to drop) into a smaller model.

The plan is applied to the original graph layer by layer. For each layer output we track which
of its original channels survive and a per-channel constant *offset*: the pruned network
computes ``y_original = y_pruned + offset`` on kept channels, and ``y_original = offset`` on
removed ones. A removed channel of a BN convolution outputs act(β) — exactly, when its γ is 0 —
and a removed residual unit adds act(β) of the convolution before its shortcut. Offsets travel
through shortcuts (added), routes (concatenated or sliced), upsample and maxpool (unchanged:
the max of a constant is that constant, and of ``x + c`` it is ``max(x) + c``), and every
convolution absorbs the offsets of its input into its pre-activation: ``Σ W·offset`` is
subtracted from its BN running mean, or added to its bias where it has no BN.

That absorption is exact for 1×1 convolutions and for every output position whose kernel lies
inside the image; at the border of a zero-padded k×k convolution the padding replaces part of
the constant by zeros, which no per-channel bias can express — the same approximation the
original projects make, and one that fine-tuning removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from slimyolo.darknet.cfg import Cfg, Section
from slimyolo.darknet.graph import Conv, Graph, MaxPool, Route, Shortcut, Upsample, Yolo
from slimyolo.darknet.model import ACTIVATION_FUNCTIONS, Darknet


@dataclass(frozen=True)
class Plan:
    """What to remove: ``keep[i]`` masks convolution ``i``'s output channels (absent: keep all);
    ``units`` are shortcut indices whose residual unit (the shortcut and the two convolutions
    before it) goes."""

    keep: dict[int, np.ndarray] = field(default_factory=dict)
    units: frozenset[int] = frozenset()


@dataclass
class _ConvTensors:
    weight: np.ndarray
    bias: np.ndarray | None  # conv bias (no BN)
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None  # γ, β, running mean, running var


def _act(name: str, values: np.ndarray) -> np.ndarray:
    return ACTIVATION_FUNCTIONS[name](torch.from_numpy(values)).numpy()


def apply_plan(model: Darknet, plan: Plan) -> Darknet:
    """The pruned model (eval mode, same input size and .weights header) of ``plan`` on ``model``."""
    graph = model.graph
    blocks = dict(model.conv_blocks())
    removed = removed_layers(plan)
    kept: list[np.ndarray] = []
    offset: list[np.ndarray] = []
    tensors: dict[int, _ConvTensors] = {}
    image = (np.ones(graph.input_shape[0], dtype=bool), np.zeros(graph.input_shape[0]))

    def state(j: int) -> tuple[np.ndarray, np.ndarray]:
        return image if j < 0 else (kept[j], offset[j])

    for i, spec in enumerate(graph.specs):
        in_kept, in_off = state(graph.inputs[i][0])
        if i in removed:
            if isinstance(spec, Shortcut):  # the unit's output becomes its input plus act(β)
                beta = blocks[i - 1].bn.bias.detach().double().numpy()
                k, o = state(spec.source)
                kept.append(k)
                offset.append(o + _act(graph.specs[i - 1].activation, beta))
            else:
                kept.append(np.zeros(graph.shapes[i][0], dtype=bool))  # never read: see residual_units
                offset.append(np.zeros(graph.shapes[i][0]))
            continue
        if isinstance(spec, Conv):
            keep_out = plan.keep.get(i, np.ones(spec.filters, dtype=bool))
            t, off = _prune_conv(blocks[i], spec, keep_out, in_kept, in_off)
            tensors[i] = t
            kept.append(keep_out)
            offset.append(off)
        elif isinstance(spec, Shortcut):
            src_kept, src_off = state(spec.source)
            if not np.array_equal(in_kept, src_kept):
                raise AssertionError(f"layer {i}: shortcut inputs keep different channels (groups not merged)")
            total = in_off + src_off
            # A removed channel is a constant, so any activation maps it exactly. A kept channel
            # with an offset can only pass a linear shortcut exactly (residual_units only
            # removes units feeding linear shortcuts, which covers every zoo model); elsewhere
            # the offset is dropped, an approximation like the border one.
            through = total if spec.activation == "linear" else np.zeros_like(total)
            kept.append(in_kept)
            offset.append(np.where(in_kept, through, _act(spec.activation, total)))
        elif isinstance(spec, Route):
            ks, os_ = [], []
            for j in spec.sources:
                k, o = state(j)
                if spec.groups > 1:
                    n = len(k) // spec.groups
                    counts = {int(k[g * n:(g + 1) * n].sum()) for g in range(spec.groups)}
                    if len(counts) != 1:
                        raise AssertionError(f"layer {i}: route groups of layer {j} keep unequal chunks {counts}")
                    k, o = k[spec.group_id * n:(spec.group_id + 1) * n], o[spec.group_id * n:(spec.group_id + 1) * n]
                ks.append(k)
                os_.append(o)
            kept.append(np.concatenate(ks))
            offset.append(np.concatenate(os_))
        else:
            assert isinstance(spec, Upsample | MaxPool | Yolo)
            if isinstance(spec, Yolo) and (not in_kept.all() or np.any(in_off)):
                raise AssertionError(f"layer {i}: a yolo head lost channels or carries an offset")
            kept.append(in_kept)
            offset.append(in_off)

    new_cfg = pruned_cfg(model.cfg, graph, plan)
    pruned = Darknet(new_cfg)
    new_blocks = [b for _, b in pruned.conv_blocks()]
    old_order = [i for i, _ in model.conv_blocks() if i not in removed]
    with torch.no_grad():
        for block, i in zip(new_blocks, old_order, strict=True):
            t = tensors[i]
            block.conv.weight.copy_(torch.from_numpy(t.weight))
            if t.bn is not None:
                for param, value in zip((block.bn.weight, block.bn.bias, block.bn.running_mean,
                                         block.bn.running_var), t.bn, strict=True):
                    param.copy_(torch.from_numpy(value))
            else:
                block.conv.bias.copy_(torch.from_numpy(t.bias))
    pruned.header = model.header
    return pruned.eval()


def _prune_conv(block, spec: Conv, keep_out: np.ndarray, in_kept: np.ndarray,
                in_off: np.ndarray) -> tuple[_ConvTensors, np.ndarray]:
    """Slice one convolution and fold its input's offsets; returns its tensors and output offsets."""
    weight = block.conv.weight.detach().double().numpy()
    if spec.groups > 1 and not (keep_out.all() and in_kept.all()):
        raise AssertionError("a grouped convolution lost channels (its classes must be fixed)")
    if np.any(in_off):
        per_in = weight.sum(axis=(2, 3))  # (out, in / groups): the response to a constant input
        group_in = per_in.shape[1]
        group_out = spec.filters // spec.groups
        shift = np.concatenate([per_in[g * group_out:(g + 1) * group_out] @ in_off[g * group_in:(g + 1) * group_in]
                                for g in range(spec.groups)])
    else:
        shift = np.zeros(spec.filters)
    if spec.groups == 1:
        weight = weight[:, in_kept]
    weight = weight[keep_out]
    if block.bn is not None:
        bn = block.bn
        gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
        tensors = _ConvTensors(_f32(weight), None, (_f32(gamma[keep_out]), _f32(beta[keep_out]),
                                                    _f32((mean - shift)[keep_out]), _f32(var[keep_out])))
        out_off = np.where(keep_out, 0.0, _act(spec.activation, beta))
    else:
        bias = block.conv.bias.detach().double().numpy()
        tensors = _ConvTensors(_f32(weight), _f32((bias + shift)[keep_out]), None)
        out_off = np.zeros(spec.filters)  # without BN nothing is removed (its classes are fixed)
    return tensors, out_off


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def removed_layers(plan: Plan) -> set[int]:
    """Layer indices a plan removes: each unit's shortcut and its two convolutions."""
    return {j for s in plan.units for j in (s - 2, s - 1, s)}


def surviving(graph: Graph, plan: Plan) -> dict[int, int]:
    """Old layer index → new layer index of every layer the plan keeps."""
    removed = removed_layers(plan)
    out: dict[int, int] = {}
    for i in range(len(graph.specs)):
        if i not in removed:
            out[i] = len(out)
    return out


def pruned_cfg(cfg: Cfg, graph: Graph, plan: Plan) -> Cfg:
    """The cfg without the removed layers, with new filter counts and every index rewritten."""
    new_index = surviving(graph, plan)

    def target(j: int) -> int:
        while j in plan.units:  # a removed unit's output is its input
            j -= 3
        return new_index[j]

    layers: list[Section] = []
    for i, sec in enumerate(cfg.layers):
        if i not in new_index:
            continue
        out = Section(sec.kind, dict(sec.options))
        spec = graph.specs[i]
        me = new_index[i]
        if isinstance(spec, Conv) and i in plan.keep:
            out.set("filters", int(plan.keep[i].sum()))
        elif isinstance(spec, Shortcut | Route):
            key = "from" if isinstance(spec, Shortcut) else "layers"
            written = sec.get_ints(key)
            sources = (spec.source,) if isinstance(spec, Shortcut) else spec.sources
            # keep darknet's relative (negative) or absolute spelling of each index
            out.set(key, [target(j) - me if w < 0 else target(j) for w, j in zip(written, sources, strict=True)])
        layers.append(out)
    return Cfg(Section(cfg.net.kind, dict(cfg.net.options)), layers)
