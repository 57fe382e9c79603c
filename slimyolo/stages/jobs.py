"""A stage as a gRPC job: what the trainer, pruner and converter servicers start for each request.

The job runs the stage's runner against the service's store; its events are the runner's
progress events (:mod:`slimyolo.progress`, typed until they leave as a Struct), its result the
runner's artifacts and metrics, and its failure a status (an
unreachable store → UNAVAILABLE: start it again later). The job's record keeps the spec, so a
service that restarts runs an unfinished job again (:func:`rebuild_stage`), and the stage,
durable (:mod:`slimyolo.stages.durable`), resumes from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from slimyolo.progress import Event, Progress
from slimyolo.rpc.gen.v1 import common_pb2
from slimyolo.rpc.jobs import JobFn, JobManager, JobOutcome, job_to_proto
from slimyolo.stages.routing import ROUTES
from slimyolo.stages.runners import run_stage
from slimyolo.stages.specs import Spec, parse_spec
from slimyolo.store import Store


def stage_job(store: Store, spec: Spec, observe: Progress | None = None) -> JobFn:
    """The job function running ``spec``; ``observe`` sees each progress event first (for metrics)."""

    def work(progress: Progress) -> JobOutcome:
        def report(event: Event) -> None:
            if observe is not None:
                observe(event)
            progress(event)

        result = run_stage(store, spec, report)
        return JobOutcome(result.artifacts, result.metrics)

    return work


def submit_stage(jobs: JobManager, store: Store, spec: Spec, observe: Progress | None = None) -> common_pb2.Job:
    """Queue the stage ``spec`` describes, its spec kept in the job's record."""
    job = jobs.submit(ROUTES[spec.kind].job_kind, stage_job(store, spec, observe),  # "evaluate" for eval
                      spec={"kind": spec.kind, **spec.to_dict()})
    return job_to_proto(job)


def rebuild_stage(store: Store, observe: Progress | None = None) -> Callable[[str, Mapping[str, Any]], JobFn]:
    """For :class:`JobManager`: a journaled stage job's function again, from the spec in its record."""

    def rebuild(kind: str, doc: Mapping[str, Any]) -> JobFn:
        fields = dict(doc)
        return stage_job(store, parse_spec(fields.pop("kind"), fields, f"the record of a {kind} job"), observe)

    return rebuild
