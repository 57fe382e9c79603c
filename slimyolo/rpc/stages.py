"""The client side of the stage services: a stage spec run as a job of its service.

:class:`RemoteRunner` is the pipeline's runner for ``slimyolo pipeline run --remote``: each stage
goes to the service of the routing table (:mod:`slimyolo.stages.routing`) as its Start...
request, and the job's progress and result come back as the in-process runner reports them.
:func:`served_detection` asks the inference service for the objects in one image. gRPC is
imported only when a call is made, so importing this module costs nothing without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.progress import Progress, event_from_dict
from slimyolo.stages.routing import ROUTES
from slimyolo.stages.runners import StageResult
from slimyolo.stages.specs import Spec


class RemoteRunner:
    """Stages as jobs of the services at ``addresses`` (by service name: trainer, pruner, converter, inference).

    The spec travels as it is, store keys included: the services resolve them in their store,
    which must be the store the caller means (the pipeline's uploads, the keys of a YAML spec).
    """

    def __init__(self, addresses: Mapping[str, str], ready_timeout: float = 120.0) -> None:
        self.addresses, self.ready_timeout = dict(addresses), ready_timeout
        self._channels: dict[str, Any] = {}

    def channel(self, service: str) -> Any:
        from slimyolo.rpc.client import connect, wait_ready

        if service not in self._channels:
            if service not in self.addresses:
                from slimyolo.pipeline.config import address_variable

                raise SlimYoloError(f"--remote: no address for the {service} service: set {address_variable(service)} "
                                    f"or remote.{service} in the config")
            channel = connect(self.addresses[service])
            # The inference service is ready only while it serves a model; the pipeline brings it one (LoadModel).
            wait_ready(channel, "liveness" if service == "inference" else "", self.ready_timeout)
            self._channels[service] = channel
        return self._channels[service]

    def run(self, spec: Spec, progress: Progress) -> StageResult:
        import grpc

        from slimyolo.rpc.client import follow_job, remote_error
        from slimyolo.rpc.gen.v1 import converter_pb2_grpc, jobs_pb2, jobs_pb2_grpc, pruner_pb2_grpc, trainer_pb2_grpc
        from slimyolo.rpc.messages import artifact_from_proto, struct_to_dict
        from slimyolo.stages.messages import spec_to_request

        route = ROUTES[spec.kind]
        service = route.service
        stub = {"trainer": trainer_pb2_grpc.TrainerStub, "pruner": pruner_pb2_grpc.PrunerStub,
                "converter": converter_pb2_grpc.ConverterStub}[service](self.channel(service))
        request = spec_to_request(spec)  # store keys travel as keys: the service resolves them in the shared store
        try:
            job = getattr(stub, route.method)(request, timeout=60).job
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc

        def on_event(event: Any) -> None:
            if event.HasField("progress"):  # the same typed event as the runner reported in the service
                progress(event_from_dict(struct_to_dict(event.progress)))

        try:
            final = follow_job(self.channel(service), job.id, on_event)
        except KeyboardInterrupt:  # stop the remote job too, not just this client
            jobs_pb2_grpc.JobsStub(self.channel(service)).CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)
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

        from slimyolo.rpc.client import remote_error
        from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc

        stub = inference_pb2_grpc.InferenceStub(runner.channel("inference"))
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


def run_remote(address: str, spec: Spec, progress: Progress) -> StageResult:
    """Run ``spec`` as a job of the stage's service at ``address`` (``slimyolo stage KIND --spec --remote``)."""
    runner = RemoteRunner({ROUTES[spec.kind].service: address})
    try:
        return runner.run(spec, progress)
    finally:
        runner.close()
