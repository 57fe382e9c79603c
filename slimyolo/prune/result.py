"""What a pruning run produced: the pruned model, its before/after figures, and its files.

The figures are recounted from the cfgs (:func:`slimyolo.darknet.flops.model_stats`), so the
summary says exactly what the written cfg describes. ``save`` writes the darknet cfg, the
``.weights`` (readable by darknet, OpenCV and every other darknet reader), a SlimYOLO ``.pt``
and ``summary.json`` into a new folder that appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from slimyolo.darknet.cfg import Cfg
from slimyolo.darknet.flops import ModelStats, model_stats
from slimyolo.darknet.graph import Conv
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_dir
from slimyolo.prune.functional import Plan, surviving
from slimyolo.prune.report import ChannelReport, SparsityReport

FILES = {"cfg": "pruned.cfg", "weights": "pruned.weights", "pt": "pruned.pt", "summary": "summary.json"}


@dataclass
class PruneResult:
    method: str  # "channel", "layer" or "both"
    model: Darknet  # the pruned model, eval mode
    before: ModelStats
    after: ModelStats
    settings: dict[str, float | int]
    removed_units: list[dict] = field(default_factory=list)  # {"shortcut", "layers", "importance"}
    channels: list[dict] = field(default_factory=list)  # per original convolution
    channel_report: ChannelReport | None = None  # channel and both: asked against removed
    sparsity: SparsityReport | None = None  # channel and both: |γ| near zero before pruning

    @classmethod
    def build(cls, method: str, original: Darknet, pruned: Darknet, plan: Plan,
              settings: dict[str, float | int], unit_importance: dict[int, float],
              channel_report: ChannelReport | None = None, sparsity: SparsityReport | None = None) -> PruneResult:
        new_index = surviving(original.graph, plan)
        channels = []
        for i, spec in enumerate(original.graph.specs):
            if isinstance(spec, Conv):
                kept = int(plan.keep[i].sum()) if i in plan.keep else spec.filters
                channels.append({"layer": i, "new_layer": new_index.get(i), "filters": spec.filters,
                                 "kept": kept if i in new_index else 0})
        units = [{"shortcut": s, "layers": [s - 2, s - 1, s], "importance": unit_importance[s]}
                 for s in sorted(plan.units)]
        return cls(method, pruned, model_stats(original.cfg), model_stats(pruned.cfg), settings, units, channels,
                   channel_report, sparsity)

    @property
    def cfg(self) -> Cfg:
        """The pruned cfg (the one ``save`` writes)."""
        return self.model.cfg

    def warnings(self) -> list[str]:
        """Sparsity training too short for the asked percent; asked and removed far apart."""
        if self.channel_report is None or self.sparsity is None:
            return []
        found = (self.sparsity.warning(self.channel_report.asked), self.channel_report.warning())
        return [w for w in found if w]

    def summary(self) -> dict:
        """The JSON summary: settings, before/after figures, the reports, units removed, channels kept."""
        reports = {}
        if self.channel_report is not None and self.sparsity is not None:
            reports = {"channel_report": self.channel_report.as_dict(), "sparsity": self.sparsity.as_dict(),
                       "warnings": self.warnings()}
        return {"method": self.method, **self.settings, "before": self.before.as_dict(),
                "after": self.after.as_dict(), **reports, "removed_units": self.removed_units,
                "channels": self.channels}

    def format(self) -> str:
        """The printed summary (the table the original projects print)."""
        b, a = self.before, self.after
        settings = ", ".join(f"{k.replace('_', ' ')} {v:.6g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                             for k, v in self.settings.items())
        lines = [f"{self.method} pruning: {settings}"]
        if self.channel_report is not None and self.sparsity is not None:
            lines += [self.sparsity.line(), self.channel_report.line()]  # warnings(): the caller logs them
        lines.append(f"{'':<10}{'before':>16}{'after':>16}{'ratio':>9}")
        for name, x, y in (("layers", b.layers, a.layers), ("params", b.params, a.params),
                           ("BFLOPs", b.bflops, a.bflops), ("act. MB", b.activation_mb, a.activation_mb),
                           (".weights", b.weights_bytes, a.weights_bytes)):
            fmt = "{:>16.3f}" if isinstance(x, float) else "{:>16,}"
            lines.append(f"{name:<10}" + fmt.format(x) + fmt.format(y) + f"{y / x:>9.1%}")
        if self.removed_units:
            lines.append("residual units removed (shortcut layer: mean |γ|): "
                         + ", ".join(f"{u['shortcut']}: {u['importance']:.4g}" for u in self.removed_units))
        lines.append(f"{'layer':>6}{'new':>6}{'filters':>9}{'kept':>7}")
        for row in self.channels:
            new = "-" if row["new_layer"] is None else str(row["new_layer"])
            lines.append(f"{row['layer']:>6}{new:>6}{row['filters']:>9}{row['kept']:>7}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the pruned cfg, .weights, .pt and summary.json into ``out_dir`` (new or empty)."""
        from slimyolo.darknet.weights import save_checkpoint

        out_dir = Path(out_dir)
        prepare_out_dir(out_dir)
        with atomic_dir(out_dir) as tmp:
            self.cfg.write(tmp / FILES["cfg"])
            self.model.save_darknet_weights(tmp / FILES["weights"])
            save_checkpoint(self.model, tmp / FILES["pt"], prune=self.summary())
            (tmp / FILES["summary"]).write_text(json.dumps(self.summary(), indent=1) + "\n", encoding="utf-8")
        return {key: out_dir / name for key, name in FILES.items()}


def check_out_dir(out_dir: Path) -> None:
    """An output folder must be new or empty: pruning never mixes its files with others."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SlimYoloError(f"{out_dir}: the output folder exists and is not empty")


def prepare_out_dir(out_dir: Path) -> None:
    """Check ``out_dir`` and remove it if it is an empty folder, so atomic_dir can create it."""
    check_out_dir(out_dir)
    if out_dir.exists():
        os.rmdir(out_dir)
