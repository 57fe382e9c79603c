"""mAP@0.5 of an OpenVINO model on labelled calibration images, through the project's evaluator.

Used twice by INT8 conversion: as the metric of ``nncf.quantize_with_accuracy_control`` (which
calls it on the whole validation set and on single images to rank the quantized operations),
and to record the FP32 and INT8 mAP of every INT8 conversion made on a labelled data set.
Decoding, NMS and matching are :func:`slimyolo.train.evaluate.evaluate_predictor`'s, so these
figures are the same numbers training and evaluation report for the PyTorch model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from slimyolo.convert import ir
from slimyolo.convert.calib import ImageSource
from slimyolo.darknet.graph import Head
from slimyolo.train.evaluate import evaluate_predictor


def map50(compiled: Any, source: ImageSource, heads: Sequence[Head], size: tuple[int, int],
          paths: Iterable[Path] | None = None) -> float:
    """mAP@0.5 of a compiled f32-NCHW-input model on ``paths`` (default: ``source``'s evaluation images)."""
    names = ir.output_names(heads)
    subset = list(paths) if paths is not None else list(source.eval_paths)
    spec = dataclasses.replace(source.data, valid=subset)
    return evaluate_predictor(lambda x: ir.run(compiled, x, names), heads, spec, size, split="valid").map50


def map50_validator(source: ImageSource, heads: Sequence[Head], size: tuple[int, int]
                    ) -> tuple[list[Path], Callable[[Any, Iterable[Path]], tuple[float, None]]]:
    """The validation items (image paths) and ``validation_fn`` for ``nncf.quantize_with_accuracy_control``."""

    def validate(compiled: Any, items: Iterable[Path]) -> tuple[float, None]:
        return map50(compiled, source, heads, size, items), None

    return list(source.eval_paths), validate
