"""Where the pipeline runs a stage: the :class:`StageRunner` protocol and :class:`LocalRunner`.

:class:`LocalRunner` runs each stage in this process; the runner that submits them as jobs of the
services is :class:`slimyolo.rpc.stages.RemoteRunner` (the transport stays in ``slimyolo.rpc``).
"""

from __future__ import annotations

from typing import Protocol

from slimyolo.progress import Progress
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import Spec
from slimyolo.store import Store


class StageRunner(Protocol):
    def run(self, spec: Spec, progress: Progress) -> StageResult:
        """Run one stage; returns its artifacts by role and its metrics."""


class LocalRunner:
    """Stages in this process, against ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        from slimyolo.stages.kinds import run_stage

        return run_stage(self.store, spec, progress)
