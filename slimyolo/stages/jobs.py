"""A stage as a gRPC job: what the trainer, pruner and converter servicers start for each request.

The job runs the stage's runner against the service's store; its events are the runner's
progress events (:mod:`slimyolo.progress`, typed until they leave as a Struct), its result the
runner's artifacts and metrics, and its failure a status (an
unreachable store → UNAVAILABLE: start it again later).
"""

from __future__ import annotations

from slimyolo.progress import Event, Progress
from slimyolo.rpc.gen.v1 import common_pb2
from slimyolo.rpc.jobs import JobManager, JobOutcome, job_to_proto
from slimyolo.stages.routing import ROUTES
from slimyolo.stages.runners import run_stage
from slimyolo.stages.specs import Spec
from slimyolo.store import Store


def submit_stage(jobs: JobManager, store: Store, spec: Spec, observe: Progress | None = None) -> common_pb2.Job:
    """Queue the stage ``spec`` describes; ``observe`` sees each progress event first (for metrics)."""

    def work(progress: Progress) -> JobOutcome:
        def report(event: Event) -> None:
            if observe is not None:
                observe(event)
            progress(event)

        result = run_stage(store, spec, report)
        return JobOutcome(result.artifacts, result.metrics)

    return job_to_proto(jobs.submit(ROUTES[spec.kind].job_kind, work))  # "evaluate" for eval, as the protos name it
