"""INT8 post-training quantization of an FP32 IR with NNCF.

``nncf.quantize`` collects activation statistics on the calibration images (letterboxed as at
inference) and inserts FakeQuantize operations, which OpenVINO's CPU plugin runs as INT8
kernels. The ``MIXED`` preset quantizes weights symmetrically and activations asymmetrically:
darknet activations (leaky, mish) are not centred on zero, and symmetric activation ranges
would waste half the INT8 codes.

With accuracy control, ``nncf.quantize_with_accuracy_control`` measures mAP@0.5 of the FP32 and
the INT8 model on the labelled images and reverts the most harmful quantized operations to
FP32 until the absolute drop is at most ``max_drop``. On a user's labelled data set the FP32
and INT8 mAP@0.5 (validation split) are recorded either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.convert import ir
from slimyolo.convert.calib import ImageSource, read_frames, to_tensor
from slimyolo.darknet.graph import Head


def quantize(model: Any, source: ImageSource, heads: Sequence[Head], size: tuple[int, int], limit: int,
             accuracy_control: bool, max_drop: float, report: Callable[..., None]) -> tuple[Any, dict[str, Any]]:
    """The INT8 model and what to record about it (calibration set, and mAP figures on labelled data).

    ``accuracy_control`` needs a labelled ``source`` (the caller checks, before converting).
    """
    import nncf

    def load(path: Path) -> np.ndarray:  # one (1, 3, H, W) float32 batch per image
        return to_tensor(read_frames([path]), *size)

    calibration = nncf.Dataset(list(source.paths[:limit]), load)
    count = min(limit, len(source.paths))
    info: dict[str, Any] = {"calibration_images": count, "calibration_source": source.description,
                            "preset": "mixed", "accuracy_control": accuracy_control}
    preset = nncf.QuantizationPreset.MIXED
    # mAP on a user's data set, or on the synthetic default when accuracy control asks for it
    # (a model trained on other data scores ~0 on synthetic shapes: no point measuring that).
    evaluate = source.labelled and (accuracy_control or not source.synthetic)
    if evaluate:
        from slimyolo.convert.accuracy import map50

        report("evaluate", what="fp32", images=len(source.eval_paths))
        info.update(map50_images=len(source.eval_paths), map50_fp32=map50(ir.compile_f32(model), source, heads, size))
    if accuracy_control:
        from slimyolo.convert.accuracy import map50_validator

        validation, validate = map50_validator(source, heads, size)
        report("accuracy_control", images=len(validation), max_drop=max_drop)
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset(validation, load), validate, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, preset=preset, subset_size=count)
        info.update(max_drop=max_drop)
    else:
        quantized = nncf.quantize(model, calibration, preset=preset, subset_size=count)
    if evaluate:
        report("evaluate", what="int8", images=len(source.eval_paths))
        info["map50_int8"] = map50(ir.compile_f32(quantized), source, heads, size)
    return quantized, info
