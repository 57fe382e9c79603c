"""The Keras (TensorFlow) graph of a darknet model: the first half of the cfg → TF → IR path.

The graph is built layer by layer from the typed specs of :mod:`slimyolo.darknet.graph` (the
same ones the PyTorch model is built from), so every layer type and any pruned width that the
core supports is supported here, and the weights are copied from the loaded PyTorch model
(which already read the ``.weights`` or ``.pt`` file and checked it against the cfg).

Inside, the graph is NHWC, TensorFlow's native layout; it takes the PyTorch model's NCHW input
and returns its NCHW heads (one transpose at each end), so the Keras model, the PyTorch model
and the IR are interchangeable and their outputs compare element for element. Darknet's
padding rules are explicit layers rather than Keras ``"same"`` padding, which pads strided
convolutions asymmetrically and would shift every box.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from slimyolo.convert.ir import INPUT_NAME
from slimyolo.darknet.graph import Conv, MaxPool, Route, Shortcut, Upsample, Yolo
from slimyolo.darknet.model import BN_EPS, ConvBlock, Darknet, MaxPoolBlock


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Standard error's file descriptor on /dev/null for a moment (Python's errors still surface: raised)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_keras() -> Any:
    """Keras, and so TensorFlow, imported without TensorFlow's start-up noise on the console.

    TF_CPP_MIN_LOG_LEVEL=2 (set before TensorFlow loads, unless the user set it) quiets its C++ INFO and
    WARNING lines; its first notices (absl's "All log messages before absl::InitializeLog() ..." and
    port.cc's oneDNN notice) come before its logging reads the variable, so standard error is muted while
    it loads; absl's and TensorFlow's Python loggers keep to errors. Only this module imports TensorFlow.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_silenced():
        import keras
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras


keras = _import_keras()
layers, ops = keras.layers, keras.ops

# darknet activation → Keras layer factory (taking the layer name); "linear" adds no layer
_ACTIVATION_LAYERS: dict[str, Any] = {
    "linear": None,
    "leaky": lambda name: layers.LeakyReLU(negative_slope=0.1, name=name),
    "relu": lambda name: layers.ReLU(name=name),
    "mish": lambda name: layers.Activation(keras.activations.mish, name=name),
    "swish": lambda name: layers.Activation(keras.activations.silu, name=name),
    "logistic": lambda name: layers.Activation(keras.activations.sigmoid, name=name),
}


class DarknetMaxPool(layers.Layer):
    """Max pooling after padding with -inf by (left, right, top, bottom), as darknet pads."""

    def __init__(self, size: int, stride: int, pads: tuple[int, int, int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.stride, self.pads = size, stride, pads

    def call(self, x: Any) -> Any:
        left, right, top, bottom = self.pads
        x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=float("-inf"))
        return ops.max_pool(x, self.size, self.stride, padding="valid")


class ChannelGroup(layers.Layer):
    """Channels ``[start, stop)`` of an NHWC tensor: darknet's route ``groups``/``group_id``."""

    def __init__(self, start: int, stop: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x: Any) -> Any:
        return x[..., self.start:self.stop]


def _activation(x: Any, name: str, layer_name: str) -> Any:
    make = _ACTIVATION_LAYERS[name]
    return x if make is None else make(layer_name)(x)


def _conv(x: Any, i: int, spec: Conv, block: ConvBlock) -> Any:
    if spec.padding:
        x = layers.ZeroPadding2D(spec.padding, name=f"pad_{i}")(x)
    conv = layers.Conv2D(spec.filters, spec.size, spec.stride, padding="valid", groups=spec.groups,
                         use_bias=not spec.batch_normalize, name=f"conv_{i}")
    x = conv(x)
    # torch (O, I/g, kh, kw) → Keras (kh, kw, I/g, O)
    kernel = block.conv.weight.detach().cpu().numpy().transpose(2, 3, 1, 0)
    if block.bn is not None:
        conv.set_weights([kernel])
        bn = layers.BatchNormalization(epsilon=BN_EPS, name=f"bn_{i}")
        x = bn(x)
        bn.set_weights([t.detach().cpu().numpy() for t in
                        (block.bn.weight, block.bn.bias, block.bn.running_mean, block.bn.running_var)])
    else:
        assert block.conv.bias is not None
        conv.set_weights([kernel, block.conv.bias.detach().cpu().numpy()])
    return _activation(x, spec.activation, f"act_{i}")


def _maxpool(x: Any, i: int, spec: MaxPool, block: MaxPoolBlock, in_hw: tuple[int, int]) -> Any:
    """TF's own ``"same"`` pooling when it pads exactly as darknet does (SPP, tiny), else explicit -inf pads.

    The pads are the PyTorch block's (:func:`slimyolo.darknet.model._maxpool_pads`), so both
    runtimes follow the one definition of darknet's maxpool padding.
    """
    pads = block.pads
    same = True
    for dim, (before, after) in ((in_hw[1], pads[0:2]), (in_hw[0], pads[2:4])):
        total = max((-(-dim // spec.stride) - 1) * spec.stride + spec.size - dim, 0)
        same = same and (before, after) == (total // 2, total - total // 2)
    if same:
        return layers.MaxPooling2D(spec.size, spec.stride, padding="same", name=f"maxpool_{i}")(x)
    return DarknetMaxPool(spec.size, spec.stride, pads, name=f"maxpool_{i}")(x)


def build_keras(model: Darknet, batch_size: int | None = None) -> keras.Model:
    """The Keras model computing exactly what ``model`` computes: NCHW image in, NCHW raw heads out.

    ``batch_size=None`` leaves the batch dimension dynamic. Output ``k`` is the head of the
    ``k``-th ``[yolo]`` layer, named ``yolo_<layer index>``.
    """
    graph = model.graph
    c, h, w = graph.input_shape
    image = keras.Input((c, h, w), batch_size=batch_size, name=INPUT_NAME)
    x = layers.Permute((2, 3, 1), name="to_nhwc")(image)
    outs: list[Any] = []
    saved: dict[int, Any] = {}
    for i, (spec, module) in enumerate(zip(graph.specs, model.module_list, strict=True)):
        if isinstance(spec, Conv):
            assert isinstance(module, ConvBlock)
            x = _conv(x, i, spec, module)
        elif isinstance(spec, MaxPool):
            assert isinstance(module, MaxPoolBlock)
            _, in_h, in_w = graph.in_shape(i)
            x = _maxpool(x, i, spec, module, (in_h, in_w))
        elif isinstance(spec, Shortcut):
            x = layers.Add(name=f"shortcut_{i}")([x, saved[spec.source]])
            x = _activation(x, spec.activation, f"act_{i}")
        elif isinstance(spec, Route):
            parts = []
            for j in spec.sources:
                part = saved[j] if j != i - 1 else x
                if spec.groups > 1:
                    width = graph.shape_of(j)[0] // spec.groups
                    part = ChannelGroup(width * spec.group_id, width * (spec.group_id + 1),
                                        name=f"group_{i}_{j}")(part)
                parts.append(part)
            x = parts[0] if len(parts) == 1 else layers.Concatenate(axis=-1, name=f"route_{i}")(parts)
        elif isinstance(spec, Upsample):
            x = layers.UpSampling2D(spec.stride, interpolation="nearest", name=f"upsample_{i}")(x)
        elif isinstance(spec, Yolo):
            outs.append(layers.Permute((3, 1, 2), name=f"yolo_{i}")(x))
        saved[i] = x
    # Inputs as a dict: openvino.convert_model then feeds the traced model the structure it
    # was built with (a bare tensor input makes Keras warn on every conversion).
    return keras.Model({INPUT_NAME: image}, outs, name="darknet")


def keras_heads(kmodel: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """Run the Keras model in inference mode (BN uses its moving statistics) on an NCHW batch."""
    out = kmodel({INPUT_NAME: images.astype(np.float32, copy=False)}, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]
