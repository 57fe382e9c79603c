"""Parity of converted models: how far each runtime's raw heads are from the PyTorch model's.

For each head the report gives ``max_abs = max|other − torch|`` and ``max_rel``, the same
relative to the head's magnitude ``max|torch|``. A gated comparison (the FP32 IR) passes when

1. ``max_abs ≤ tolerance`` (1e-3 by default), or, failing that,
2. the IR is about as close to the exact result as PyTorch's own float32 computation:
   both are compared with a float64 run of the same PyTorch model on the same images, and
   ``max|IR − torch64| ≤ NOISE_FACTOR · max|torch32 − torch64|``.

The second rule exists because raw heads are unbounded logits, and some networks amplify
float32 rounding: a random-weight YOLOv4 at 416 has heads of about ±5 and PyTorch's float32
output is already ~2e-3 away from float64, so no runtime can meet an absolute 1e-3 against it
(OpenVINO lands within 1.1× of PyTorch's own error). A real conversion error — a pad on the
wrong side, a transposed kernel, a missing BN, a channel group off by one — moves a head by a
sizeable fraction of its magnitude, orders beyond either bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

NOISE_FACTOR = 4.0


@dataclass(frozen=True)
class HeadDiff:
    output: str
    max_abs: float  # max |other − torch32|
    max_rel: float  # max_abs / max |torch32|
    scale: float  # max |torch32|
    vs_f64: float | None = None  # max |other − torch64|, when the float64 reference was run
    f32_noise: float | None = None  # max |torch32 − torch64|: PyTorch's own float32 error

    def passes(self, tolerance: float) -> bool:
        if self.max_abs <= tolerance:
            return True
        return self.vs_f64 is not None and self.f32_noise is not None and \
            self.vs_f64 <= NOISE_FACTOR * self.f32_noise


@dataclass(frozen=True)
class Comparison:
    """``other`` against ``reference`` (e.g. "ir_fp32" against "torch"), head by head."""

    reference: str
    other: str
    heads: tuple[HeadDiff, ...]
    gated: bool = False  # whether the conversion fails when this comparison does not pass

    @property
    def max_abs(self) -> float:
        return max(h.max_abs for h in self.heads)

    @property
    def max_rel(self) -> float:
        return max(h.max_rel for h in self.heads)

    @property
    def with_f64(self) -> bool:
        return all(h.vs_f64 is not None for h in self.heads)

    def passes(self, tolerance: float) -> bool:
        return all(h.passes(tolerance) for h in self.heads)

    def worst(self) -> HeadDiff:
        return max(self.heads, key=lambda h: h.max_abs)

    def as_dict(self) -> dict:
        return {"reference": self.reference, "other": self.other, "gated": self.gated,
                "max_abs": self.max_abs, "max_rel": self.max_rel, "heads": [asdict(h) for h in self.heads]}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a64 - b64).max()) if np.isfinite(a64).all() else float("inf")


def compare(reference_name: str, reference: Sequence[np.ndarray], other_name: str, other: Sequence[np.ndarray],
            names: Sequence[str], gated: bool = False, reference64: Sequence[np.ndarray] | None = None
            ) -> Comparison:
    """Compare two lists of raw heads (in ``names`` order); ``reference64``: the float64 run of the reference."""
    if len(reference) != len(other) or len(reference) != len(names):
        raise ValueError(f"{other_name} gave {len(other)} heads, {reference_name} {len(reference)}, "
                         f"expected {len(names)}")
    diffs = []
    for k, (name, ref, out) in enumerate(zip(names, reference, other, strict=True)):
        if ref.shape != out.shape:
            raise ValueError(f"head {name}: {other_name} shape {out.shape} != {reference_name} shape {ref.shape}")
        max_abs = _max_abs(out, ref)
        scale = float(np.abs(ref.astype(np.float64)).max())
        vs_f64 = noise = None
        if reference64 is not None:
            vs_f64, noise = _max_abs(out, reference64[k]), _max_abs(ref, reference64[k])
        diffs.append(HeadDiff(name, max_abs, max_abs / scale if scale > 0 else max_abs, scale, vs_f64, noise))
    return Comparison(reference_name, other_name, tuple(diffs), gated)


def reference64(model, images: np.ndarray) -> list[np.ndarray]:
    """The heads of a float64 copy of a ``Darknet`` model: the exact result the float32 runs approximate."""
    import copy

    import torch

    exact = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return [t.numpy() for t in exact(torch.from_numpy(images).double())]


@dataclass
class ParityReport:
    """Every comparison made during one conversion, and the images they were made on."""

    tolerance: float
    images: int
    image_source: str
    comparisons: list[Comparison]

    def add(self, comparison: Comparison) -> Comparison:
        self.comparisons.append(comparison)
        return comparison

    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.gated and not c.passes(self.tolerance)]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "noise_factor": NOISE_FACTOR, "images": self.images,
                "image_source": self.image_source, "passed": self.passed,
                "comparisons": [c.as_dict() for c in self.comparisons]}

    def lines(self) -> list[str]:
        """One human-readable line per comparison (the CLI prints these)."""
        out = []
        for c in self.comparisons:
            w = c.worst()
            verdict = ("ok" if c.passes(self.tolerance) else "FAIL") if c.gated else "info"
            line = (f"{c.other:>12} vs {c.reference:<6} max abs {c.max_abs:.3g}  max rel {c.max_rel:.3g}  "
                    f"(worst {w.output}: {w.max_abs:.3g} of {w.scale:.3g})")
            if c.with_f64 and w.vs_f64 is not None and w.f32_noise:
                line += f"  vs float64 {w.vs_f64:.3g} = {w.vs_f64 / w.f32_noise:.2f}x PyTorch's float32 error"
            out.append(f"{line}  {verdict}")
        return out
