"""Progress of any stage on the terminal: the trainer's own lines, sweep rows, conversion and prune steps.

The same events (:mod:`slimyolo.progress`) arrive from a runner in this process and from a remote
job's WatchJob stream (rebuilt from their JSON form), so ``slimyolo stage`` and ``slimyolo pipeline
run`` (local or ``--remote``) print the same lines.
"""

from __future__ import annotations

import sys
from typing import TextIO

from slimyolo.progress import Event, StageStep, SweepBest, SweepPoint, TrainEpoch, TrainStep


class StageConsole:
    """A progress callback printing one line per epoch, sweep row and conversion step to ``stream`` (stderr).

    ``prefix`` starts every line: the pipeline's stage in the background prints beside the foreground's
    (and draws no bars, ``bars=False``).
    """

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None, prefix: str = "") -> None:
        from slimyolo.train.cli import TrainConsole

        self.stream = stream = stream or sys.stderr
        self.prefix = prefix
        # The trainer's renderer: a tqdm bar per epoch on a terminal, one line per finished epoch.
        self._train = TrainConsole(quiet=not (stream.isatty() if bars is None else bars), prefix=prefix)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStep | TrainEpoch):
            self._train(event)
        elif isinstance(event, SweepPoint):
            row = event.row
            pct = "-" if row.global_percent is None else f"{row.global_percent:.3f}"
            score = "timed, not evaluated" if row.map50 is None else f"mAP@0.5 {row.map50:.4f}"
            self._print(f"sweep {row.method:<9} percent {pct:>6} units {row.shortcuts:>3}: {score}  params "
                        f"{row.params:,}" + ("" if row.within or row.map50 is None else "  (out)"))
        elif isinstance(event, SweepBest):
            best = event.row
            self._print("sweep: no point within the allowed mAP drop" if best is None else
                        f"sweep best: {best.method} percent {best.global_percent} units {best.shortcuts}: "
                        f"mAP@0.5 {best.map50:.4f}, params {best.params:,}")
        elif isinstance(event, StageStep):
            extra = ", ".join(f"{k} {v}" for k, v in event.details.items())
            self._print(f"{event.stage}: {event.step}" + (f" ({extra})" if extra else ""))

    def _print(self, line: str) -> None:
        from slimyolo.train.cli import console_line

        console_line(self.prefix + line, self.stream)

    def close(self) -> None:
        self._train.close()
