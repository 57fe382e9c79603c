"""Parity of converted models: how far each runtime's raw heads are from the PyTorch model's.

A head's difference is its largest absolute difference ``max|other − torch|`` and the same
relative to the head's magnitude, ``max_abs / max|torch|``. The pass/fail rule divides by
``max(1, max|torch|)``: heads within ±1 are held to an absolute tolerance, larger ones to a
relative one. Raw heads are unbounded logits (a random-weight YOLOv4 reaches ±70); float32
sums over 160 layers in a different order differ by about 1e-5 of that magnitude, which no
absolute tolerance can tell from a real error on such heads, while a real conversion error
(a wrong pad, a swapped channel, a missing BN) shows up as a difference of the order of the
head itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class HeadDiff:
    output: str
    max_abs: float
    max_rel: float  # max_abs / max|reference|
    scale: float  # max|reference|

    def error(self) -> float:
        """The figure the tolerance applies to (see the module docstring)."""
        return self.max_abs / max(1.0, self.scale)


@dataclass(frozen=True)
class Comparison:
    """``other`` against ``reference`` (e.g. "ir" against "torch"), head by head."""

    reference: str
    other: str
    heads: tuple[HeadDiff, ...]
    gated: bool = False  # whether the conversion fails when this comparison is out of tolerance

    @property
    def max_abs(self) -> float:
        return max(h.max_abs for h in self.heads)

    @property
    def max_rel(self) -> float:
        return max(h.max_rel for h in self.heads)

    def error(self) -> float:
        return max(h.error() for h in self.heads)

    def worst(self) -> HeadDiff:
        return max(self.heads, key=HeadDiff.error)

    def as_dict(self) -> dict:
        return {"reference": self.reference, "other": self.other, "gated": self.gated,
                "max_abs": self.max_abs, "max_rel": self.max_rel, "heads": [asdict(h) for h in self.heads]}


def compare(reference_name: str, reference: Sequence[np.ndarray], other_name: str, other: Sequence[np.ndarray],
            names: Sequence[str], gated: bool = False) -> Comparison:
    """Compare two lists of raw heads (same order as ``names``)."""
    if len(reference) != len(other) or len(reference) != len(names):
        raise ValueError(f"{other_name} gave {len(other)} heads, {reference_name} {len(reference)}, "
                         f"expected {len(names)}")
    diffs = []
    for name, ref, out in zip(names, reference, other, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"head {name}: {other_name} shape {out.shape} != {reference_name} shape {ref.shape}")
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        max_abs = float(np.abs(out64 - ref64).max()) if np.isfinite(out64).all() else float("inf")
        scale = float(np.abs(ref64).max())
        diffs.append(HeadDiff(name, max_abs, max_abs / scale if scale > 0 else max_abs, scale))
    return Comparison(reference_name, other_name, tuple(diffs), gated)


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
        return [c for c in self.comparisons if c.gated and c.error() > self.tolerance]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "images": self.images, "image_source": self.image_source,
                "passed": self.passed, "comparisons": [c.as_dict() for c in self.comparisons]}

    def lines(self) -> list[str]:
        """One human-readable line per comparison (the CLI prints these)."""
        out = []
        for c in self.comparisons:
            w = c.worst()
            verdict = ("ok" if c.error() <= self.tolerance else "FAIL") if c.gated else "info"
            out.append(f"{c.other:>12} vs {c.reference:<6} max abs {c.max_abs:.3g}  max rel {c.max_rel:.3g}  "
                       f"(worst {w.output}: {w.max_abs:.3g} of {w.scale:.3g})  {verdict}")
        return out
