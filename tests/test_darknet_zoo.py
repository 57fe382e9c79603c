"""The zoo against facts of darknet's official cfgs (stated here, never read from disk).

With 80 classes each generator must have the official layer structure: the layer count and
kinds, every route (absolute sources), the yolo layers and their masks, the maxpools, the
stride-2 convolutions, the activations, and the parameter count the model is known by.
"""

from __future__ import annotations

from collections import Counter

import pytest

from slimyolo.darknet import build_graph, make_cfg, model_stats
from slimyolo.darknet.graph import Conv, MaxPool, Route, Shortcut, Yolo
from slimyolo.darknet.zoo import ZOO, parse_size
from slimyolo.errors import SlimYoloError

OFFICIAL = {
    "yolov3": dict(
        layers=107, kinds={"convolutional": 75, "shortcut": 23, "yolo": 3, "route": 4, "upsample": 2},
        routes={83: (79,), 86: (85, 61), 95: (91,), 98: (97, 36)},
        yolo={82: (6, 7, 8), 94: (3, 4, 5), 106: (0, 1, 2)}, maxpool=[],
        activations={"leaky": 72, "linear": 3}, stride2=[1, 5, 12, 37, 62], params=61_949_149),
    "yolov3-spp": dict(
        layers=114, kinds={"convolutional": 76, "shortcut": 23, "maxpool": 3, "route": 7, "yolo": 3, "upsample": 2},
        routes={79: (77,), 81: (77,), 83: (82, 80, 78, 77), 90: (86,), 93: (92, 61), 102: (98,), 105: (104, 36)},
        yolo={89: (6, 7, 8), 101: (3, 4, 5), 113: (0, 1, 2)}, maxpool=[(78, 5, 1), (80, 9, 1), (82, 13, 1)],
        activations={"leaky": 73, "linear": 3}, stride2=[1, 5, 12, 37, 62], params=62_998_749),
    "yolov3-tiny": dict(
        layers=24, kinds={"convolutional": 13, "maxpool": 6, "yolo": 2, "route": 2, "upsample": 1},
        routes={17: (13,), 20: (19, 8)}, yolo={16: (3, 4, 5), 23: (0, 1, 2)},
        maxpool=[(1, 2, 2), (3, 2, 2), (5, 2, 2), (7, 2, 2), (9, 2, 2), (11, 2, 1)],
        activations={"leaky": 11, "linear": 2}, stride2=[], params=8_852_366),
    "yolov4": dict(
        layers=162, kinds={"convolutional": 110, "route": 21, "shortcut": 23, "maxpool": 3, "upsample": 2, "yolo": 3},
        routes={3: (1,), 9: (8, 2), 13: (11,), 22: (21, 12), 26: (24,), 53: (52, 25), 57: (55,), 84: (83, 56),
                88: (86,), 103: (102, 87), 109: (107,), 111: (107,), 113: (112, 110, 108, 107), 119: (85,),
                121: (120, 118), 129: (54,), 131: (130, 128), 140: (136,), 142: (141, 126), 151: (147,),
                153: (152, 116)},
        yolo={139: (0, 1, 2), 150: (3, 4, 5), 161: (6, 7, 8)}, maxpool=[(108, 5, 1), (110, 9, 1), (112, 13, 1)],
        activations={"mish": 72, "leaky": 35, "linear": 3}, stride2=[1, 11, 24, 55, 86, 141, 152],
        params=64_363_101),
    "yolov4-tiny": dict(
        layers=38, kinds={"convolutional": 21, "route": 11, "maxpool": 3, "yolo": 2, "upsample": 1},
        routes={3: (2,), 6: (5, 4), 8: (2, 7), 11: (10,), 14: (13, 12), 16: (10, 15), 19: (18,), 22: (21, 20),
                24: (18, 23), 31: (27,), 34: (33, 23)},
        yolo={30: (3, 4, 5), 37: (1, 2, 3)}, maxpool=[(9, 2, 2), (17, 2, 2), (25, 2, 2)],
        activations={"leaky": 19, "linear": 2}, stride2=[0, 1], params=6_056_606),
}
GROUPED_ROUTES = {"yolov4-tiny": [3, 11, 19]}  # route groups=2 group_id=1

# darknet's printed totals (AlexeyAB's fork) and the rounded figures published with the cfgs.
DARKNET_BFLOPS = {("yolov3", 416): (65.879, 65.9), ("yolov3-spp", 608): (141.531, 141.5),
                  ("yolov4", 416): (60.137, 60.1), ("yolov4-tiny", 416): (6.910, 6.9),
                  ("yolov3-tiny", 416): (5.571, 5.6), ("yolov4", 608): (128.459, 128.5)}


