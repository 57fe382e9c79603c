"""Both conversion paths compute what the PyTorch model computes: every layer kind, every zoo
model, a pruned model (odd widths, residual units removed).

Each test runs the Keras graph, the IR converted from it (cfg → TF → IR) and the IR converted
from the PyTorch module on synthetic-data-set images, at f32 inference precision, and holds
every head to the conversion's own rule (:mod:`slimyolo.convert.parity`): within 1e-3 of
PyTorch, or within 4x PyTorch's own float32 error against a float64 run (random-weight big
models at this size have heads of ±2000). A conversion bug (a pad on the wrong side, a
transposed kernel, a missing BN, a channel group off by one) moves a head by a sizeable
fraction of its magnitude, far beyond either.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimyolo.convert import ir
from slimyolo.convert.calib import to_tensor
from slimyolo.convert.keras_model import DarknetMaxPool, build_keras, keras_heads
from slimyolo.convert.parity import compare, reference64
from slimyolo.darknet import ZOO, make_cfg, parse_cfg_text
from slimyolo.darknet.graph import Conv
from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.model import Darknet
from slimyolo.data.synth import render_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-3
SIZE = 64  # small input: conversion cost grows with weights, not with pixels; 64 keeps every head ≥ 2x2

# One of every layer kind and option the core supports, on a non-square input: mish, swish,
# relu, logistic, leaky and linear activations; a strided 3x3, a grouped conv, a conv with a
# bias and no BN, an even 2x2/2 kernel, explicit padding; a non-linear shortcut; a maxpool
# that darknet pads differently from TF's "same" (3x3/2), a 2x2/1 and a 5x5/1 pool; route
# groups; an upsample by 4; a scale_x_y head and a new_coords head.
KINDS_CFG = """
[net]
width=96
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=swish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
groups=4
activation=relu

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=logistic

[shortcut]
from=-3
activation=leaky

[maxpool]
size=3
stride=2

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=12
size=5
stride=1
padding=2
activation=leaky

[convolutional]
batch_normalize=1
filters=12
size=2
stride=2
padding=0
activation=leaky

[maxpool]
size=2
stride=1

[upsample]
stride=4

[route]
layers=-1,4

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23, 30,61, 62,45
classes=2
num=5
scale_x_y=1.1

[route]
layers=7

[maxpool]
size=5
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=logistic

[yolo]
mask=3,4
anchors=10,13, 16,30, 33,23, 30,61, 62,45
classes=2
num=5
new_coords=1
"""


def synth_batch(n: int, height: int, width: int) -> np.ndarray:
    """``n`` images of the synthetic data set, letterboxed as the converter does."""
    frames = [render_image(2, max(height, width), np.random.default_rng(i))[0] for i in range(n)]
    return to_tensor(frames, height, width)


def check_both_paths(model: Darknet, images: np.ndarray) -> None:
    """Keras, TF-path IR and torch-path IR against PyTorch, by the conversion's own rule."""
    names = ir.output_names(model.heads)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(images))]
    ref64 = reference64(model, images)
    kmodel = build_keras(model)
    outputs = {
        "keras": keras_heads(kmodel, images),
        "tf_ir": ir.run(ir.compile_f32(ir.from_keras(kmodel, model.heads)), images, names),
        "torch_ir": ir.run(ir.compile_f32(ir.from_torch(model, model.heads)), images, names),
    }
    for what, got in outputs.items():
        c = compare("torch", ref, what, got, names, gated=True, reference64=ref64)
        assert c.passes(TOL), f"{what}: {c.as_dict()}"


def test_every_layer_kind_converts_exactly():
    model = init_random_weights(Darknet(parse_cfg_text(KINDS_CFG, "kinds.cfg")), 0)
    kmodel = build_keras(model)
    # the 3x3/2 maxpool pads 1 before (darknet), TF's "same" would pad 0: the explicit layer is used
    assert any(isinstance(layer, DarknetMaxPool) for layer in kmodel.layers)
    check_both_paths(model, synth_batch(2, 64, 96))


def test_a_wrong_keras_graph_is_caught(monkeypatch):
    """The parity check is sensitive: TF's own "same" padding on the 3x3/2 maxpool shifts the heads."""
    import keras

    model = init_random_weights(Darknet(parse_cfg_text(KINDS_CFG, "kinds.cfg")), 0)
    images = synth_batch(1, 64, 96)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(images))]
    monkeypatch.setattr(DarknetMaxPool, "call",
                        lambda self, x: keras.ops.max_pool(x, self.size, self.stride, padding="same"))
    bad = build_keras(model)
    pool = next(layer for layer in bad.layers if isinstance(layer, DarknetMaxPool))
    assert pool.pads == (1, 0, 1, 0)  # darknet: 1 before, none after; TF "same": none before, 1 after
    c = compare("torch", ref, "keras", keras_heads(bad, images), ir.output_names(model.heads),
                reference64=reference64(model, images))
    assert not c.passes(TOL) and c.max_abs > 100 * TOL


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_converts_through_both_paths(name):
    model = init_random_weights(Darknet(make_cfg(name, 2, SIZE)), 0)
    check_both_paths(model, synth_batch(1, SIZE, SIZE))


def test_pruned_model_converts_through_both_paths():
    from slimyolo.prune.algorithms import prune_both

    model = init_random_weights(Darknet(make_cfg("yolov3", 2, SIZE)), 0)
    pruned = prune_both(model, 0.85, 16).model.eval()  # the original projects cut 17-18 of yolov4's 23
    widths = [s.filters for s in pruned.graph.specs if isinstance(s, Conv)]
    original = [s.filters for s in model.graph.specs if isinstance(s, Conv)]
    assert len(widths) == len(original) - 32 and any(w % 2 for w in widths)  # 16 units cut, odd widths
    check_both_paths(pruned, synth_batch(1, SIZE, SIZE))


def test_the_tf_path_imports_tensorflow_without_console_noise():
    """TensorFlow's C++ start-up lines (absl's pre-InitializeLog warning, the oneDNN and CPU-feature notices)
    would precede every conversion's progress: importing the Keras builder prints nothing."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "ABSL"))}
    done = subprocess.run([sys.executable, "-c", "import slimyolo.convert.keras_model as k, os, sys; "
                           "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules); "
                           "print('after', file=sys.stderr)"],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["2", "True"]
    assert done.stderr == "after\n"  # standard error works again after the import


def test_keras_irs_keep_their_heads_in_order_conversion_after_conversion():
    """OpenVINO orders a Keras model's outputs by tensor name as text, and Keras numbers tensors on through the
    process: a converter's second conversion (keras_tensor_98 and keras_tensor_109) had its two heads swapped."""
    model = init_random_weights(Darknet(make_cfg("yolov3-tiny", 2, 64)), 0).eval()
    images = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    names = ir.output_names(model.heads)
    for _ in range(3):  # each build numbers its tensors after the last one's
        kmodel = build_keras(model)
        assert [o.shape for o in ir.run(ir.compile_f32(ir.from_keras(kmodel, model.heads)), images, names)] == \
            [k.shape for k in keras_heads(kmodel, images)]
