"""The inference service: the Open Inference Protocol (``inference.GRPCInferenceService``) and
``slimyolo.v1.Inference`` (Detect, DetectStream, LoadModel, UnloadModel, ListModels, BenchmarkModel).

Thin servicers: each call's protobuf becomes the plain arguments of
:class:`slimyolo.serving.dataplane.DataPlane`, and its result the response; the model
repository, hot reloads, the stream multiplexer and the metrics live there. Both services
(and so the server's overall health, service ``""``) report SERVING while the server can answer
for at least one model (:attr:`slimyolo.serving.manager.ModelManager.ready`), NOT_SERVING
otherwise; ``liveness`` stays SERVING. KServe's ServerReady says the same; ModelReady answers
NOT_FOUND for a model the repository does not have, as ModelMetadata does.
Nothing imported here pulls in PyTorch or TensorFlow (the inference image has neither).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator

import grpc

from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from slimyolo.rpc.messages import precision_to_proto
from slimyolo.rpc.server import Server, on_call_end
from slimyolo.rpc.status import status_of
from slimyolo.serving import config as serving_config
from slimyolo.serving.config import ServingConfig
from slimyolo.serving.dataplane import BenchmarkResult, DataPlane, StreamRequest, Thresholds
from slimyolo.serving.images import EncodedImage, RawImage
from slimyolo.serving.kserve import InputTensor
from slimyolo.serving.manager import ModelInfo

KSERVE = "inference.GRPCInferenceService"
INFERENCE = "slimyolo.v1.Inference"


# -- protobuf → plain values ----------------------------------------------------------------------

def _image(message: inference_pb2.Image) -> EncodedImage | RawImage | None:
    kind = message.WhichOneof("data")
    if kind == "encoded":
        return EncodedImage(message.encoded)
    if kind == "raw":
        return RawImage(message.raw.height, message.raw.width, message.raw.bgr)
    return None


def _thresholds(options: inference_pb2.DetectionOptions) -> Thresholds:
    return Thresholds(options.conf_threshold, options.iou_threshold, options.max_detections)


def _detections(detections, names: tuple[str, ...]) -> list[inference_pb2.Detection]:
    # Python floats and ints up front: a NumPy scalar per field costs more than the message it goes into.
    return [inference_pb2.Detection(box=inference_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), score=s,
                                    class_id=c, class_name=names[c] if c < len(names) else str(c))
            for b, s, c in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.classes.tolist(),
                               strict=True)]


def _stream_requests(messages: Iterable[inference_pb2.DetectStreamRequest], first_model: list[str]
                     ) -> Iterator[StreamRequest]:
    """The call's frames; ``first_model`` gets the model the first one names (the call's metric label)."""
    for m in messages:
        if not first_model:
            first_model.append(m.model_name)
        yield StreamRequest(m.model_name, m.model_version, m.stream_id, m.frame_id, _image(m.frame),
                            _thresholds(m.options))


def _model_info(info: ModelInfo) -> inference_pb2.ModelInfo:
    message = inference_pb2.ModelInfo(name=info.name, version=info.version, reason=info.reason,
                                      state=inference_pb2.ModelState.Value(f"MODEL_STATE_{info.state.name}"))
    if info.meta is not None:
        message.precision = precision_to_proto(info.meta.precision)
        message.input_size.CopyFrom(common_pb2.ImageSize(width=info.meta.input.width, height=info.meta.input.height))
        message.class_names.extend(info.meta.names)
    return message


def _benchmark(result: BenchmarkResult) -> inference_pb2.BenchmarkModelResponse:
    cpu = result.cpu
    return inference_pb2.BenchmarkModelResponse(
        name=result.model_name, version=result.model_version, fps=result.fps,
        latency_ms=inference_pb2.LatencyPercentiles(**result.latency_ms), inferences=result.inferences,
        seconds=result.seconds, execution_precision=result.execution_precision,
        precision=precision_to_proto(result.precision),
        input_size=common_pb2.ImageSize(width=result.input_size[1], height=result.input_size[0]),
        device=result.device, hint=result.hint, requests=result.requests,
        cpu=inference_pb2.CpuInfo(model=cpu["cpu"], cores=cpu["cores"] or 0, isa=cpu["isa"]),
        host=result.host, concurrent_frames=result.concurrent_frames, mosaic=result.mosaic)


# -- the servicers ----------------------------------------------------------------------------------

class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def Detect(self, request: inference_pb2.DetectRequest, context: grpc.ServicerContext
               ) -> inference_pb2.DetectResponse:
        result = self.plane.detect(request.model_name, request.model_version, _image(request.image),
                                   _thresholds(request.options))
        return inference_pb2.DetectResponse(model_name=result.model_name, model_version=result.model_version,
                                            detections=_detections(result.detections, result.names),
                                            image_width=result.width, image_height=result.height)

    def DetectStream(self, request_iterator: Iterable[inference_pb2.DetectStreamRequest],
                     context: grpc.ServicerContext) -> Iterator[inference_pb2.DetectStreamResponse]:
        first_model: list[str] = []
        on_call_end(context, lambda code: self.plane.count_stream(first_model[0] if first_model else "", code.name))
        for r in self.plane.detect_stream(_stream_requests(request_iterator, first_model)):
            yield inference_pb2.DetectStreamResponse(stream_id=r.stream_id, frame_id=r.frame_id,
                                                     detections=_detections(r.detections, r.names),
                                                     model_version=r.model_version, mosaic_streams=r.mosaic_frames)

    def LoadModel(self, request: inference_pb2.LoadModelRequest, context: grpc.ServicerContext
                  ) -> inference_pb2.LoadModelResponse:
        return inference_pb2.LoadModelResponse(model=_model_info(self.plane.load_model(request.name,
                                                                                       request.version)))

    def UnloadModel(self, request: inference_pb2.UnloadModelRequest, context: grpc.ServicerContext
                    ) -> inference_pb2.UnloadModelResponse:
        infos = self.plane.unload_model(request.name, request.version)
        return inference_pb2.UnloadModelResponse(unloaded=[_model_info(i) for i in infos])

    def ListModels(self, request: inference_pb2.ListModelsRequest, context: grpc.ServicerContext
                   ) -> inference_pb2.ListModelsResponse:
        infos = self.plane.list_models(request.include_repository)
        return inference_pb2.ListModelsResponse(models=[_model_info(i) for i in infos])

    def BenchmarkModel(self, request: inference_pb2.BenchmarkModelRequest, context: grpc.ServicerContext
                       ) -> inference_pb2.BenchmarkModelResponse:
        # A client that cancels (or whose deadline passes) ends the benchmark instead of leaving it to run out.
        return _benchmark(self.plane.benchmark_model(request.name, request.version, request.seconds, request.mosaic,
                                                     cancelled=lambda: not context.is_active()))


class KServeServicer(kserve_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def ServerLive(self, request: kserve_pb2.ServerLiveRequest, context: grpc.ServicerContext
                   ) -> kserve_pb2.ServerLiveResponse:
        return kserve_pb2.ServerLiveResponse(live=self.plane.live())

    def ServerReady(self, request: kserve_pb2.ServerReadyRequest, context: grpc.ServicerContext
                    ) -> kserve_pb2.ServerReadyResponse:
        return kserve_pb2.ServerReadyResponse(ready=self.plane.ready())

    def ModelReady(self, request: kserve_pb2.ModelReadyRequest, context: grpc.ServicerContext
                   ) -> kserve_pb2.ModelReadyResponse:
        return kserve_pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    def ServerMetadata(self, request: kserve_pb2.ServerMetadataRequest, context: grpc.ServicerContext
                       ) -> kserve_pb2.ServerMetadataResponse:
        name, version, extensions = self.plane.server_metadata()
        return kserve_pb2.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    def ModelMetadata(self, request: kserve_pb2.ModelMetadataRequest, context: grpc.ServicerContext
                      ) -> kserve_pb2.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version)
        tensor = kserve_pb2.ModelMetadataResponse.TensorMetadata
        return kserve_pb2.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs])

    def ModelInfer(self, request: kserve_pb2.ModelInferRequest, context: grpc.ServicerContext
                   ) -> kserve_pb2.ModelInferResponse:
        inputs = [InputTensor(t.name, t.datatype, tuple(t.shape),
                              {f.name: values for f, values in t.contents.ListFields()})
                  for t in request.inputs]
        result = self.plane.model_infer(request.model_name, request.model_version, inputs,
                                        request.raw_input_contents, [o.name for o in request.outputs], request.id)
        tensor = kserve_pb2.ModelInferResponse.InferOutputTensor
        return kserve_pb2.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.request_id,
            outputs=[tensor(name=o.name, datatype=o.datatype, shape=o.shape) for o in result.outputs],
            raw_output_contents=[o.data for o in result.outputs])


# -- the hooks of `slimyolo serve inference` ------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference flags (--model-repository, --poll-seconds, --mosaic, ...; see slimyolo.serving.config)."""
    serving_config.add_arguments(parser)


def build(server: Server, args_or_config: argparse.Namespace | ServingConfig) -> DataPlane:
    """Serve both APIs on ``server``; SERVING while at least one model is loaded (NOT_SERVING before the first
    and after the last leaves: Kubernetes then routes no traffic here).

    ``args_or_config`` is the parsed flags of :func:`add_arguments` (the environment fills the rest)
    or a ready :class:`~slimyolo.serving.config.ServingConfig`. Returns the data plane, whose
    ``close()`` stops the repository polling and releases the models.
    """
    config = args_or_config if isinstance(args_or_config, ServingConfig) \
        else ServingConfig.from_args(args_or_config, os.environ)
    plane = DataPlane.from_config(config, server.registry, os.environ, code_of=lambda exc: status_of(exc)[0].name)
    server.add_service(KSERVE, kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, KServeServicer(plane))
    server.add_service(INFERENCE, inference_pb2_grpc.add_InferenceServicer_to_server, InferenceServicer(plane))

    def ready(serving: bool) -> None:
        server.set_serving(KSERVE, serving)
        server.set_serving(INFERENCE, serving)

    server.on_shutdown(lambda _deadline: plane.close())
    plane.start(on_ready=ready)
    return plane
