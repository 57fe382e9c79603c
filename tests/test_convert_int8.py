"""INT8 conversion of a small trained detector keeps its mAP@0.5 on the synthetic set.

The model is the suite's shared ``trained_mini`` (conftest: a 121k-parameter 2-class detector
trained 25 epochs on 64 synthetic images, validated on 24). Plain ``nncf.quantize``
calibrated on its training split, and ``nncf.quantize_with_accuracy_control`` at
``max_drop=0.01``, are measured on the validation split with the project's evaluator; the
figures when written are in the test docstrings.
"""

from __future__ import annotations

import openvino as ov
import pytest

from slimyolo.convert import convert, ir
from slimyolo.convert.accuracy import map50
from slimyolo.convert.calib import open_source
from slimyolo.errors import SlimYoloError
from slimyolo.infer.meta import read_meta

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_int8_keeps_map(trained_mini, tmp_path):
    """mAP@0.5 when written: PyTorch 0.241, FP32 IR 0.241, INT8 0.228 (−1.3 points)."""
    res = convert(None, trained_mini.weights, tmp_path, name="mini", precision="int8", calib_data=trained_mini.data,
                  via="torch")
    info = res.summary["int8"]
    assert info["calibration_images"] == 64 and info["map50_images"] == 24 and not info["accuracy_control"]
    # the FP32 IR scores what PyTorch scored on the same images, through the same evaluator
    assert info["map50_fp32"] == pytest.approx(trained_mini.map50, abs=1e-3)
    assert abs(info["map50_int8"] - info["map50_fp32"]) <= 0.04
    assert "FakeQuantize" in res.xml.read_text() and res.meta.precision == "int8"
    assert res.meta.names == ("circle", "square")  # the data set's names
    # the written IR is the one that was measured
    saved = ir.compile_f32(ov.Core().read_model(res.xml))
    source = open_source(trained_mini.data, tmp_path)
    assert map50(saved, source, res.meta.heads, (96, 96)) == pytest.approx(info["map50_int8"], abs=1e-9)
    assert read_meta(ov.Core().read_model(res.xml)) == res.meta


def test_int8_with_accuracy_control(trained_mini, tmp_path):
    """mAP@0.5 when written: FP32 0.241, INT8 with accuracy control 0.232 (−0.9 points, within 0.01)."""
    res = convert(trained_mini.cfg, trained_mini.darknet_weights, tmp_path, precision="int8",
                  calib_data=trained_mini.data.parent, via="torch", accuracy_control=True, max_drop=0.01)
    info = res.summary["int8"]
    assert info["accuracy_control"] and info["max_drop"] == 0.01
    assert info["map50_int8"] >= info["map50_fp32"] - 0.01
    assert "FakeQuantize" in res.xml.read_text()


def test_accuracy_control_needs_labels(trained_mini, tmp_path):
    images = trained_mini.data.parent / "images" / "valid"
    with pytest.raises(SlimYoloError, match=r"accuracy control measures mAP@0\.5 and needs labelled images"):
        convert(None, trained_mini.weights, tmp_path, precision="int8", calib_data=images, via="torch",
                accuracy_control=True)
    assert list(tmp_path.iterdir()) == []
