"""The IR metadata document survives an IR save/load and rejects malformed input."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops

from slimyolo.darknet import build_graph, make_cfg
from slimyolo.errors import SlimYoloError
from slimyolo.infer.meta import InputSpec, ModelMeta, attach_meta, read_meta


def test_meta_round_trips_through_an_ir(tmp_path):
    heads = tuple(build_graph(make_cfg("yolov4", 2, 416)).heads())
    meta = ModelMeta(("car", "person"), InputSpec("images", 416, 416), heads, ("h0", "h1", "h2"),
                     model_name="demo", model_version="3", source={"cfg_sha256": "ab" * 32})
    param = ops.parameter([1, 3, 8, 8], np.float32, name="images")
    model = ov.Model([ops.relu(param)], [param], "m")
    attach_meta(model, meta)
    ov.save_model(model, tmp_path / "m.xml")
    back = read_meta(ov.Core().read_model(tmp_path / "m.xml"))
    assert back == meta
    assert back.heads[0].scale_x_y == 1.2 and back.heads[0].anchors[0] == (12.0, 16.0) and back.classes == 2


def test_missing_and_malformed_meta():
    param = ops.parameter([1, 3, 8, 8], np.float32, name="images")
    model = ov.Model([ops.relu(param)], [param], "m")
    with pytest.raises(SlimYoloError, match="carries no SlimYOLO metadata"):
        read_meta(model, "x.xml")
    with pytest.raises(SlimYoloError, match="metadata is malformed"):
        ModelMeta.from_json('{"format_version": 1, "names": []}')
    with pytest.raises(SlimYoloError, match="format 7 is not supported"):
        ModelMeta.from_json('{"format_version": 7}')
