"""The training curve of a run: loss and validation P, R, mAP@0.5 per epoch, as a PNG.

``slimyolo train`` writes ``results.png`` beside ``results.csv`` when a run ends, so the question
"has mAP@0.5 stopped rising?" is answered by a look rather than by reading a CSV; a run folder of an
earlier version gets one with :func:`plot_results` on its ``results.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from slimyolo.fsutil import atomic_path


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The rows of a run's ``results.csv`` (one per epoch; evaluation columns empty when not evaluated)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_results(csv_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Loss (left) and validation P, R, mAP@0.5 (right) against the epoch, written atomically to ``png_path``."""
    # a Figure of its own, not pyplot's: pyplot's figures are process-global state, and two stages plot at once
    # when the pipeline trains its reference in a thread beside the others
    from matplotlib.figure import Figure

    rows = read_results(csv_path)
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 3.6), dpi=100)
    left, right = fig.subplots(1, 2)
    for key, color in (("loss", "black"), ("box", "tab:blue"), ("obj", "tab:orange"), ("cls", "tab:green")):
        left.plot(epochs, [float(r[key]) for r in rows], label=key, color=color, linewidth=1)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (per step)")
    left.legend(fontsize=8)
    evaluated = [r for r in rows if r["map50"] != ""]
    for key, label, color in (("map50", "mAP@0.5", "tab:red"), ("precision", "P", "tab:gray"),
                              ("recall", "R", "tab:purple")):
        right.plot([int(r["epoch"]) for r in evaluated], [float(r[key]) for r in evaluated], label=label,
                   color=color, linewidth=2 if key == "map50" else 1, marker="o" if key == "map50" else None,
                   markersize=3)
    if evaluated:
        best = max(evaluated, key=lambda r: float(r["map50"]))
        right.set_title(f"best mAP@0.5 {float(best['map50']):.3f} at epoch {best['epoch']}", fontsize=9)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
