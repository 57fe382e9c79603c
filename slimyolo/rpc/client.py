"""Client side of the services: channels, readiness, following jobs, and errors as SlimYOLO errors.

``slimyolo pipeline run --remote`` and the tests drive the services through these, so a
remote failure surfaces as the same exception (and the same one-line CLI message) as a local
one: INVALID_ARGUMENT → SlimYoloError, NOT_FOUND → NotFoundError, UNAVAILABLE →
UnavailableError (retry later), RESOURCE_EXHAUSTED → ResourceExhausted (a full server; retry
later), CANCELLED → Cancelled.

Every channel balances its calls round-robin over all the addresses its target resolves to
(gRPC's ``round_robin`` policy instead of the default ``pick_first``): ``host:port`` and
``dns:///host:port`` (every A record: a Kubernetes headless Service lists one per ready pod),
``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (a fixed list). A replica that goes away drops out of the
rotation, and a re-resolution (when a connection closes, e.g. at the server's maximum
connection age) brings new replicas in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimyolo.errors import SlimYoloError, UnavailableError
from slimyolo.rpc import MAX_MESSAGE_BYTES
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.status import code_from_number, error_for


def connect(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES,
            lb_policy: str = "round_robin") -> grpc.Channel:
    """An insecure channel to ``target`` (see the module docstring), round-robin over its addresses,
    with the servers' message-size limit. ``lb_policy="pick_first"`` keeps every call on one replica
    (the first address that connects), for calls that build on each other's server-side state."""
    return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", max_message_bytes),
                                                  ("grpc.max_send_message_length", max_message_bytes),
                                                  ("grpc.lb_policy_name", lb_policy)])


def remote_error(exc: grpc.RpcError) -> SlimYoloError:
    """The SlimYOLO error a failed call stands for (raise it ``from`` the RpcError)."""
    return error_for(exc.code(), exc.details() or "")


def wait_ready(channel: grpc.Channel, service: str = "", timeout: float = 60.0) -> None:
    """Poll the health service until ``service`` ("" = the whole server) is SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline, last = time.monotonic() + timeout, "no answer"
    while True:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() >= deadline:
            raise UnavailableError(f"service {service or '(server)'} not ready after {timeout:g}s ({last})")
        time.sleep(0.2)


def follow_job(channel: grpc.Channel, job_id: str,
               on_event: Callable[[common_pb2.JobEvent], None] | None = None) -> common_pb2.Job:
    """Watch a job to its end, passing each event to ``on_event``; return the final Job.

    A job that did not succeed raises the error its status stands for (a job that failed with
    UNAVAILABLE raises UnavailableError: start it again later).
    """
    stub = jobs_pb2_grpc.JobsStub(channel)
    try:
        for response in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id)):
            if on_event is not None:
                on_event(response.event)
            if response.HasField("job"):
                job = response.job
                break
        else:
            raise UnavailableError(f"job {job_id}: the watch ended before the job did")
    except grpc.RpcError as exc:
        raise remote_error(exc) from exc
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise error_for(code_from_number(job.error.code), f"{job.kind} job {job.id}: {job.error.message}")
    return job
