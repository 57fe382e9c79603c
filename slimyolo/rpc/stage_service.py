"""The one servicer of the stage services: each Start... request becomes its stage's spec and a job running it.

:func:`serve_stages` serves one stage service (``trainer``, ``pruner``, ``converter``) on the
shared bootstrap: the generated ``slimyolo.v1.<Service>`` servicer with one handler per stage kind
of :data:`~slimyolo.stages.kinds.KINDS` that the service runs, plus ``slimyolo.v1.Jobs``. A handler
reads the request's spec exactly as a YAML spec is read (:func:`slimyolo.rpc.stages.spec_from_request`)
and submits a job running the stage against the service's store; the spec itself is never
changed, so it has one digest in process and here. The job's events are the runner's progress
events, its result the runner's :class:`~slimyolo.stages.runners.StageResult`, its failure an
error kind (an unreachable store → UNAVAILABLE: start it again later). The job's record keeps the
spec, so a service that restarts runs an unfinished job again (:func:`rebuild_stage`), and the
stage, durable (:mod:`slimyolo.stages.durable`), resumes from its last checkpoint.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from slimyolo.progress import Event, Progress
from slimyolo.rpc.auth import caller
from slimyolo.rpc.gen.v1 import common_pb2
from slimyolo.rpc.job_service import job_to_proto
from slimyolo.rpc.jobs import JobFn, JobManager
from slimyolo.rpc.server import Server
from slimyolo.rpc.stages import spec_from_request, start_messages
from slimyolo.stages.kinds import StageKind, kinds_of, parse_spec, run_stage
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import Spec
from slimyolo.stages.workspace import remove_stale_work_dirs
from slimyolo.store import Store, open_store

StageRun = Callable[[Store, Spec, Progress | None], StageResult]


def stage_job(store: Store, spec: Spec, run: StageRun = run_stage, observe: Progress | None = None) -> JobFn:
    """The job function running ``spec`` with ``run``; ``observe`` sees each progress event first (for metrics)."""

    def work(progress: Progress) -> StageResult:
        def report(event: Event) -> None:
            if observe is not None:
                observe(event)
            progress(event)

        return run(store, spec, report)

    return work


def rebuild_stage(store: Store, run: StageRun = run_stage,
                  observe: Progress | None = None) -> Callable[[str, Mapping[str, Any]], JobFn]:
    """For :class:`JobManager`: a journaled stage job's function again, from the spec in its record."""

    def rebuild(job_kind: str, doc: Mapping[str, Any]) -> JobFn:
        fields = dict(doc)
        spec = parse_spec(fields.pop("kind"), fields, f"the record of a {job_kind} job")
        return stage_job(store, spec, run, observe)

    return rebuild


class StageServicer:
    """The Start... handlers of one stage service: request → spec → a job in ``jobs`` running it."""

    def __init__(self, store: Store, jobs: JobManager, run: StageRun = run_stage,
                 observe: Progress | None = None) -> None:
        self.store, self.jobs, self.run, self.observe = store, jobs, run, observe

    def submit(self, spec: Spec, started_by: str | None = None, request_id: str = "") -> common_pb2.Job:
        """Queue the stage ``spec`` describes, its spec kept in the job's record (with ``started_by``, the caller's
        name); the job as a protobuf Job. A ``request_id`` used before returns the job it started
        (:meth:`JobManager.submit`)."""
        job = self.jobs.submit(spec.kind, stage_job(self.store, spec, self.run, self.observe),
                               spec={"kind": spec.kind, **spec.to_dict()}, started_by=started_by,
                               request_id=request_id)
        return job_to_proto(job)

    def handler(self, kind: StageKind) -> Callable[[Message, grpc.ServicerContext], Message]:
        """The handler of ``kind``'s Start... method."""
        _, response = start_messages(kind)

        def start(request: Message, context: grpc.ServicerContext) -> Message:
            identity = caller(context)
            return response(job=self.submit(spec_from_request(kind.name, request),
                                            identity.name if identity is not None else None, request.request_id))

        return start


def serve_stages(server: Server, service: str, run: StageRun = run_stage, observe: Progress | None = None) -> None:
    """Serve the stage service ``service`` and ``slimyolo.v1.Jobs`` on ``server`` with the store of the environment
    (``SLIMYOLO_STORE``), and report it SERVING.

    ``run`` runs a spec (:func:`~slimyolo.stages.kinds.run_stage`: the kind's runner); ``observe`` sees every
    progress event of every job (a service's own metrics). The servicer is the generated one
    (``slimyolo/rpc/gen/v1/<service>_pb2_grpc.py``) with a handler for each stage kind the service runs.
    """
    kinds = kinds_of(service)
    (name,) = {kind.grpc_service for kind in kinds}
    remove_stale_work_dirs()  # the work folders of jobs killed with an earlier process
    store = open_store()
    jobs = server.enable_jobs(store, rebuild_stage(store, run, observe))
    stage = StageServicer(store, jobs, run, observe)
    generated = importlib.import_module(f"slimyolo.rpc.gen.v1.{service}_pb2_grpc")
    short = name.rsplit(".", 1)[1]  # slimyolo.v1.Pruner → PrunerServicer, add_PrunerServicer_to_server
    servicer = getattr(generated, f"{short}Servicer")()
    for kind in kinds:
        setattr(servicer, kind.start, stage.handler(kind))
    server.add_service(name, getattr(generated, f"add_{short}Servicer_to_server"), servicer)
    server.set_serving(name)
