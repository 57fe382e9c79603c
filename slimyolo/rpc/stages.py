"""The stage services on the wire: a spec as its Start... request, and the client that runs one as a job.

A Start... request carries its stage's spec as one ``google.protobuf.Struct`` (``spec``): the same
fields, names and values as the stage's YAML spec. :func:`spec_to_request` writes the spec's
``to_dict()``; :func:`spec_from_request` reads it back through
:func:`~slimyolo.stages.kinds.parse_spec`, the parser of YAML specs, so a request is checked exactly
like a YAML spec (a bad field is INVALID_ARGUMENT naming the field, with the message ``slimyolo
stage`` prints) and every legal value, zero included, reaches the runner unchanged. Which service,
method and messages a kind uses comes from its entry in :data:`~slimyolo.stages.kinds.KINDS` and
the protos (:func:`start_messages`): nothing here knows a stage's fields or lists its messages.

:class:`RemoteRunner` is the pipeline's runner for ``slimyolo pipeline run --remote`` (and
:func:`run_remote` that of ``slimyolo stage KIND --remote``): each stage goes to its service as its
Start... request, and the job's progress and result come back as the in-process runner reports
them. :func:`served_detection` asks the inference service for the objects in one image. gRPC and
the generated messages are imported only when a call is made, so importing this module costs
nothing without them. The servers' side is :mod:`slimyolo.rpc.stage_service`.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.progress import Progress, event_from_dict
from slimyolo.stages.kinds import KINDS, StageKind, address_variable, parse_spec
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import Spec

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from slimyolo.security import ClientSecurity


START_ATTEMPTS = 6  # Start... calls a RemoteRunner makes while a service is UNAVAILABLE (about 15 s in all)


def start_messages(kind: StageKind) -> tuple[type[Message], type[Message]]:
    """(request, response) message classes of ``kind``'s Start... method, as the protos declare them.

    A service's messages live in ``slimyolo/rpc/gen/v1/<service>_pb2.py`` (its proto file is named
    after the service); importing that module registers them.
    """
    from google.protobuf import descriptor_pool, message_factory

    importlib.import_module(f"slimyolo.rpc.gen.v1.{kind.service}_pb2")
    method = descriptor_pool.Default().FindServiceByName(kind.grpc_service).methods_by_name[kind.start]
    return message_factory.GetMessageClass(method.input_type), message_factory.GetMessageClass(method.output_type)


def spec_to_request(spec: Spec) -> Message:
    """The Start... request of the stage ``spec`` describes, carrying the spec."""
    from slimyolo.rpc.messages import dict_to_struct

    request, _ = start_messages(KINDS[spec.kind])
    return request(spec=dict_to_struct(spec.to_dict()))


def spec_from_request(kind: str, request: Message) -> Spec:
    """The spec a Start... request carries, checked as a YAML spec of stage ``kind`` is."""
    from slimyolo.rpc.messages import struct_to_dict

    if not request.HasField("spec"):
        raise SlimYoloError(f"{type(request).__name__}: 'spec' is required (the {kind} stage's spec: the fields "
                            f"of its YAML spec, as a Struct)")
    return parse_spec(kind, struct_to_dict(request.spec))


def start_job(channel: Any, kind: StageKind, request: Message) -> Any:
    """Make ``kind``'s Start... call with ``request`` on ``channel`` and return the Job it started.

    The call is repeated while the service is UNAVAILABLE (a replica restarting, a connection cut
    before the answer came), :data:`START_ATTEMPTS` times in all with a growing pause; with the
    request's ``request_id`` set, a repeated call returns the job the first one started, never a
    second one. Other failures raise the SlimYOLO error they stand for.
    """
    import grpc

    from slimyolo.rpc.client import remote_error

    _, response = start_messages(kind)
    start = channel.unary_unary(f"/{kind.grpc_service}/{kind.start}", _registered_method=True,
                                request_serializer=type(request).SerializeToString,
                                response_deserializer=response.FromString)
    attempts = 0
    while True:
        try:
            return start(request, timeout=60).job
        except grpc.RpcError as exc:
            attempts += 1
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempts == START_ATTEMPTS:
                raise remote_error(exc) from exc
            time.sleep(0.5 * 2 ** (attempts - 1))


class RemoteRunner:
    """Stages as jobs of the services at ``addresses`` (by service name: trainer, pruner, converter, inference).

    The spec travels as it is, store keys included: the services resolve them in their store,
    which must be the store the caller means (the pipeline's uploads, the keys of a YAML spec).
    """

    def __init__(self, addresses: Mapping[str, str], ready_timeout: float = 120.0,
                 security: ClientSecurity | None = None) -> None:
        """``security``: TLS and token for every service (default: from the environment, as
        :func:`~slimyolo.rpc.client.connect` reads them)."""
        self.addresses, self.ready_timeout, self.security = dict(addresses), ready_timeout, security
        self._channels: dict[str, Any] = {}

    def channel(self, service: str) -> Any:
        from slimyolo.rpc.client import connect, wait_ready
        from slimyolo.rpc.server import LIVENESS

        if service not in self._channels:
            if service not in self.addresses:
                raise SlimYoloError(f"--remote: no address for the {service} service: set {address_variable(service)} "
                                    f"or remote.{service} in the config")
            # The inference service is ready only while it serves a model; the pipeline brings it one (LoadModel).
            health = LIVENESS if service == "inference" else ""
            channel = connect(self.addresses[service], health_service=health, security=self.security)
            wait_ready(channel, health, self.ready_timeout)
            self._channels[service] = channel
        return self._channels[service]

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        """Start the stage's job (:func:`start_job`, with a fresh request id) and follow it to its result."""
        from slimyolo.rpc.client import follow_job
        from slimyolo.rpc.gen.v1 import jobs_pb2, jobs_pb2_grpc
        from slimyolo.rpc.messages import artifact_from_proto, struct_to_dict

        kind = KINDS[spec.kind]
        channel = self.channel(kind.service)
        request = spec_to_request(spec)  # store keys travel as keys: the service resolves them in the shared store
        request.request_id = uuid.uuid4().hex
        job = start_job(channel, kind, request)

        def on_event(event: Any) -> None:
            if event.HasField("progress"):  # the same typed event as the runner reported in the service
                progress(event_from_dict(struct_to_dict(event.progress)))

        try:
            final = follow_job(channel, job.id, on_event)
        except (KeyboardInterrupt, Cancelled):  # stop the remote job too, not just this client: Ctrl-C, or a
            # progress callback that stops the stage (the pipeline's reference, when the stages beside it failed)
            jobs_pb2_grpc.JobsStub(channel).CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)
            raise
        artifacts = {role: artifact_from_proto(ref, role) for role, ref in final.result.artifacts.items()}
        return StageResult(artifacts, struct_to_dict(final.result.metrics))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def served_detection(runner: RemoteRunner) -> Callable[[str, str, Path], dict]:
    """Ask the inference service to load a model version and detect the objects of one image."""

    def detect(name: str, version: str, image: Path) -> dict[str, Any]:
        import grpc

        from slimyolo.rpc.client import connect, remote_error
        from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc

        runner.channel("inference")  # the service is live
        # LoadModel and Detect on one replica: the replica that loaded the version is the one that serves it
        with connect(runner.addresses["inference"], lb_policy="pick_first", security=runner.security) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            try:
                stub.LoadModel(inference_pb2.LoadModelRequest(name=name, version=version), timeout=300)
                answer = stub.Detect(inference_pb2.DetectRequest(
                    model_name=name, model_version=version, image=inference_pb2.Image(encoded=image.read_bytes())),
                    timeout=60)
            except grpc.RpcError as exc:
                raise remote_error(exc) from exc
        return {"address": runner.addresses["inference"], "model": name, "version": answer.model_version,
                "image": str(image), "detections": [
                    {"class": d.class_name, "score": round(d.score, 3),
                     "box": [round(v, 1) for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2)]}
                    for d in answer.detections]}

    return detect


def run_remote(address: str, spec: Spec, progress: Progress, security: ClientSecurity | None = None) -> StageResult:
    """Run ``spec`` as a job of the stage's service at ``address`` (``slimyolo stage KIND --spec --remote``)."""
    runner = RemoteRunner({KINDS[spec.kind].service: address}, security=security)
    try:
        return runner.run(spec, progress)
    finally:
        runner.close()
