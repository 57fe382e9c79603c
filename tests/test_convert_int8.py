"""INT8 conversion of a small trained detector keeps its mAP@0.5 on the synthetic set.

A 120k-parameter one-class detector is trained for 25 epochs on 64 synthetic images (about
15 s on one core; mAP@0.5 ≈ 0.32 on the 24 validation images when written). Plain
``nncf.quantize`` calibrated on the training split scored 0.306 against FP32's 0.325 (−1.9
points); with accuracy control at ``max_drop=0.01`` NNCF kept some operations in FP32 and
scored 0.322 (−0.3 points).
"""

from __future__ import annotations

import openvino as ov
import pytest
import torch

from slimyolo.convert import convert, ir
from slimyolo.convert.accuracy import map50
from slimyolo.convert.calib import open_source
from slimyolo.data.augment import AugmentConfig
from slimyolo.data.synth import write_synthetic
from slimyolo.errors import SlimYoloError
from slimyolo.infer.meta import read_meta
from slimyolo.train.config import TrainConfig
from slimyolo.train.trainer import train


def _conv(filters: int, size: int, stride: int) -> str:
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            "activation=leaky\n\n")


MINI_CFG = ("[net]\nwidth=96\nheight=96\nchannels=3\n\n" + _conv(16, 3, 2) + _conv(32, 3, 2) + _conv(64, 3, 2)
            + _conv(32, 1, 1) + _conv(64, 3, 1) + "[shortcut]\nfrom=-3\nactivation=linear\n\n" + _conv(128, 3, 2)
            + "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=18\nactivation=linear\n\n"
            + "[yolo]\nmask=0,1,2\nanchors=14,14, 30,30, 60,60\nclasses=1\nnum=3\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    data = write_synthetic(root / "synth", classes=1, train=64, val=24, size=96, seed=0)
    (root / "mini.cfg").write_text(MINI_CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: OpenMP hand-offs would cost more than they give
    try:
        result = train(TrainConfig(data=str(data), cfg=str(root / "mini.cfg"), out=str(root / "run"), img_size=96,
                                   epochs=25, batch_size=8, optimizer="adam", lr0=0.005, threads=1,
                                   eval_interval=100, augment=AugmentConfig(mosaic=0.0)))
    finally:
        torch.set_num_threads(threads)
    assert result.best_map50 > 0.15  # it learned something worth keeping
    return root, data, result


def test_int8_keeps_map(trained, tmp_path):
    _, data, result = trained
    res = convert(None, result.best, tmp_path, name="mini", precision="int8", calib_data=data, via="torch")
    info = res.summary["int8"]
    assert info["calibration_images"] == 64 and info["map50_images"] == 24 and not info["accuracy_control"]
    # the FP32 IR scores what PyTorch scored on the same images, through the same evaluator
    assert info["map50_fp32"] == pytest.approx(result.best_map50, abs=1e-3)
    assert abs(info["map50_int8"] - info["map50_fp32"]) <= 0.04
    xml = res.xml.read_text()
    assert "FakeQuantize" in xml and res.meta.precision == "int8" and res.meta.names == ("circle",)
    # the written IR is the one that was measured
    source = open_source(data, tmp_path)
    saved = ir.compile_f32(ov.Core().read_model(res.xml))
    assert map50(saved, source, res.meta.heads, (96, 96)) == pytest.approx(info["map50_int8"], abs=1e-9)
    assert read_meta(ov.Core().read_model(res.xml)) == res.meta


def test_int8_with_accuracy_control(trained, tmp_path):
    _, data, result = trained
    res = convert(None, result.best, tmp_path, precision="int8", calib_data=data.parent, via="torch",
                  accuracy_control=True, max_drop=0.01)
    info = res.summary["int8"]
    assert info["accuracy_control"] and info["max_drop"] == 0.01
    assert info["map50_int8"] >= info["map50_fp32"] - 0.01
    assert "FakeQuantize" in res.xml.read_text()


def test_accuracy_control_needs_labels(trained, tmp_path):
    root, _, result = trained
    images = root / "synth" / "images" / "valid"
    with pytest.raises(SlimYoloError, match=r"accuracy control measures mAP@0\.5 and needs labelled images"):
        convert(None, result.best, tmp_path, precision="int8", calib_data=images, via="torch", accuracy_control=True)
    assert list(tmp_path.iterdir()) == []
