"""Exactness of pruning: removing channels whose γ is 0 (and whole residual units whose last γ
is 0) must not change the raw head outputs, for every zoo model and a cfg full of edge cases.

A channel with γ = 0 outputs the constant act(β); pruning folds that constant into the next
layers. The fold is exact wherever the constant meets a 1×1 (or unpadded) convolution, through
any number of shortcuts, routes, upsamples and maxpools; at the zero-padded border of a k×k
convolution no per-channel bias can reproduce it (see slimyolo.prune.functional). So channels
whose constant reaches a padded k×k convolution get β = 0 as well (act(0) = 0), and all the
others keep their β, which exercises the fold through every kind of layer.

Outputs are compared in float64: these random-weight models amplify float32 rounding to ~3e-3
at the heads (float32 vs float64 of the *same* model), which would hide what is being tested.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from slimyolo.darknet import Cfg, Section, load_model, make_cfg, parse_cfg_text
from slimyolo.darknet.graph import Conv, Route, Shortcut, build_graph
from slimyolo.darknet.init import init_random_weights
from slimyolo.errors import SlimYoloError
from slimyolo.prune.algorithms import channel_masks, channel_threshold, prune_both, prune_channels, prune_layers
from slimyolo.prune.functional import Plan, surviving
from slimyolo.prune.groups import build_groups, residual_units
from slimyolo.prune.importance import bn_gammas, prunable_gammas
from slimyolo.prune.options import KeepOptions

SIZE = 96

# Edge cases the zoo does not have: a non-linear shortcut, a grouped convolution, absolute
# route indices, a maxpool, a convolution without BN inside the network tied by a shortcut,
# a route with groups on a shortcut output, and an upsample.
EDGE_CFG = """
[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=mish
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=swish
[shortcut]
from=-3
activation=leaky
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=linear
[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
groups=4
activation=relu
[route]
layers=4,6
[maxpool]
size=3
stride=1
[convolutional]
batch_normalize=1
filters=48
size=1
stride=1
pad=1
activation=leaky
[convolutional]
filters=24
size=1
stride=1
pad=1
activation=linear
[convolutional]
batch_normalize=1
filters=24
size=3
stride=1
pad=1
activation=leaky
[shortcut]
from=-2
activation=linear
[route]
layers=-1,9
groups=2
group_id=1
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky
[upsample]
stride=2
[route]
layers=-1,9
[convolutional]
batch_normalize=1
filters=40
size=1
stride=1
pad=1
activation=mish
[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear
[yolo]
mask=0,1,2
anchors=10,13,16,30,33,23
classes=2
num=3
"""


def mini_res_cfg(size: int = 64) -> Cfg:
    """A small two-head detector with five residual units: fast enough for CLI and sweep tests."""
    layers: list[Section] = []

    def conv(filters: int, size_: int, stride: int = 1, bn: bool = True, act: str = "leaky") -> None:
        opts = {"batch_normalize": 1} if bn else {}
        layers.append(Section.make("convolutional", **opts, filters=filters, size=size_, stride=stride, pad=1,
                                   activation=act))

    def unit(hidden: int, out: int) -> None:
        conv(hidden, 1)
        conv(out, 3)
        layers.append(Section.make("shortcut", from_=-3, activation="linear"))

    def head(mask: str) -> None:
        conv(21, 1, bn=False, act="linear")
        layers.append(Section.make("yolo", mask=mask, anchors="10,13,16,30,33,23,30,61,62,45,59,119",
                                   classes=2, num=6))

    conv(16, 3)
    conv(32, 3, 2)
    for _ in range(3):
        unit(16, 32)  # layers 2..10
    conv(64, 3, 2)  # 11
    for _ in range(2):
        unit(32, 64)  # 12..17
    conv(32, 1)  # 18
    conv(64, 3)  # 19
    head("3,4,5")  # 20, 21
    layers.append(Section.make("route", layers=-4))  # 22
    conv(16, 1)  # 23
    layers.append(Section.make("upsample", stride=2))  # 24
    layers.append(Section.make("route", layers=[-1, 10]))  # 25
    conv(32, 3)  # 26
    head("0,1,2")  # 27, 28
    return Cfg(Section.make("net", width=size, height=size, channels=3), layers)


@functools.cache
def _base(name: str) -> torch.nn.Module:
    cfg = parse_cfg_text(EDGE_CFG) if name == "edge" else make_cfg(name, 2, SIZE)
    return init_random_weights(load_model(cfg), seed=1)


def fresh(name: str):
    return copy.deepcopy(_base(name))


def heads64(model, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def max_diff(a, b) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True))


def border_classes(model) -> set[int]:
    """Classes whose constant would reach a zero-padded k×k convolution."""
    groups = build_groups(model.graph)
    out: set[int] = set()
    for i, spec in enumerate(model.graph.specs):
        if isinstance(spec, Conv) and spec.size > 1 and spec.padding > 0 and i > 0:
            out.update(groups.layer_classes[i - 1].tolist())
    return out


def zero_random_classes(model, seed: int, fraction: float = 0.5) -> tuple[set[int], int]:
    """γ = 0 on a random fraction of the prunable classes (β = 0 too where the fold is not exact).

    Returns the chosen classes and how many of their channels keep a non-zero β.
    """
    groups = build_groups(model.graph)
    border = border_classes(model)
    prunable = np.unique(np.concatenate([groups.conv_classes[i] for i in groups.prunable_convs()]))
    prunable = prunable[~groups.fixed[prunable]]
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(prunable, int(len(prunable) * fraction), replace=False).tolist())
    folded = 0
    with torch.no_grad():
        for i, block in model.conv_blocks():
            if block.bn is None:
                continue
            cls = groups.conv_classes[i]
            sel = torch.tensor([int(c) in chosen for c in cls])
            block.bn.weight[sel] = 0.0
            on_border = torch.tensor([int(c) in border for c in cls])
            block.bn.bias[sel & on_border] = 0.0
            folded += int((sel & ~on_border).sum())
    return chosen, folded


def percent_for_zeros(model) -> float:
    """A global percent whose threshold is 0: exactly the zeros are selected."""
    values = prunable_gammas(build_groups(model.graph), bn_gammas(model))
    return int((values == 0).sum()) / len(values)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny", "yolov4", "yolov4-tiny", "edge"])
def test_channel_pruning_of_zero_gamma_channels_is_exact(name):
    model = fresh(name)
    _, folded = zero_random_classes(model, seed=0)
    zeros_before = sum(int((b.bn.weight == 0).sum()) for _, b in model.conv_blocks() if b.bn is not None)
    x = torch.rand(1, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    percent = percent_for_zeros(model)
    result = prune_channels(model, percent, layer_keep=0.0)
    removed = result.before.params - result.after.params
    kept_zeros = sum(int((b.bn.weight == 0).sum()) for _, b in result.model.conv_blocks() if b.bn is not None)
    assert removed > (0.3 * result.before.params if name != "edge" else 0)
    # only floors and route-group chunks may keep a zero-γ channel
    assert kept_zeros <= 0.05 * zeros_before + 2
    ref = heads64(model, x)
    assert max_diff(ref, heads64(result.model, x)) < 1e-4

    # The β kept above really travels through the network: undoing the fold breaks exactness.
    assert folded > 0
    masks, _ = channel_masks(model, percent, KeepOptions(layer_keep=0.0))  # the masks of the result above
    blocks = dict(model.conv_blocks())
    with torch.no_grad():
        for (i, mask), (_, block) in zip(sorted(masks.items()), result.model.conv_blocks(), strict=True):
            if block.bn is not None:
                block.bn.running_mean.copy_(blocks[i].bn.running_mean[torch.from_numpy(mask)])
            else:
                block.conv.bias.copy_(blocks[i].conv.bias[torch.from_numpy(mask)])
    assert max_diff(ref, heads64(result.model, x)) > 1e-3


@pytest.mark.parametrize("name,layer_keep,round_to", [("yolov4-tiny", 0.3, 8), ("edge", 0.0, 4),
                                                      ("yolov3-spp", 0.1, 16)])
def test_floors_rounding_and_route_groups(name, layer_keep, round_to):
    model = fresh(name)
    zero_random_classes(model, seed=3, fraction=0.8)
    x = torch.rand(1, 3, *model.input_size, generator=torch.Generator().manual_seed(1))
    result = prune_channels(model, percent_for_zeros(model), layer_keep=layer_keep, round_to=round_to)
    prunable = set(build_groups(model.graph).prunable_convs())
    for row in result.channels:
        if row["layer"] in prunable:
            assert row["kept"] >= max(np.ceil(layer_keep * row["filters"]), 1)
            assert row["kept"] % round_to == 0 or row["kept"] == row["filters"]
        else:
            assert row["kept"] == row["filters"]
    assert max_diff(heads64(model, x), heads64(result.model, x)) < 1e-4


def test_shortcut_chains_are_merged_with_or():
    """Channel k of every convolution tied by a shortcut chain stays if any of them needs it."""
    model = fresh("yolov3")
    groups = build_groups(model.graph)
    chain = [i for i, cls in groups.conv_classes.items() if np.array_equal(cls, groups.conv_classes[1])]
    assert chain == [1, 3]  # the downsample convolution and the 3x3 convolution of the first unit
    with torch.no_grad():
        for i in chain:
            model.module_list[i].bn.weight.zero_()
        model.module_list[3].bn.weight[7] = 5.0  # one member keeps channel 7 alive
    result = prune_channels(model, 0.01, layer_keep=0.0)
    kept = {row["layer"]: row["kept"] for row in result.channels}
    assert kept[1] == kept[3] == 1
    assert result.model.graph.shapes[4][0] == 1


def test_route_indices_are_rewritten_when_units_go():
    model = fresh("yolov3")
    graph = model.graph
    units = residual_units(graph)
    assert len(units) == 23
    with torch.no_grad():
        for s in units[::3]:  # γ = 0 and β = 0: the unit outputs exactly its input
            model.module_list[s - 1].bn.weight.zero_()
            model.module_list[s - 1].bn.bias.zero_()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    result = prune_layers(model, len(units[::3]))
    assert [u["shortcut"] for u in result.removed_units] == units[::3]
    new = parse_cfg_text(result.cfg.to_text())  # validates every index and shape
    new_graph = build_graph(new)
    old_of = {v: k for k, v in surviving(graph, _plan_of(result)).items()}

    def resolve(j: int) -> int:
        while j in units[::3]:
            j -= 3
        return j

    for n, spec in enumerate(new_graph.specs):
        old = graph.specs[old_of[n]]
        assert type(spec) is type(old)
        if isinstance(spec, Route):
            assert [old_of[j] for j in spec.sources] == [resolve(j) for j in old.sources]
        elif isinstance(spec, Shortcut):
            assert old_of[spec.source] == resolve(old.source)
    assert [graph.shapes[h.layer] for h in graph.heads()] == [new_graph.shapes[h.layer] for h in new_graph.heads()]
    assert result.after.layers == result.before.layers - 3 * len(units[::3])
    assert max_diff(heads64(model, x), heads64(result.model, x)) < 1e-6


def _plan_of(result) -> Plan:
    return Plan(units=frozenset(u["shortcut"] for u in result.removed_units))


def test_both_is_exact_on_zero_gammas_and_uses_the_original_threshold():
    """yolov4 (CSP routes): units whose last γ is 0 keep their β, so their act(β) is folded
    (it lands in 1x1 convolutions, exactly), together with the zero-γ channels."""
    model = fresh("yolov4")
    units = residual_units(model.graph)
    zero_random_classes(model, seed=5)
    with torch.no_grad():
        for s in units[:6]:
            model.module_list[s - 1].bn.weight.zero_()
    percent = percent_for_zeros(model)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    result = prune_both(model, percent, 6, layer_keep=0.0)
    assert result.settings["threshold"] == channel_threshold(model, percent)
    assert [u["shortcut"] for u in result.removed_units] == units[:6]
    assert result.after.params < 0.5 * result.before.params
    assert max_diff(heads64(model, x), heads64(result.model, x)) < 1e-4


def test_unit_candidates_exclude_what_would_change_the_network():
    graph = _base("edge").graph
    assert residual_units(graph) == []  # its only 3-layer unit ends in a leaky shortcut
    groups = build_groups(graph)
    fixed_layers = [i for i, cls in groups.conv_classes.items() if groups.fixed[cls].all()]
    # the grouped conv and its input, the BN-less conv and the conv tied to it, the head
    assert fixed_layers == [5, 6, 10, 11, 18]
    with pytest.raises(SlimYoloError, match="cannot remove 1 residual units: the model has 0"):
        prune_layers(fresh("yolov4-tiny"), 1)
