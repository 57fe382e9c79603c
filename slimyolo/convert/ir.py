"""OpenVINO models from the Keras graph or the PyTorch module, and the input variants of an IR.

Both paths give the same interface, whatever framework produced the graph: one input named
``images`` (f32 NCHW RGB in [0, 1], dynamic batch, the model's height and width) and one
output per ``[yolo]`` layer named ``yolo_<layer index>``, the raw NCHW head exactly as the
PyTorch model returns it. The engine finds its outputs by these names (recorded in the
metadata), never by position or by whatever name a framework's tracer made up.

:func:`add_preprocessing` turns that into the IR that takes OpenCV frames (u8 NHWC BGR):
OpenVINO's PrePostProcessor converts the type, colour and layout and divides by 255 inside the
model, and in ``"resize"`` mode also letterboxes a frame of any size inside the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import openvino as ov
from openvino import opset15 as ops
from openvino.preprocess import ColorFormat, PrePostProcessor

from slimyolo import vocab
from slimyolo.darknet.graph import Head
from slimyolo.data.letterbox import PAD_VALUE

INPUT_NAME = "images"
F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # parity is judged at f32 whatever the CPU's default


def output_names(heads: Sequence[Head]) -> list[str]:
    return [f"yolo_{h.layer}" for h in heads]


def _name_io(model: ov.Model, heads: Sequence[Head]) -> ov.Model:
    """Give the converted model the documented input and output names (see the module docstring)."""
    if len(model.inputs) != 1 or len(model.outputs) != len(heads):
        raise RuntimeError(f"the converted model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                           f"expected 1 and {len(heads)}")
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for out, name in zip(model.outputs, output_names(heads), strict=True):
        out.get_tensor().set_names({name})
    return model


def from_keras(kmodel: Any, heads: Sequence[Head]) -> ov.Model:
    """``openvino.convert_model`` on the Keras model itself (it traces it as a tf.function in-process), its outputs
    in the Keras model's order.

    OpenVINO orders the outputs of a Keras model by their tensor names, as text: ``keras_tensor_109`` before
    ``keras_tensor_98``. Keras numbers its tensors on from the process's earlier models, so a second conversion
    in one process (a converter service's), or a model whose heads straddle a power of ten, had its heads
    swapped; they are put back in the Keras order before they are named.
    """
    model = ov.convert_model(kmodel)
    order = {t.name: i for i, t in enumerate(kmodel.outputs)}
    results = list(model.get_results())
    ranks = [min(order[n] for n in r.output(0).get_names() if n in order) for r in results]
    if ranks != sorted(ranks):
        ranked = [r for _, r in sorted(zip(ranks, results, strict=True), key=lambda pair: pair[0])]
        model = ov.Model(ranked, model.get_parameters(), model.get_friendly_name())
    return _name_io(model, heads)


def from_torch(model: Any, heads: Sequence[Head]) -> ov.Model:
    """``openvino.convert_model`` on the ``Darknet`` module, traced on an example input; batch left dynamic."""
    import torch

    c, h, w = model.graph.input_shape
    example = torch.rand((1, c, h, w), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        ov_model = ov.convert_model(model, example_input=example, input=[ov.PartialShape([-1, c, h, w])])
    return _name_io(ov_model, heads)


def _letterbox_inside(height: int, width: int, pad_value: int) -> Any:
    """A PrePostProcessor custom step: :func:`slimyolo.data.letterbox.letterbox` as OpenVINO operations.

    On an f32 NHWC frame of any size: scale by ``r = min(H/h, W/w)`` to ``round(h·r)``×``round(w·r)``
    (round half to even, as Python's ``round``), bilinear (OpenCV's INTER_LINEAR convention,
    half-pixel centres, no antialiasing), then pad with ``pad_value`` — ``floor`` of half the
    slack on the top/left, the rest on the bottom/right, as
    :func:`slimyolo.data.letterbox.placement` places it, so the host maps boxes back with the
    same placement — and pin the result to the static model size.
    """

    def step(node: Any) -> Any:
        shape = ops.shape_of(node, ov.Type.i64)
        hw = ops.convert(ops.gather(shape, ops.constant(np.array([1, 2], np.int64)), ops.constant(0)), ov.Type.f32)
        target = ops.constant(np.array([height, width], np.float32))
        ratio = ops.reduce_min(ops.divide(target, hw), ops.constant(np.array([0], np.int64)), keep_dims=True)
        new_hw = ops.round(ops.multiply(hw, ratio), "half_to_even")
        sizes = ops.convert(new_hw, ov.Type.i64)
        resized = ops.interpolate(node, sizes, mode="linear", shape_calculation_mode="sizes",
                                  axes=ops.constant(np.array([1, 2], np.int64)),
                                  coordinate_transformation_mode="half_pixel", antialias=False)
        slack = ops.subtract(target, new_hw)
        before = ops.floor(ops.divide(slack, ops.constant(np.float32(2))))
        after = ops.subtract(slack, before)
        zero = ops.constant(np.array([0], np.int64))
        begin = ops.concat([zero, ops.convert(before, ov.Type.i64), zero], 0)
        end = ops.concat([zero, ops.convert(after, ov.Type.i64), zero], 0)
        padded = ops.pad(resized, begin, end, "constant", ops.constant(np.float32(pad_value)))
        return ops.reshape(padded, ops.constant(np.array([-1, height, width, 3], np.int64)), False).output(0)

    return step


def add_preprocessing(model: ov.Model, mode: str, height: int, width: int, pad_value: int = PAD_VALUE) -> ov.Model:
    """The u8 NHWC BGR variant of an ``images`` IR (``mode`` in :data:`slimyolo.vocab.PPP_MODES`).

    ``"fixed"``: the host letterboxes to ``height``×``width`` (OpenCV frames need no other work);
    ``"resize"``: the host passes the frame as it is and the IR letterboxes it. Either way the
    IR converts u8 → f32, BGR → RGB, divides by 255 and transposes NHWC → NCHW.
    """
    if mode not in vocab.PPP_MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r} (choose from {', '.join(vocab.PPP_MODES)})")
    ppp = PrePostProcessor(model)
    inp = ppp.input(INPUT_NAME)
    tensor = inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_color_format(ColorFormat.BGR)
    if mode == "resize":
        tensor.set_spatial_dynamic_shape()
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess().convert_element_type(ov.Type.f32)
    if mode == "resize":
        steps.custom(_letterbox_inside(height, width, pad_value))
    steps.convert_color(ColorFormat.RGB).scale(255.0)
    out = ppp.build()
    out.inputs[0].get_tensor().set_names({INPUT_NAME})
    return out


def compile_f32(model: ov.Model | str, core: ov.Core | None = None) -> Any:
    """Compile for the CPU at f32 inference precision (bf16 is the default on CPUs that have it)."""
    return (core or ov.Core()).compile_model(model, "CPU", F32_CONFIG)


def run(compiled: Any, images: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    """Outputs ``names`` of a compiled model for one batch (numpy copies, in ``names`` order)."""
    result = compiled(images)
    by_name = {o.get_any_name(): o for o in compiled.outputs}
    return [np.array(result[by_name[n]]) for n in names]
