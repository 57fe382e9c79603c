"""How a model is converted: the options of :func:`slimyolo.convert.convert`, declared once.

:class:`ConvertOptions` is what the conversion itself needs to know, whoever asks for it: the
``convert`` stage's spec embeds it (its YAML and gRPC keys are these fields, flat), the stage's
runner hands it over whole (``ConvertOptions.taken_from(spec)``), and ``slimyolo convert``'s flags
are generated from it. What is not here is where the model comes from and goes to (cfg, weights,
calibration data, the model's name and version in the repository: inputs, given beside the
options) and what the stage does with the IR afterwards (evaluation, benchmark: the spec's own).

This module imports neither the heavy libraries nor the stages, so the specs can embed it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimyolo import vocab
from slimyolo.errors import SlimYoloError
from slimyolo.params import Declared, Fields, param

TOLERANCE = 1e-3  # the largest |FP32 IR - PyTorch| on any head, before the float64 judgement


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Declared):
    """The settings of one conversion (see :mod:`slimyolo.convert.conversion` for the steps they steer).

    Two fields take more in Python than their YAML form: ``img_size`` also takes (height, width), and
    ``names`` also takes the path of a ``.names`` file (what ``slimyolo convert --img-size WxH`` and
    ``--names FILE`` give); YAML, gRPC and the stage take a square size and a list of names.
    """

    via: str = param("choice", "tf", options=vocab.CONVERSION_PATHS,
                     help="tf: cfg, Keras/TensorFlow, IR; torch: the PyTorch module to IR")
    precision: str = param("choice", "fp32", options=vocab.IR_PRECISIONS,
                           help="the IR's precision: how it stores its weights")
    calib_images: int = param("int", 300, low=1, help="INT8 calibration images")
    img_size: int | tuple[int, int] | None = param("img_size", None, help="the IR's input size; unset: the cfg's")
    names: tuple[str, ...] | str | Path = param("strings", (), help="class names; unset: the calibration data "
                                                "set's, else class<i>")
    accuracy_control: bool = param("bool", False, help="INT8: keep mAP@0.5 within max_drop of FP32 (needs "
                                   "labelled calibration data)")
    max_drop: float = param("float", 0.01, low=0, high=1, low_open=True,
                            help="the largest absolute mAP@0.5 drop accuracy control accepts")
    ppp: str | None = param("choice", None, options=vocab.PPP_MODES, help="u8 NHWC BGR input, letterboxed "
                            "inside the IR (resize) or by the host (fixed); unset: f32 NCHW RGB")
    onnx: bool = param("bool", False, help="also write model.onnx (f32 NCHW input, the IR's outputs)")
    parity_images: int = param("int", 2, low=1, help="images of the parity checks against PyTorch")
    tolerance: float = param("float", TOLERANCE, low=0, low_open=True,
                             help="the largest |FP32 IR - PyTorch| on any head; beyond it the IR must be within "
                                  "4x PyTorch's own float32 error, measured against a float64 run")

    def _validate(self, f: Fields) -> None:
        """The combination no single field's bounds catch; the stage's spec (which embeds these options), the
        command line and :func:`~slimyolo.convert.convert` itself all check it here."""
        if self.accuracy_control and self.precision != "int8":
            raise SlimYoloError(f"{f.where('accuracy_control')}: accuracy control applies to INT8 quantization "
                                "(precision int8)")
