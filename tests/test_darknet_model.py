"""The PyTorch model: output shapes over the zoo, input checks, and agreement with OpenCV's
independent darknet reader on the cfg and .weights SlimYOLO writes."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.model import Darknet, seeded_model
from slimyolo.darknet.zoo import ZOO
from slimyolo.errors import SlimYoloError

EXPECTED_STRIDES = {"yolov3": [32, 16, 8], "yolov3-spp": [32, 16, 8], "yolov3-tiny": [32, 16],
                    "yolov4": [8, 16, 32], "yolov4-tiny": [32, 16]}


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("hw", [(128, 128), (96, 160)])
def test_forward_shapes(name, classes, hw):
    model = load_model(make_cfg(name, classes), img_size=hw)
    assert model.input_size == hw
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        heads = model(x)
    assert [h.stride for h in model.heads] == EXPECTED_STRIDES[name]
    assert len(heads) == len(model.heads)
    for out, head in zip(heads, model.heads, strict=True):
        assert out.shape == (2, len(head.anchors) * (5 + classes), hw[0] // head.stride, hw[1] // head.stride)
        assert torch.isfinite(out).all()


def test_train_mode_returns_the_same_raw_heads():
    model = init_random_weights(load_model(make_cfg("yolov4-tiny", 2, 128)), seed=3)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        eval_heads = model(x)
        model.train()
        for m in model.modules():  # freeze BN statistics so train mode uses the same ones
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        train_heads = model(x)
    for a, b in zip(eval_heads, train_heads, strict=True):
        assert torch.equal(a, b)


def test_bad_input_tensor_is_a_clear_error():
    model = load_model(make_cfg("yolov3-tiny", 2, 128))
    with pytest.raises(SlimYoloError, match=r"model input must be \(N, 3, H, W\), got \(1, 1, 128, 128\)"):
        model(torch.rand(1, 1, 128, 128))
    with pytest.raises(SlimYoloError, match="multiples of 32, got 100x128"):
        model(torch.rand(1, 3, 100, 128))


def test_random_init_is_sane_at_depth():
    model = init_random_weights(load_model(make_cfg("yolov4", 2, 160)), seed=0)
    bns = [b.bn for _, b in model.conv_blocks() if b.bn is not None]
    assert all(float(bn.running_var.min()) > 1e-3 for bn in bns)
    assert float(torch.stack([bn.running_mean.std() for bn in bns]).min()) > 0  # channel-specific
    with torch.no_grad():
        heads = model(torch.rand(1, 3, 160, 160))
    for h in heads:
        assert 0.05 < float(h.abs().mean()) < 20


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov4-tiny", "yolov3-spp", "yolov4"])
def test_opencv_darknet_reader_agrees(name, tmp_path):
    """OpenCV's darknet importer reads our cfg + .weights and computes the same heads."""
    cfg = make_cfg(name, 2, 128)
    model = init_random_weights(load_model(cfg), seed=7)
    cfg.write(tmp_path / "m.cfg")
    model.save_darknet_weights(tmp_path / "m.weights")
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "m.cfg"), str(tmp_path / "m.weights"))
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    net.setInput(x.numpy())
    theirs = net.forward([f"conv_{h.layer - 1}" for h in model.heads])
    # OpenCV normalises with eps 1e-6 where darknet uses 1e-5: compare at OpenCV's.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-6
    with torch.no_grad():
        ours = [h.numpy() for h in model(x)]
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 3e-3 * np.abs(a).max()


def test_every_activation_a_layer_may_name_has_one_pytorch_function():
    from slimyolo.darknet.graph import ACTIVATIONS
    from slimyolo.darknet.model import ACTIVATION_FUNCTIONS

    assert set(ACTIVATION_FUNCTIONS) == set(ACTIVATIONS)


def test_a_seed_gives_the_same_weights_while_other_threads_build_models():
    """torch's global generator is the process's: :func:`seeded_model` seeds and draws under the lock every
    Darknet builds its layers under, so a model built in another thread meanwhile (the pipeline trains its
    reference beside the other stages) takes none of the seed's numbers."""
    cfg = make_cfg("yolov4-tiny", 1, 64)
    alone = seeded_model(cfg, None, 7).state_dict()
    done = threading.Event()

    def build() -> None:
        while not done.is_set():
            Darknet(cfg)

    other = threading.Thread(target=build)
    other.start()
    try:
        for _ in range(5):
            beside = seeded_model(cfg, None, 7).state_dict()
            assert all(torch.equal(beside[k], alone[k]) for k in alone)
    finally:
        done.set()
        other.join()
