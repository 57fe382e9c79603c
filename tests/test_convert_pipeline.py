"""``convert``: the model-repository output, its metadata and report, the input variants, FP16,
ONNX, the CLI, and bad input (clear error, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest
import torch
from openvino import opset15 as ops

from slimyolo.convert import convert, ir
from slimyolo.convert.calib import to_tensor
from slimyolo.convert.options import ConvertOptions
from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.model import Darknet
from slimyolo.data.letterbox import letterbox
from slimyolo.data.synth import render_image
from slimyolo.errors import Cancelled, CfgError, NotFoundError, SlimYoloError, WeightsError
from slimyolo.infer.decode import decode
from slimyolo.infer.meta import InputSpec, read_meta
from slimyolo.progress import StageStep
from slimyolo.store import hash_file

SIZE = 96
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A yolov4-tiny (2 classes, 96x96) cfg and random .weights."""
    d = tmp_path_factory.mktemp("tiny")
    cfg = make_cfg("yolov4-tiny", 2, SIZE)
    cfg.write(d / "tiny.cfg")
    init_random_weights(Darknet(cfg), 0).save_darknet_weights(d / "tiny.weights")
    return d / "tiny.cfg", d / "tiny.weights"


def frames(n: int, long_side: int = 150) -> list[np.ndarray]:
    """Synthetic-data-set frames (BGR uint8, not of the model's size)."""
    return [render_image(2, long_side, np.random.default_rng(100 + i))[0] for i in range(n)]


def torch_heads(cfg, weights, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in load_model(cfg, weights)(torch.from_numpy(x))]


