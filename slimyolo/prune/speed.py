"""Measured OpenVINO speed of a sweep point: the cost the sweep's ``fps`` objective minimises.

BFLOPs stop predicting CPU speed once pruning has made the layers thin (they move as many
activation bytes per FLOP that the CPU waits on memory; see BENCHMARKS.md), so the sweep can
choose its point by frames per second measured on the CPU that will run the model. Each point
is converted the fastest way that exists (:func:`slimyolo.convert.convert` with
``via="torch"``: PyTorch → IR, checked against PyTorch like every conversion; INT8 with NNCF on
a few synthetic calibration images, which set the quantization ranges but not the speed),
compiled with the throughput hint, and timed on inference alone in ``repeats`` short runs: the
best run counts, because on a shared machine other work only ever slows a run down.

FPS depends on the architecture, not on the weights' values, so measured points are cached by
the sha256 of their cfg (which holds the input size) and the precision: the fine steps of a
sweep often give the same pruned widths twice.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo import vocab
from slimyolo.cpuinfo import cpu_info, describe
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError

CALIB_IMAGES = 8


@dataclass
class FpsMeter:
    """Callable ``Darknet -> FPS`` (see the module docstring); ``cache`` maps cfg digest → FPS."""

    precision: str = "f32"
    seconds: float = 1.0
    repeats: int = 3
    cache: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=cpu_info)

    def __post_init__(self) -> None:
        self.precision = vocab.choose(self.precision, vocab.FPS_PRECISIONS, "precision")
        if self.seconds <= 0 or self.repeats < 1:
            raise SlimYoloError(f"FPS measurement needs positive seconds and at least one repeat, got "
                                f"{self.seconds} s x {self.repeats}")
        import importlib.util

        needed = ("openvino", "nncf") if self.precision == "int8" else ("openvino",)
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:  # the pruner image is the trainer's (.[train]): say so now, not after the first evaluation
            raise SlimYoloError(f"the fps objective converts and times every point with OpenVINO, and "
                                f"{', '.join(missing)} is not installed here: install slimyolo[convert] or use "
                                "the bflops objective")

    def key(self, model: Darknet) -> str:
        return f"{hashlib.sha256(model.cfg.to_text().encode()).hexdigest()}-{self.precision}"

    def __call__(self, model: Darknet) -> float:
        key = self.key(model)
        if key not in self.cache:
            self.cache[key] = self.measure(model)
        return self.cache[key]

    def measure(self, model: Darknet) -> float:
        """Convert ``model`` to an IR in a scratch folder and return its best inference-only FPS."""
        from slimyolo.convert import convert
        from slimyolo.infer.bench import bench_infer
        from slimyolo.infer.engine import Engine

        with tempfile.TemporaryDirectory(prefix="slimyolo-fps-") as tmp:
            work = Path(tmp)
            model.cfg.write(work / "point.cfg")
            model.save_darknet_weights(work / "point.weights")
            ir = convert(work / "point.cfg", work / "point.weights", work / "models", name="point", version=1,
                         via="torch", precision="int8" if self.precision == "int8" else "fp32",
                         calib_images=CALIB_IMAGES, parity_images=1)
            engine = Engine(ir.path, hint="throughput", precision=None if self.precision == "int8" else self.precision)
            frame = np.random.default_rng(0).integers(0, 255, (*engine.input_size, 3), dtype=np.uint8)
            tensor, _ = engine.prepare(frame)
            runs = [bench_infer(engine, tensor, self.seconds)["fps"] for _ in range(self.repeats)]
            engine.wait()
        return max(runs)

    def note(self) -> str:
        """How the figures were measured, and on which CPU."""
        return (f"OpenVINO {self.precision} IR (via PyTorch), throughput hint, inference only, best of "
                f"{self.repeats} x {self.seconds:g} s, on {describe(self.cpu)}")
