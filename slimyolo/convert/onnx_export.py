"""ONNX export of the PyTorch model, for runtimes other than OpenVINO (ONNX Runtime, TensorRT, …).

The ONNX file has the IR's interface: input ``images`` (f32 NCHW RGB [0, 1], dynamic batch),
outputs ``yolo_<layer>`` (the raw NCHW heads), so the same decode serves it. It is exported
with PyTorch's ``torch.export``-based exporter (``dynamo=True``, the default since PyTorch
2.9; it needs ``onnxscript``), weights inside the one file (a YOLOv4 is ~250 MB, far from
protobuf's 2 GB limit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slimyolo.convert.ir import INPUT_NAME
from slimyolo.darknet.model import Darknet


def export_onnx(model: Darknet, path: Path, output_names: Sequence[str]) -> None:
    """Write ``model`` (eval mode) to ``path`` as ONNX (opset chosen by the exporter)."""
    import torch

    c, h, w = model.graph.input_shape
    example = torch.rand((1, c, h, w), generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch")
    # The exporter reports its progress on stdout and warns about unrelated registries
    # (torchvision ops); neither belongs in the output of a conversion.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False,
                              input_names=[INPUT_NAME], output_names=list(output_names),
                              dynamic_shapes=({0: batch},), verbose=False)
    finally:
        quiet.setLevel(level)


def run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    """The raw heads ONNX Runtime computes from the file (the parity report's "onnxruntime")."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {INPUT_NAME: images})]