@pytest.mark.parametrize("name", list(ZOO))
def test_structure_matches_official_cfg(name):
    facts = OFFICIAL[name]
    cfg = make_cfg(name, 80, 416)
    graph = build_graph(cfg)
    specs = graph.specs
    assert len(cfg.layers) == facts["layers"]
    assert Counter(s.kind for s in cfg.layers) == facts["kinds"]
    assert {i: s.sources for i, s in enumerate(specs) if isinstance(s, Route)} == facts["routes"]
    assert [i for i, s in enumerate(specs) if isinstance(s, Route) and s.groups == 2] == GROUPED_ROUTES.get(name, [])
    assert {i: s.mask for i, s in enumerate(specs) if isinstance(s, Yolo)} == facts["yolo"]
    assert [(i, s.size, s.stride) for i, s in enumerate(specs) if isinstance(s, MaxPool)] == facts["maxpool"]
    assert Counter(s.activation for s in specs if isinstance(s, Conv)) == facts["activations"]
    assert [i for i, s in enumerate(specs) if isinstance(s, Conv) and s.stride == 2] == facts["stride2"]
    assert all(s.source == i - 3 for i, s in enumerate(specs) if isinstance(s, Shortcut))
    assert model_stats(cfg).params == facts["params"]


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("classes", [1, 2, 7, 80])
def test_head_filters_follow_classes(name, classes):
    cfg = make_cfg(name, classes)
    graph = build_graph(cfg)
    for i in graph.yolo_layers():
        yolo, conv = graph.specs[i], graph.specs[i - 1]
        assert conv.filters == len(yolo.mask) * (5 + classes)
        assert conv.activation == "linear" and not conv.batch_normalize
        assert yolo.classes == classes
    # Only the head convolutions depend on the class count.
    base = build_graph(make_cfg(name, 80))
    heads = {i - 1 for i in graph.yolo_layers()}
    assert [s for i, s in enumerate(graph.specs) if i not in heads and not isinstance(s, Yolo)] == \
        [s for i, s in enumerate(base.specs) if i not in heads and not isinstance(s, Yolo)]


@pytest.mark.parametrize(("name", "size"), list(DARKNET_BFLOPS))
def test_bflops_match_darknet(name, size):
    printed, published = DARKNET_BFLOPS[(name, size)]
    bflops = model_stats(make_cfg(name, 80, size)).bflops
    assert abs(bflops - printed) / printed < 0.0002
    # Within 0.5% of the published figure, or within its rounding (5.571 is published as 5.6).
    assert abs(bflops - published) <= max(0.005 * published, 0.05)


def test_two_class_figures_of_the_original_projects():
    # The pruning projects report these for their 2-class, 416 baselines.
    assert round(model_stats(make_cfg("yolov3-spp", 2, 416)).bflops, 2) == 65.69
    assert round(model_stats(make_cfg("yolov4", 2, 416)).bflops, 2) == 59.57


def test_sizes_and_errors():
    assert parse_size("416") == (416, 416)
    assert parse_size("416x320") == (320, 416)
    cfg = make_cfg("yolov4-tiny", 3, "320x256")
    assert (cfg.width, cfg.height) == (320, 256)
    with pytest.raises(SlimYoloError, match="multiples of 32"):
        parse_size("300")
    with pytest.raises(SlimYoloError, match="expected N or WxH"):
        parse_size("big")
    with pytest.raises(SlimYoloError, match="unknown model 'yolov9'"):
        make_cfg("yolov9")
    with pytest.raises(SlimYoloError, match="classes must be at least 1"):
        make_cfg("yolov3", 0)


@pytest.mark.parametrize("name", list(ZOO))
def test_width_multiple_scales_every_convolution_but_the_heads(name):
    full = build_graph(make_cfg(name, 2, 128))
    quarter = build_graph(make_cfg(name, 2, 128, width=0.25))
    heads = {i - 1 for i in full.yolo_layers()}
    assert [type(s) for s in quarter.specs] == [type(s) for s in full.specs]
    for i, (a, b) in enumerate(zip(full.specs, quarter.specs, strict=True)):
        if isinstance(a, Conv):
            expected = a.filters if i in heads else max(8, round(a.filters / 4 / 8) * 8)
            assert b.filters == expected, i
    assert model_stats(make_cfg(name, 2, 128, width=0.25)).params < 0.1 * model_stats(make_cfg(name, 2, 128)).params
    with pytest.raises(SlimYoloError, match="width must be in"):
        make_cfg(name, 2, 128, width=0.0)
