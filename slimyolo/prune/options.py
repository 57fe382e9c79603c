"""The settings of pruning, declared once: what the core functions take whole, what the stage specs embed.

Each class is a frozen dataclass of :func:`~slimyolo.params.param` fields, so its defaults, bounds,
choices and meanings are written here only. The stage specs (:mod:`slimyolo.stages.specs`) inherit
them, which keeps their YAML and gRPC keys flat (``global_percent``, ``layer_keep``, ...); the runners
hand them to the core with :meth:`~slimyolo.params.Declared.taken_from`; ``slimyolo prune``'s flags are
generated from them (:func:`~slimyolo.params.add_arguments`). A field added here therefore reaches
the command line, YAML specs, gRPC requests and the pipeline config without another line.

- :class:`KeepOptions`: what every layer keeps when channels go (shared by a prune and a sweep);
- :class:`PruneOptions`: one pruning point (the method and its strength, plus what is kept);
- :class:`SweepOptions`: the search of the best point (the ranges it tries, the rule that picks, the speed
  budget and where speed is measured).

How the stages score a model is :class:`slimyolo.train.options.EvalOptions`, the one declaration of every
evaluation.

Nothing here imports PyTorch: the specs and the command line read these classes before any model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Self

from slimyolo import vocab
from slimyolo.errors import SlimYoloError
from slimyolo.params import Declared, Fields, declared_fields, flag_name, param

# The KxK mosaics a sweep point can be timed as (1x1: none): the inference service tiles up to K*K video streams'
# frames into one inference of the model at K times its input size (its --mosaic, 2x2 by default).
MOSAIC_GRIDS = ("1x1", "2x2", "3x3", "4x4")
# An inference service's gRPC address: HOST:PORT, or a gRPC name with its scheme (dns:///NAME:PORT, ipv4:A:P,...).
_TARGET = re.compile(r"(?:(?:dns|ipv4|ipv6|unix|unix-abstract):\S+|[^\s:/]+:\d+|\[[0-9a-fA-F:.]+\]:\d+)")


@dataclass(frozen=True, kw_only=True)
class KeepOptions(Declared):
    """What every layer keeps of its channels, whatever the global threshold removes."""

    layer_keep: float = param("float", 0.01, low=0, high=1,
                              help="every layer keeps at least this fraction of its channels")
    round_to: int = param("int", 1, low=1, help="keep a multiple of this many channels per layer (1: no rounding)")

    def checked(self, source: str | None = None) -> Self:
        """These options read back through their declarations: an object built in Python (not from YAML or
        flags) is checked with the same bounds and messages as a spec before any work starts."""
        return type(self).from_dict(self.to_dict(), source or type(self).__name__)


@dataclass(frozen=True, kw_only=True)
class PruneOptions(KeepOptions):
    """One pruning point: channels at a global |γ| threshold, residual units, or both in one step."""

    method: str = param("choice", "channel", options=vocab.PRUNE_METHODS, help="what to prune")
    global_percent: float | None = param("float", None, low=0, high=1, low_open=True, high_open=True,
                                         help="fraction of the prunable channels below the global |γ| threshold "
                                              "(channel and both: required)")
    shortcuts: int = param("int", 0, low=0, help="residual units to remove (layer and both: at least 1)")

    def _validate(self, f: Fields) -> None:
        if self.method != "layer" and self.global_percent is None:
            raise SlimYoloError(f"{f.where('global_percent')} is required for {self.method} pruning")
        if self.method != "channel" and self.shortcuts < 1:
            raise SlimYoloError(f"{f.where('shortcuts')} (residual units to remove) must be at least 1 for "
                                f"{self.method} pruning")


@dataclass(frozen=True, kw_only=True)
class SweepOptions(KeepOptions):
    """The best-pruning-point search: which points it tries, and how it picks one (see :mod:`slimyolo.prune.sweep`)."""

    percents: tuple[float, float, float] = param("frange", (0.5, 0.95, 0.05),
                                                 help="global percents to try: low, high, coarse step")
    shortcuts: tuple[int, int, int] | None = param("irange", None, help="residual units to try as well: low, high, "
                                                   "coarse step; unset: channels only")
    max_map_drop: float = param("float", 0.01, low=0, high=1,
                                help="the best point keeps mAP@0.5 within this drop of the unpruned model's")
    fine_percent: float = param("float", 0.01, low=0, high=1, low_open=True,
                                help="the step of the fine search before the collapse")
    latency_runs: int = param("int", 0, low=0, help="timed PyTorch CPU forward passes per point (0: not measured)")
    objective: str = param("choice", "bflops", options=vocab.SWEEP_OBJECTIVES,
                           help="the best point: the fewest BFLOPs within the drop (bflops), the most measured "
                                "OpenVINO FPS within the drop (fps), or the highest mAP@0.5 among the points that "
                                "reach the speed budget min_fps or streams x stream_fps, ties to the fewer BFLOPs "
                                "(accuracy: FPS is measured first, and only the points that reach the budget are "
                                "evaluated)")
    precision: str = param("choice", "f32", options=vocab.FPS_PRECISIONS,
                           help="inference precision of the FPS measurement")
    fps_seconds: float = param("float", 1.0, low=0, high=vocab.MAX_BENCHMARK_SECONDS, low_open=True,
                               help="length of one FPS measurement")
    fps_repeats: int = param("int", 3, low=1, help="FPS measurements per point (the best counts)")
    min_fps: float | None = param("float", None, low=0, low_open=True,
                                  help="the speed budget of the accuracy objective: the frames per second a point "
                                       "must reach (with a mosaic, frames of all its streams: K*K an inference); "
                                       "or give it as streams and stream_fps")
    streams: int | None = param("int", None, low=1,
                                help="the budget as cameras: this many video streams, each at stream_fps (4 and 25: "
                                     "min_fps 100; with a KxK mosaic rounded up to whole mosaics, 6 streams in 2x2 "
                                     "need 2 inferences a frame: 8 x stream_fps)")
    stream_fps: float | None = param("float", None, low=0, low_open=True,
                                     help="frames per second of each of the streams")
    mosaic: str = param("choice", "1x1", options=MOSAIC_GRIDS,
                        help="time each point as the inference service runs video streams: KxK of them tiled "
                             "into one inference of the model at K times its input size (2x2: 832 for a 416 "
                             "model), its FPS counting K*K frames an inference, so it compares with "
                             "streams x stream_fps directly")
    measure_on: str | None = param("text", None,
                                   help="measure FPS on the inference service at this address (HOST:PORT, "
                                        "dns:///NAME:PORT, ipv4:ADDRESS:PORT), server-side on its CPU, instead of "
                                        "on this machine: each point is converted here, stored under a temporary "
                                        "model name (the service must read its models from this store), timed and "
                                        "unloaded")

    def _validate(self, f: Fields) -> None:
        lo, hi, step = self.percents
        if not (0 < lo <= hi < 1 and step > 0):
            raise SlimYoloError(f"{f.where('percents')}: need 0 < low <= high < 1 and a positive step, got "
                                f"{list(self.percents)}")
        if self.shortcuts is not None:
            s_lo, s_hi, s_step = self.shortcuts
            if not (0 <= s_lo <= s_hi and s_step >= 1):
                raise SlimYoloError(f"{f.where('shortcuts')}: need 0 <= low <= high and a step of at least 1, got "
                                    f"{list(self.shortcuts)}")
        self._validate_speed(f)

    @property
    def mosaic_k(self) -> int:
        """K of the KxK mosaic each point is timed as (1: none)."""
        return vocab.parse_grid(self.mosaic)

    def budget(self) -> float | None:
        """The frames per second a point must reach (the accuracy objective's budget); None when there is none.

        The cameras form counts whole inferences: a KxK mosaic serves up to K*K streams, and one that serves
        fewer costs the same inference, so ``streams`` is rounded up to whole mosaics (each K*K frames).
        """
        if self.streams is not None and self.stream_fps is not None:
            per = self.mosaic_k ** 2
            return math.ceil(self.streams / per) * per * self.stream_fps
        return self.min_fps

    def budget_text(self) -> str:
        """The budget in words, as the table and the errors say it: ``100 FPS (4 streams x 25 FPS, 2x2 mosaic)``."""
        budget = self.budget()
        if budget is None:
            return "no speed budget"
        parts = [f"{self.streams} streams x {self.stream_fps:g} FPS"] if self.streams is not None else []
        parts += [f"{self.mosaic} mosaic"] if self.mosaic_k > 1 else []
        return f"{budget:g} FPS" + (f" ({', '.join(parts)})" if parts else "")

    def _validate_speed(self, f: Fields) -> None:
        """The budget belongs to the accuracy objective and is given once; a mosaic and a target to measures of FPS."""
        def named(name: str) -> str:
            return flag_name(name) if f.flags else f"'{name}'"

        if (self.streams is None) != (self.stream_fps is None):
            given, missing = ("streams", "stream_fps") if self.stream_fps is None else ("stream_fps", "streams")
            raise SlimYoloError(f"{f.where(given)} needs {named(missing)} too: the budget of N streams at F frames "
                                "per second each")
        budget = self.budget()
        if self.min_fps is not None and self.streams is not None and not math.isclose(self.min_fps, budget or 0):
            raise SlimYoloError(f"{f.where('min_fps')} {self.min_fps:g} contradicts {named('streams')} x "
                                f"{named('stream_fps')}: {self.budget_text()}; give one of them")
        if self.objective == "accuracy" and budget is None:
            raise SlimYoloError(f"{f.where('objective')} accuracy needs a speed budget: {named('min_fps')}, or "
                                f"{named('streams')} and {named('stream_fps')}")
        if self.objective != "accuracy" and budget is not None:
            name = "min_fps" if self.min_fps is not None else "streams"
            raise SlimYoloError(f"{f.where(name)} is the speed budget of the accuracy objective, and the objective "
                                f"is {self.objective}: set {named('objective')} accuracy, or leave the budget out")
        measured = ["measure_on"] * (self.measure_on is not None) + ["mosaic"] * (self.mosaic_k > 1)
        if self.objective == "bflops" and measured:
            raise SlimYoloError(f"{f.where(measured[0])} says how FPS is measured, and the bflops objective measures "
                                f"none: set {named('objective')} fps or accuracy")
        if self.measure_on is not None and not _TARGET.fullmatch(self.measure_on):
            raise SlimYoloError(f"{f.where('measure_on')} must be an inference service's address: HOST:PORT, "
                                f"dns:///NAME:PORT or ipv4:ADDRESS:PORT, got {self.measure_on!r}")


def field_names(cls: type) -> tuple[str, ...]:
    """The declared fields of an options class, by name (what a command line leaves out where they do not apply)."""
    return tuple(f.name for f in declared_fields(cls))
