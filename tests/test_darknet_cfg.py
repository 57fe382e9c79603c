"""cfg parsing, writing and the errors a bad cfg gives."""

from __future__ import annotations

import pytest

from slimyolo.darknet import build_graph, make_cfg, parse_cfg, parse_cfg_text
from slimyolo.darknet.zoo import ZOO
from slimyolo.errors import CfgError

TINY = """[net]
# comment
width=64
height=64
channels=3
burn_in=1000

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[shortcut]
from=-2
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58
classes=2
num=3
jitter=.3
ignore_thresh = .7
scale_x_y = 1.05
"""


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("classes", [1, 2, 80])
def test_round_trip_is_identical(name, classes, tmp_path):
    cfg = make_cfg(name, classes)
    path = tmp_path / "m.cfg"
    cfg.write(path)
    again = parse_cfg(path)
    assert again == cfg
    assert again.to_text() == cfg.to_text()
    path.write_text(again.to_text())
    assert parse_cfg(path) == cfg


def test_training_keys_and_comments_survive(tmp_path):
    cfg = parse_cfg_text(TINY, "tiny.cfg")
    assert cfg.net.options["burn_in"] == "1000"
    yolo = cfg.layers[-1]
    assert yolo.options["jitter"] == ".3" and yolo.options["ignore_thresh"] == ".7"
    written = cfg.to_text()
    assert "jitter=.3" in written and "anchors=10,14,  23,27,  37,58" in written
    assert parse_cfg_text(written) == cfg


def test_graph_shapes_of_handwritten_cfg():
    graph = build_graph(parse_cfg_text(TINY))
    assert graph.shapes == ((8, 32, 32), (8, 32, 32), (8, 32, 32), (21, 32, 32), (21, 32, 32))
    assert graph.inputs[2] == (1, 0)
    assert graph.yolo_layers() == [4] and graph.stride_of(4) == 2


def test_written_cfg_is_plain_darknet_format():
    text = make_cfg("yolov4-tiny", 2).to_text()
    for line in text.splitlines():
        assert line == "" or line.startswith("[") or ("=" in line and " " not in line.split("=")[0])
    assert "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" in text


@pytest.mark.parametrize(
    ("old", "new", "line", "layer", "needle"),
    [
        ("[shortcut]", "[dropout]", 24, 2, "unsupported section [dropout]"),
        ("filters=8\nsize=3\nstride=2", "filters=8x\nsize=3\nstride=2", 10, 0, "bad number '8x' for 'filters'"),
        ("activation=mish", "activation=tanh", 22, 1, "unsupported activation 'tanh'"),
        ("pad=1\nactivation=leaky", "pad=1\ndilation=2\nactivation=leaky", 14, 0, "unknown key 'dilation'"),
        ("from=-2", "from=-5", 25, 2, "index -5 points to layer -3"),
        ("from=-2", "from=7", 25, 2, "index 7 points to layer 7"),
        ("stride=1\npad=1\nactivation=mish", "stride=2\npad=1\nactivation=mish", 25, 2,
         "shortcut adds layer 0 of shape 8x32x32 to layer 1 of shape 8x16x16"),
        ("classes=2", "classes=3", 38, 4, "len(mask)*(5+classes) = 3*(5+3) = 24"),
        ("mask = 0,1,2", "mask = 0,1,5", 36, 4, "mask values [5] are outside 0..2"),
        ("jitter=.3", "jitter=.3\njitter=.2", 41, 4, "duplicate key 'jitter'"),
        ("[convolutional]\nsize=1", "[convolutional]\nsize=1\nfilters=21\nfilters=22", 31, 3, "duplicate key"),
    ],
)
def test_bad_cfg_names_file_line_and_layer(tmp_path, old, new, line, layer, needle):
    path = tmp_path / "bad.cfg"
    path.write_text(_with(TINY, old, new))
    with pytest.raises(CfgError) as err:
        parse_cfg(path)
    msg = str(err.value)
    assert needle in msg
    assert msg.startswith(f"{path}:{line}: layer {layer} ["), msg


def test_bad_route_index_and_mismatched_route(tmp_path):
    cfg = make_cfg("yolov3-tiny", 2, 416).to_text()
    path = tmp_path / "r.cfg"
    path.write_text(_with(cfg, "layers=-1,8", "layers=-1,30"))
    with pytest.raises(CfgError, match=r"layer 20 \[route\]: 'layers' index 30 points to layer 30"):
        parse_cfg(path)
    path.write_text(_with(cfg, "layers=-1,8", "layers=-1,6"))
    with pytest.raises(CfgError, match=r"route concatenates outputs of different sizes \(layer 19: 128x26x26, "
                                       r"layer 6: 128x52x52\)"):
        parse_cfg(path)


def test_structural_errors(tmp_path):
    with pytest.raises(CfgError, match="first section must be"):
        parse_cfg_text("[convolutional]\nfilters=1\n", "x.cfg")
    with pytest.raises(CfgError, match=r"x.cfg:1: option before the first section"):
        parse_cfg_text("width=3\n[net]\n", "x.cfg")
    with pytest.raises(CfgError, match=r"x.cfg:2: expected 'key=value'"):
        parse_cfg_text("[net]\nwidth 3\n", "x.cfg")
    with pytest.raises(CfgError, match="no \\[yolo\\] layer"):
        parse_cfg_text("[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=2\n", "x.cfg")
    with pytest.raises(CfgError, match="file not found"):
        parse_cfg(tmp_path / "missing.cfg")


def test_unsupported_training_key_value_is_rejected():
    text = _with(TINY, "from=-2", "from=-2\nweights_type=per_channel")
    with pytest.raises(CfgError, match="'weights_type=per_channel' is not supported"):
        parse_cfg_text(text, "t.cfg")