def max_diff(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max(float(np.abs(g - r).max()) for r, g in zip(ref, got, strict=True))


def magnitude(heads: list[np.ndarray]) -> float:
    return max(float(np.abs(h).max()) for h in heads)


def test_tf_conversion_writes_a_checked_model_version(tiny, tmp_path):
    cfg, weights = tiny
    events: list[StageStep] = []
    res = convert(cfg, weights, tmp_path, names=["cat", "dog"], progress=events.append)
    assert res.path == tmp_path / "tiny" / "1" and res.via == "tf"
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1"]  # no temporary folder left
    assert sorted(p.name for p in res.path.iterdir()) == ["conversion.json", "model.bin", "model.xml"]

    ov_model = ov.Core().read_model(res.xml)
    meta = read_meta(ov_model)
    assert meta == res.meta
    assert meta.names == ("cat", "dog") and meta.precision == "fp32"
    assert (meta.model_name, meta.model_version) == ("tiny", "1")
    assert meta.input == InputSpec("images", SIZE, SIZE, "NCHW", "f32", "RGB", True, False, 114)
    assert meta.source["cfg_sha256"] == hash_file(cfg)[0] and meta.source["weights_sha256"] == hash_file(weights)[0]
    assert meta.heads == tuple(load_model(cfg).heads)
    assert ov_model.inputs[0].get_any_name() == "images"
    assert ov_model.inputs[0].get_partial_shape() == ov.PartialShape([-1, 3, SIZE, SIZE])
    assert ov_model.inputs[0].get_element_type() == ov.Type.f32
    assert [o.get_any_name() for o in ov_model.outputs] == list(meta.outputs) == ["yolo_30", "yolo_37"]

    doc = json.loads((res.path / "conversion.json").read_text())
    assert doc["precision"] == "fp32" and doc["via"] == "tf" and doc["parity"]["passed"]
    assert [c["other"] for c in doc["parity"]["comparisons"]] == ["keras", "ir_fp32", "saved_fp32"]
    for c in doc["parity"]["comparisons"]:
        for h in c["heads"]:
            assert h["max_abs"] <= TOL
    for name, f in doc["files"].items():
        assert [f["sha256"], f["size_bytes"]] == list(hash_file(res.path / name))
    assert {"openvino", "tensorflow-cpu", "keras", "torch"} <= set(doc["tools"])
    steps = [e.step for e in events]
    assert steps[0] == "load" and steps[-1] == "done" and {"keras", "ir", "parity", "save"} <= set(steps)
    assert all(isinstance(e, StageStep) and e.stage == "convert" for e in events)
    assert events[-1].details["path"] == str(res.path) and isinstance(events[-1].details["seconds"], float)

    # What the engine sees: the IR's heads decode to the PyTorch model's boxes and scores.
    x = to_tensor(frames(2), SIZE, SIZE)
    ref = torch_heads(cfg, weights, x)
    got = ir.run(ir.compile_f32(str(res.xml)), x, meta.outputs)
    assert max_diff(ref, got) <= TOL
    np.testing.assert_allclose(decode(got, meta.heads), decode(ref, meta.heads), rtol=1e-3, atol=1e-3)


def test_versions_and_the_torch_path(tiny, tmp_path):
    cfg, weights = tiny
    torch_path = ConvertOptions(via="torch")  # the options taken whole, with a change on top of them
    first = convert(cfg, weights, tmp_path, torch_path, name="det", ppp="fixed")
    second = convert(cfg, weights, tmp_path, torch_path, name="det")
    assert (first.version, second.version) == ("1", "2")
    assert [c.other for c in first.parity.comparisons] == ["ir_fp32", "saved_fp32"]
    assert first.meta.source["via"] == "torch" and first.meta.names == ("class0", "class1")
    spec = first.meta.input
    assert (spec.layout, spec.element_type, spec.color, spec.normalized, spec.resize_inside) == \
        ("NHWC", "u8", "BGR", False, False)
    ov_model = ov.Core().read_model(first.xml)
    assert ov_model.inputs[0].get_element_type() == ov.Type.u8
    assert ov_model.inputs[0].get_partial_shape() == ov.PartialShape([-1, SIZE, SIZE, 3])
    assert second.meta.input == InputSpec("images", SIZE, SIZE)
    before = sorted(p.name for p in first.path.iterdir())
    with pytest.raises(SlimYoloError, match="already exists"):
        convert(cfg, weights, tmp_path, via="torch", name="det", version=1)
    assert sorted(p.name for p in first.path.iterdir()) == before


def test_u8_bgr_input_variants_match_pytorch(tiny):
    cfg, weights = tiny
    model = load_model(cfg, weights)
    plain = ir.from_torch(model, model.heads)
    names = ir.output_names(model.heads)
    for mode in ("fixed", "resize"):
        ppp_model = ir.add_preprocessing(plain.clone(), mode, SIZE, SIZE)
        assert ppp_model.inputs[0].get_partial_shape() == (ov.PartialShape([-1, -1, -1, 3]) if mode == "resize"
                                                           else ov.PartialShape([-1, SIZE, SIZE, 3]))
        compiled = ir.compile_f32(ppp_model)
        for frame in frames(2):
            canvas, _ = letterbox(frame, SIZE, SIZE)
            ref = torch_heads(cfg, weights, to_tensor([frame], SIZE, SIZE))
            got = ir.run(compiled, (frame if mode == "resize" else canvas)[None], names)
            # fixed: the same pixels; resize: OpenVINO's bilinear works on floats, OpenCV's rounds to bytes
            assert max_diff(ref, got) <= (TOL if mode == "fixed" else 0.05 * magnitude(ref)), mode


def test_letterbox_inside_the_ir_matches_the_host_letterbox():
    param = ops.parameter([-1, 3, 64, 96], np.float32, name="images")
    identity = ov.Model([ops.multiply(param, ops.constant(np.float32(255)))], [param], "identity")
    compiled = ir.compile_f32(ir.add_preprocessing(identity, "resize", 64, 96))
    rng = np.random.default_rng(0)
    for shape in [(90, 150, 3), (64, 96, 3), (200, 100, 3), (33, 47, 3), (31, 97, 3), (480, 640, 3)]:
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        canvas, lb = letterbox(frame, 64, 96)
        want = canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        got = compiled(frame[None])[0][0]
        assert np.abs(got - want).max() <= 1.0, shape  # OpenCV rounds the resized pixels to bytes
        top, left = int(lb.pad_y), int(lb.pad_x)
        new_h, new_w = round(shape[0] * lb.ratio), round(shape[1] * lb.ratio)
        border = np.ones((64, 96), bool)
        border[top:top + new_h, left:left + new_w] = False
        assert (got[:, border] == 114).all()


def test_bad_inputs_write_nothing(tiny, tmp_path):
    cfg, weights = tiny
    out = tmp_path / "out"
    other = tmp_path / "v3tiny.weights"
    init_random_weights(Darknet(make_cfg("yolov3-tiny", 2, SIZE)), 0).save_darknet_weights(other)
    with pytest.raises(WeightsError, match=r"v3tiny\.weights: the file is too long for this cfg"):
        convert(cfg, other, out)
    bad_cfg = tmp_path / "reorg.cfg"
    bad_cfg.write_text(cfg.read_text().replace("[maxpool]", "[reorg]", 1))
    with pytest.raises(CfgError, match=r"reorg.cfg:\d+: layer \d+ \[reorg\]: unsupported section"):
        convert(bad_cfg, weights, out)
    with pytest.raises(NotFoundError, match="no-such-folder: no such calibration data"):
        convert(cfg, weights, out, precision="int8", calib_data=tmp_path / "no-such-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlimYoloError, match="empty: no images"):
        convert(cfg, weights, out, precision="int8", calib_data=tmp_path / "empty")
    with pytest.raises(NotFoundError, match=r"missing\.weights: no such weights file"):
        convert(cfg, tmp_path / "missing.weights", out)
    with pytest.raises(SlimYoloError, match="3 class names for a model with 2 classes"):
        convert(cfg, weights, out, names=["a", "b", "c"])
    with pytest.raises(SlimYoloError, match="accuracy control applies to INT8"):
        convert(cfg, weights, out, accuracy_control=True)
    assert not out.exists()


def test_parity_failure_and_cancel_write_nothing(tiny, tmp_path, monkeypatch):
    cfg, weights = tiny
    from slimyolo.convert import keras_model

    # A classic conversion bug: a BatchNorm epsilon other than darknet's (Keras defaults to 1e-3).
    monkeypatch.setattr(keras_model, "BN_EPS", 1e-3)
    with pytest.raises(SlimYoloError, match=r"failed the parity check: ir_fp32 differs from torch by .* float64 run"):
        convert(cfg, weights, tmp_path, via="tf")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def cancel_at_publish(event: StageStep) -> None:
        if event.step == "publish":  # everything is written, the folder not yet renamed into place
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        convert(cfg, weights, tmp_path, via="torch", progress=cancel_at_publish)
    assert list(tmp_path.iterdir()) == []


def test_cli_fp16_onnx_and_frames_input(tiny, tmp_path, run_cli):
    cfg, weights = tiny
    code, out, err = run_cli("convert", "--cfg", cfg, "--weights", weights, "--out", tmp_path, "--via", "torch",
                             "--name", "m", "--precision", "fp16", "--onnx", "--ppp")
    assert code == 0, err
    assert f"wrote {tmp_path / 'm' / '1'} (fp16, via torch" in out and "ir_fp32 vs torch" in out and " ok" in out
    assert "] save" in err  # progress on stderr
    folder = tmp_path / "m" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["conversion.json", "model.bin", "model.onnx", "model.xml"]
    meta = read_meta(ov.Core().read_model(folder / "model.xml"))
    assert meta.input.resize_inside and meta.precision == "fp16"
    assert 'element_type="f16"' in (folder / "model.xml").read_text()
    by_name = {c["other"]: c for c in json.loads((folder / "conversion.json").read_text())["parity"]["comparisons"]}
    assert by_name["ir_fp32"]["max_abs"] <= TOL and by_name["onnxruntime"]["max_abs"] <= TOL
    # FP16 weights and the letterbox inside the IR: small, real differences (reported, not gated)
    assert 1e-5 < by_name["saved_fp16"]["max_rel"] <= 0.05 and not by_name["saved_fp16"]["gated"]
    import onnx

    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["yolo_30", "yolo_37"]

    code, out, err = run_cli("convert", "--cfg", cfg, "--weights", tmp_path / "nope.weights", "--out", tmp_path)
    assert code == 2 and "nope.weights: no such weights file" in err
    code, out, err = run_cli("convert", "--cfg", cfg, "--weights", weights, "--out", tmp_path, "--img-size", "100")
    assert code == 2 and "multiples of 32" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
