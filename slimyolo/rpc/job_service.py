"""``slimyolo.v1.Jobs``: a JobManager's jobs as protobuf messages (get, watch, cancel, list).

Served next to each stage service (:meth:`slimyolo.rpc.server.Server.enable_jobs`). A job's
progress events and metrics leave as ``Struct`` values here, its artifacts as ``ArtifactRef``
messages, its error as the status its kind stands for (:mod:`slimyolo.rpc.status`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from slimyolo.progress import event_to_dict
from slimyolo.rpc.auth import jobs_visible_to
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.jobs import JobEvent, JobManager, JobSnapshot
from slimyolo.rpc.messages import artifact_to_proto, dict_to_struct
from slimyolo.rpc.status import code_number


def _timestamp(msg: Any, seconds: float | None) -> None:
    if seconds is not None:
        msg.FromNanoseconds(int(seconds * 1e9))


def event_to_proto(event: JobEvent) -> common_pb2.JobEvent:
    msg = common_pb2.JobEvent(seq=event.seq, state=int(event.state))
    _timestamp(msg.time, event.time)
    if event.progress is not None:
        msg.progress.CopyFrom(dict_to_struct(event_to_dict(event.progress)))
    return msg


def job_to_proto(job: JobSnapshot) -> common_pb2.Job:
    msg = common_pb2.Job(id=job.id, kind=job.kind, state=int(job.state))
    if job.progress is not None:
        msg.progress.CopyFrom(dict_to_struct(event_to_dict(job.progress)))
    if job.outcome is not None:
        for role, artifact in job.outcome.artifacts.items():
            msg.result.artifacts[role].CopyFrom(artifact_to_proto(artifact))
        msg.result.metrics.CopyFrom(dict_to_struct(job.outcome.metrics))
    if job.error is not None:
        msg.error.code, msg.error.message = code_number(job.error.kind), job.error.message
    _timestamp(msg.create_time, job.create_time)
    _timestamp(msg.start_time, job.start_time)
    _timestamp(msg.end_time, job.end_time)
    return msg


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    """``slimyolo.v1.Jobs`` over a JobManager; errors become statuses in the server's interceptor.

    With tokens on the server, each caller sees the jobs it started; an admin sees all
    (:func:`slimyolo.rpc.auth.jobs_visible_to`).
    """

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=job_to_proto(self.manager.get(request.id, jobs_visible_to(context))))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest,
                 context: grpc.ServicerContext) -> Iterator[jobs_pb2.WatchJobResponse]:
        viewer = jobs_visible_to(context)
        for event in self.manager.watch(request.id, request.from_seq, active=context.is_active, viewer=viewer):
            response = jobs_pb2.WatchJobResponse(event=event_to_proto(event))
            if event.state.final:
                response.job.CopyFrom(job_to_proto(self.manager.get(request.id, viewer)))
            yield response

    def CancelJob(self, request: jobs_pb2.CancelJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.CancelJobResponse:
        return jobs_pb2.CancelJobResponse(job=job_to_proto(self.manager.cancel(request.id,
                                                                               viewer=jobs_visible_to(context))))

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in self.manager.list(jobs_visible_to(context))])
