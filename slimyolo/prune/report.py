"""What a channel prune was asked and what it did, and whether sparsity training went far enough.

Users of the original projects most often report "mAP went to 0 after pruning" (sparsity
training had not pushed enough γ to zero) and "pruning removed nothing" (a tie at the
threshold). So every channel prune reports, over the *prunable* channels (BN convolutions whose
channels are not fixed by a head, a grouped convolution or a tie to a convolution without BN):

- :class:`ChannelReport`: the asked fraction, how many channels the threshold selected, how
  many went, and how many each constraint kept back (shortcut groups: a member of the merged
  class is above the threshold; the layer floor; round-to; route groups);
- :class:`SparsityReport`, before pruning: the fraction of |γ| below 0.01 and 0.001, overall and
  by thirds of the network's depth, with a warning when far fewer are near zero than asked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from slimyolo.prune.groups import ChannelGroups
from slimyolo.prune.masks import CONSTRAINTS

GAP_WARN = 0.05  # asked and removed may differ by this much (5 points) before a warning
SPARSE_WARN = 0.10  # warn when the asked fraction exceeds the fraction of |γ| < 0.01 by this much
SMALL = (0.01, 0.001)
DEPTHS = ("shallow", "middle", "deep")  # thirds of the network by layer index


@dataclass(frozen=True)
class ChannelReport:
    """Asked against removed, in prunable channels of the network the masks apply to."""

    asked: float  # the global percent
    threshold: float  # channels with |γ| <= threshold were selected
    prunable: int
    selected: int
    removed: int
    kept_back: dict[str, int]  # "shortcut groups" and each of masks.CONSTRAINTS
    fixed: int  # BN channels that are not prunable (not counted in the fractions)

    @property
    def removed_fraction(self) -> float:
        return self.removed / self.prunable if self.prunable else 0.0

    def as_dict(self) -> dict:
        return {"asked": self.asked, "threshold": self.threshold, "prunable": self.prunable,
                "selected": self.selected, "removed": self.removed,
                "removed_fraction": round(self.removed_fraction, 6), "kept_back": dict(self.kept_back),
                "fixed": self.fixed}

    def line(self) -> str:
        held = ", ".join(f"{k} {v:,}" for k, v in self.kept_back.items() if v) or "none"
        return (f"channels: asked {self.asked:.1%} of {self.prunable:,} prunable, selected {self.selected:,} "
                f"(|γ| <= {self.threshold:.4g}), removed {self.removed:,} ({self.removed_fraction:.1%}); "
                f"kept back: {held}" + (f"; {self.fixed:,} BN channels fixed (heads, grouped convolutions), not "
                                        "counted" if self.fixed else ""))

    def warning(self) -> str | None:
        """Why asked and removed differ by more than :data:`GAP_WARN`, or None."""
        gap = self.removed_fraction - self.asked
        if abs(gap) <= GAP_WARN:
            return None
        if gap > 0:
            why = (f"{self.selected - round(self.asked * self.prunable):,} more channels are tied at or below the "
                   f"threshold {self.threshold:.4g} and go together")
        else:
            held = max(self.kept_back.items(), key=lambda kv: kv[1])
            why = f"constraints kept channels back, most of them {held[0]} ({held[1]:,})"
        return (f"asked to prune {self.asked:.1%} of the prunable channels, removed {self.removed_fraction:.1%}: "
                f"{why}")


def channel_report(groups: ChannelGroups, gammas: dict[int, np.ndarray], importance: np.ndarray, keep: np.ndarray,
                   reason: np.ndarray, asked: float, threshold: float) -> ChannelReport:
    """Count, channel by channel, what the threshold selected and what kept it back.

    ``gammas`` are |γ| by the layer index of ``groups``' graph; ``keep`` and ``reason`` come
    from :func:`slimyolo.prune.masks.keep_classes`.
    """
    prunable = selected = removed = fixed = 0
    held = np.zeros(len(CONSTRAINTS) + 1, dtype=np.int64)  # [shortcut groups, *CONSTRAINTS]
    for i, cls in groups.conv_classes.items():
        if i not in gammas:
            continue
        free = ~groups.fixed[cls]
        fixed += int((~free).sum())
        c, g = cls[free], gammas[i][free]
        prunable += len(c)
        chosen = c[g <= threshold]
        selected += len(chosen)
        gone = ~keep[chosen]
        removed += int(gone.sum())
        stayed = chosen[~gone]
        merged = importance[stayed] > threshold
        held[0] += int(merged.sum())
        np.add.at(held, reason[stayed[~merged]].astype(np.int64), 1)  # a constraint kept it: reason >= 1
    kept_back = {"shortcut groups": int(held[0]), **{name: int(held[k + 1]) for k, name in enumerate(CONSTRAINTS)}}
    return ChannelReport(asked, threshold, prunable, selected, removed, kept_back, fixed)


@dataclass(frozen=True)
class SparsityReport:
    """Fractions of prunable |γ| below 0.01 and 0.001, overall and by depth."""

    channels: int
    below: dict[str, float]  # "0.01", "0.001" -> fraction
    by_depth: dict[str, dict[str, float]]  # DEPTHS -> {"channels", "0.01", "0.001"}

    def as_dict(self) -> dict:
        return {"channels": self.channels, "below": dict(self.below), "by_depth": dict(self.by_depth)}

    def line(self) -> str:
        depth = ", ".join(f"{name} {d['0.01']:.0%}/{d['0.001']:.0%}" for name, d in self.by_depth.items())
        return (f"sparsity: {self.below['0.01']:.1%} of {self.channels:,} prunable |γ| below 0.01, "
                f"{self.below['0.001']:.1%} below 0.001 (by depth, <0.01/<0.001: {depth})")

    def warning(self, asked: float) -> str | None:
        """A warning when sparsity training clearly did not go far enough for ``asked``, or None."""
        near = self.below["0.01"]
        if asked - near <= SPARSE_WARN:
            return None
        return (f"sparsity training did not go far enough for {asked:.0%}: only {near:.1%} of the prunable |γ| are "
                f"below 0.01, so pruning {asked:.0%} removes channels that still carry signal and mAP@0.5 may "
                "collapse; train the sparsity stage longer or with a larger s, or prune less")


def sparsity_report(groups: ChannelGroups, gammas: dict[int, np.ndarray]) -> SparsityReport:
    """The report over the prunable channels of ``groups`` (|γ| by layer index in ``gammas``)."""
    n_layers = len(groups.graph.specs)
    parts: list[list[np.ndarray]] = [[] for _ in DEPTHS]
    for i, cls in groups.conv_classes.items():
        if i in gammas:
            parts[min(3 * i // n_layers, 2)].append(gammas[i][~groups.fixed[cls]])
    thirds = [np.concatenate(p) if p else np.zeros(0) for p in parts]
    every = np.concatenate(thirds)

    def fractions(values: np.ndarray) -> dict[str, float]:
        return {str(s): round(float((values < s).mean()), 6) if len(values) else 0.0 for s in SMALL}

    by_depth = {name: {"channels": len(v), **fractions(v)} for name, v in zip(DEPTHS, thirds, strict=True)}
    return SparsityReport(len(every), fractions(every), by_depth)


def print_warnings(warnings: list[str], file: TextIO | None = None) -> None:
    """A prune's warnings (:meth:`PruneResult.warnings`, ``warnings`` of summary.json and of the prune stage's
    metrics) on standard error, one line each: the one wording of ``prune channel`` and ``stage prune``."""
    for warning in warnings:
        print(f"warning: {warning}", file=file or sys.stderr)
