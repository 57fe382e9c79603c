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

Every channel also carries a gRPC service config (:func:`service_config`) so that restarts,
rollouts and a lost replica cost no failed call: the idempotent calls (KServe v2, Detect,
ListModels, GetJob, ListJobs, WatchJob before its first event, health) are retried by gRPC itself
on UNAVAILABLE (a replica that went away or refused the call while draining) and
RESOURCE_EXHAUSTED (a full queue), with exponential backoff; and the channel watches each
replica's health (``healthCheckConfig``), so a replica that reports NOT_SERVING (it drains on
SIGTERM) gets no new call. Start... calls are made safe to repeat by their ``request_id``
(:class:`slimyolo.rpc.stages.RemoteRunner` sends one), and :func:`follow_job` resumes a watch from
the last event it saw.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimyolo.errors import SlimYoloError, UnavailableError
from slimyolo.rpc import MAX_MESSAGE_BYTES
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.status import code_from_number, error_for
from slimyolo.security import ClientSecurity

# Calls that do the same whatever how often they arrive: safe for gRPC to send again.
IDEMPOTENT: tuple[dict[str, str], ...] = (
    {"service": "inference.GRPCInferenceService"},  # KServe v2: readiness, metadata, ModelInfer
    {"service": "slimyolo.v1.Inference", "method": "Detect"},
    {"service": "slimyolo.v1.Inference", "method": "ListModels"},
    {"service": "slimyolo.v1.Jobs", "method": "GetJob"},
    {"service": "slimyolo.v1.Jobs", "method": "ListJobs"},
    {"service": "slimyolo.v1.Jobs", "method": "WatchJob"},  # retried only until its first event arrives
    {"service": "grpc.health.v1.Health", "method": "Check"},
)
RETRY_POLICY: dict[str, Any] = {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s",
                                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}


def service_config(lb_policy: str = "round_robin", health_service: str | None = "") -> dict[str, Any]:
    """The gRPC service config of every SlimYOLO channel (the README shows it for other clients).

    ``lb_policy`` balances the calls (``round_robin``) or keeps them on one replica (``pick_first``);
    ``health_service`` is the health service name whose status decides whether a replica gets calls
    (``""``: the whole server, NOT_SERVING while it drains or, for inference, has no model; None: no
    health checking, for a channel that must reach replicas that are not ready yet).
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{lb_policy: {}}],
                              "methodConfig": [{"name": list(IDEMPOTENT), "retryPolicy": RETRY_POLICY}]}
    if health_service is not None:
        config["healthCheckConfig"] = {"serviceName": health_service}
    return config


def connect(target: str, max_message_bytes: int = MAX_MESSAGE_BYTES, lb_policy: str = "round_robin",
            health_service: str | None = "", security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to ``target`` (see the module docstring), round-robin over its addresses,
    with the servers' message-size limit and :func:`service_config` (retries of idempotent calls,
    no new calls to a replica whose ``health_service`` is not SERVING). ``lb_policy="pick_first"``
    keeps every call on one replica (the first address that connects), for calls that build on each
    other's server-side state.

    ``security`` (else the SLIMYOLO_CLIENT_TLS_* and SLIMYOLO_TOKEN variables; see
    :class:`~slimyolo.security.ClientSecurity`) makes it a TLS channel that checks the server's
    certificate, presents the client's own (mTLS) and sends the token with every call; without any, a
    plaintext channel."""
    security = ClientSecurity.from_env(os.environ) if security is None else security
    options = [
        *security.channel_options(),
        ("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(service_config(lb_policy, health_service))), ("grpc.enable_retries", 1),
        # A call is retried only while its request is still buffered: keep requests up to the message limit.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        # A replica restarted on its address rejoins within seconds (gRPC's default backoff grows to 120 s).
        ("grpc.max_reconnect_backoff_ms", 5000)]
    if security.secure:
        return grpc.secure_channel(target, channel_credentials(security), options=options)
    return grpc.insecure_channel(target, options=options)


def channel_credentials(security: ClientSecurity) -> grpc.ChannelCredentials:
    """The credentials of a secure channel: TLS with ``security``'s CA (and client certificate, for mTLS), and its
    token as ``authorization: Bearer`` metadata on every call."""
    tls = grpc.ssl_channel_credentials(
        root_certificates=security.pem("tls_ca"),
        private_key=security.pem("tls_key") if security.tls_key else None,
        certificate_chain=security.pem("tls_cert") if security.tls_cert else None)
    if not security.token:
        return tls
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(security.token))


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


def follow_job(channel: grpc.Channel, job_id: str, on_event: Callable[[common_pb2.JobEvent], None] | None = None,
               reconnect_seconds: float = 300.0) -> common_pb2.Job:
    """Watch a job to its end, passing each event to ``on_event`` once, in order; return the final Job.

    A watch that breaks with UNAVAILABLE (the replica went away, or drained and handed the job over
    to another one: its last event is then ``handed_over``) is resumed from the next event on any
    replica of the channel's target, for up to ``reconnect_seconds`` without an event. A job that
    did not succeed raises the error its status stands for (a job that failed with UNAVAILABLE
    raises UnavailableError: start it again later).
    """
    stub = jobs_pb2_grpc.JobsStub(channel)
    next_seq, broken_since = 0, None
    while True:
        try:
            for response in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id, from_seq=next_seq)):
                broken_since = None
                if response.event.seq < next_seq:
                    continue  # already passed on
                next_seq = response.event.seq + 1
                if on_event is not None:
                    on_event(response.event)
                if response.HasField("job"):
                    job = response.job
                    break
            else:
                raise UnavailableError(f"job {job_id}: the watch ended before the job did")
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise remote_error(exc) from exc
            broken_since = time.monotonic() if broken_since is None else broken_since
            if time.monotonic() - broken_since > reconnect_seconds:
                raise remote_error(exc) from exc
            time.sleep(0.5)
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise error_for(code_from_number(job.error.code), f"{job.kind} job {job.id}: {job.error.message}")
    return job
