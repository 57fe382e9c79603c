"""The inference service's one entry point: every RPC is a method here, on plain Python values.

The gRPC servicers (``slimyolo/services/inference.py``) only translate protobuf messages to the
arguments below and the results back, as KServe's own server splits servicer and data plane.
Every call takes a lease on the model version it runs on (:mod:`slimyolo.serving.manager`), so
hot reloads never cut a request short, and is counted in the ``slimyolo_inference_*`` metrics.

Backpressure: a Detect or ModelInfer call is *queued* from the moment it is admitted until its
tensor runs on an OpenVINO inference request (decoding, letterboxing, waiting for a free
request). At most ``max_queue`` calls are queued; a call that finds the queue full is answered
RESOURCE_EXHAUSTED at once instead of waiting, so latency stays bounded under overload and a
client (or the load balancer) can go to another replica. A call is only refused when
``max_queue`` others are queued, so N clients with one call outstanding each are never refused
while N <= ``max_queue``. The server's worker threads must exceed ``max_queue`` plus the
inference requests, or calls would wait in gRPC's own queue before the data plane sees them.
Video streams push back per call instead (``max_in_flight`` frames each).

Benchmarks (:meth:`DataPlane.benchmark_model`) time a loaded version on the server's own CPU,
inference only, for at most :data:`MAX_BENCHMARK_SECONDS`, one at a time: a second benchmark
while one runs is refused at once (RESOURCE_EXHAUSTED) rather than queued, because two at once
would each measure half the machine, and a queue of them would hold the server's worker threads
for minutes. They take no place in the admission queue; the service's other calls share the
inference requests and the CPU with them meanwhile (the result says how many frames they ran).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from slimyolo import __version__
from slimyolo.errors import Cancelled, FailedPrecondition, ResourceExhausted, SlimYoloError, UnavailableError
from slimyolo.infer.bench import bench_compiled
from slimyolo.infer.engine import Detections, Engine
from slimyolo.serving.config import ServingConfig
from slimyolo.serving.images import (
    DetectOptions,
    EncodedImage,
    ImageLimits,
    RawImage,
    decode_image,
    detections_from_heads,
)
from slimyolo.serving.kserve import InputTensor, OutputTensor, TensorSpec, decode_inputs, encode_output, select_outputs
from slimyolo.serving.manager import Lease, ModelInfo, ModelManager
from slimyolo.serving.metrics import InferenceMetrics, model_label
from slimyolo.serving.model import ServedModel
from slimyolo.serving.repository import Repository, open_repository
from slimyolo.serving.streams import PendingFrame, pipelined
from slimyolo.vocab import MAX_BENCHMARK_SECONDS

SERVER_NAME = "slimyolo"
PLATFORM = "openvino"


@dataclass(frozen=True)
class Thresholds:
    """Detection options as a request gives them; zero takes the server's default."""

    conf: float = 0.0
    iou: float = 0.0
    max_det: int = 0


@dataclass(frozen=True)
class DetectResult:
    model_name: str
    model_version: str
    detections: Detections
    names: tuple[str, ...]  # class names of the model, by class index
    width: int
    height: int


@dataclass(frozen=True)
class StreamRequest:
    """One frame of a stream call; the model may be given only on the call's first frame."""

    model_name: str
    model_version: str
    stream_id: str
    frame_id: int
    image: EncodedImage | RawImage | None
    thresholds: Thresholds | None = None


@dataclass(frozen=True)
class StreamResult:
    stream_id: str
    frame_id: int
    model_version: str
    detections: Detections
    names: tuple[str, ...]
    mosaic_frames: int  # frames that shared the inference


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str
    request_id: str
    outputs: tuple[OutputTensor, ...]


@dataclass(frozen=True)
class BenchmarkResult:
    """A served version timed on this server, inference only (:meth:`DataPlane.benchmark_model`)."""

    model_name: str
    model_version: str
    fps: float
    latency_ms: dict[str, float]  # p50, p90, p99 of one inference, submission to result
    inferences: int  # completed in the measured time, warm-up excluded
    seconds: float  # the measured wall time
    execution_precision: str  # what OpenVINO computed in: f32, bf16, f16
    precision: str  # how the IR stores its weights: fp32, fp16, int8
    input_size: tuple[int, int]  # height, width
    device: str
    hint: str  # the OpenVINO performance hint it was compiled with
    requests: int  # asynchronous inference requests kept in flight
    cpu: dict  # slimyolo.cpuinfo.cpu_info(): cpu (model name), cores, isa
    host: str  # this server's host name (the pod's, in Kubernetes)
    concurrent_frames: int  # frames served to clients meanwhile
    mosaic: int = 1  # k of the k×k mosaic engine timed (1: the native size); each inference serves k² frames


class _StreamFrame:
    """A frame in flight in a stream call: its lease, its pending boxes, when it arrived."""

    def __init__(self, plane: DataPlane, request: StreamRequest, lease: Lease, pending: PendingFrame,
                 t0: float) -> None:
        self.plane, self.request, self.lease, self.pending, self.t0 = plane, request, lease, pending, t0

    def result(self) -> StreamResult:
        model = self.lease.model
        try:
            detections, frames = self.pending.result()
        finally:
            self.lease.release()
        self.plane.metrics.count_frames(model.name)
        self.plane.metrics.end_to_end.labels(model_label(model.name), "detect_stream").observe(
            time.perf_counter() - self.t0)
        return StreamResult(self.request.stream_id, self.request.frame_id, model.version, detections,
                            model.meta.names, frames)


class DataPlane:
    """Models from a repository, served through the KServe v2 and SlimYOLO detection APIs.

    ``code_of(exc)`` names a failed call's outcome in ``slimyolo_inference_requests_total``
    (the gRPC service passes the status code it answers with); a successful call counts as ``OK``.
    """

    def __init__(self, manager: ModelManager, metrics: InferenceMetrics, limits: ImageLimits,
                 code_of: Callable[[BaseException], str], max_in_flight: int = 8,
                 max_queue: int = ServingConfig.max_queue, model_control: str = ServingConfig.model_control) -> None:
        self.manager, self.metrics, self.limits, self.code_of = manager, metrics, limits, code_of
        self.model_control = model_control
        self.max_in_flight, self.max_queue = max_in_flight, max_queue
        self._queued = 0
        self._admission = threading.Lock()
        self._draining = threading.Event()  # set by close(): streams end, asking their clients to reconnect
        self._benchmarking = threading.Lock()  # one benchmark at a time (see the module docstring)

    @classmethod
    def from_config(cls, config: ServingConfig, registry: CollectorRegistry, env: Mapping[str, str],
                    code_of: Callable[[BaseException], str], repository: Repository | None = None) -> DataPlane:
        """A data plane for ``config`` (its repository opened from ``env`` unless given); call :meth:`start`."""
        import openvino as ov

        core = ov.Core()
        metrics = InferenceMetrics(registry)
        repository = repository or open_repository(config.model_repository, env)

        def load(name: str, version: str, path: Path) -> ServedModel:
            observe = metrics.inference.labels(model_label(name)).observe
            return ServedModel(name, version, path, config, core, on_infer=observe)

        manager = ModelManager(repository, load, config.poll_seconds, metrics)
        limits = ImageLimits(config.max_image_bytes, config.max_image_pixels, config.max_decode_bytes)
        # A stream call keeps up to two full mosaics in flight: enough to fill every mosaic with its own frames.
        return cls(manager, metrics, limits, code_of, max_in_flight=2 * config.mosaic_k ** 2,
                   max_queue=config.max_queue, model_control=config.model_control)

    def start(self, on_ready: Callable[[bool], None] | None = None) -> None:
        """Scan the repository and load its models in the background; ``on_ready(ready)`` on each change
        of readiness (:attr:`ModelManager.ready`: at least one model can be answered for)."""
        self.manager.start(on_ready)

    def close(self) -> None:
        """Stop (the server drains): every stream ends at its next frame with UNAVAILABLE, after the answers to
        the frames before it, so that its client reconnects to another replica and sends that frame again;
        then the repository polling stops and the models are released."""
        self._draining.set()
        self.manager.close()

    # -- bookkeeping ------------------------------------------------------------------------------

    def _label(self, name: str) -> str:
        return model_label(name) if self.manager.knows(name) else ""

    @contextmanager
    def _track(self, api: str, name: str, timed: bool = True) -> Iterator[None]:
        """Count the call by outcome and, if ``timed``, observe its end-to-end duration."""
        t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.metrics.requests.labels(self._label(name), api, self.code_of(exc)).inc()
            raise
        label = self._label(name)
        self.metrics.requests.labels(label, api, "OK").inc()
        if timed:
            self.metrics.end_to_end.labels(label, api).observe(time.perf_counter() - t0)

    @contextmanager
    def _admit(self) -> Iterator[Callable[[], None]]:
        """Queue the call, or refuse it when ``max_queue`` calls are queued; yields ``running()``,
        to be called once its tensor runs on an inference request (it leaves the queue then)."""
        with self._admission:
            if self._queued >= self.max_queue:
                raise ResourceExhausted(f"the server is at capacity: {self._queued} calls wait for inference "
                                        f"(SLIMYOLO_INFERENCE_MAX_QUEUE={self.max_queue}); retry later or on "
                                        "another replica")
            self._queued += 1
        self.metrics.queued.inc()
        self.metrics.in_flight.inc()
        queued = [True]

        def running() -> None:
            with self._admission:
                if not queued[0]:
                    return
                queued[0] = False
                self._queued -= 1
            self.metrics.queued.dec()

        try:
            yield running
        finally:
            running()
            self.metrics.in_flight.dec()

    # -- Open Inference Protocol (KServe v2) ---------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.manager.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.manager.is_ready(name, version)

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        """(name, version, protocol extensions)."""
        return SERVER_NAME, __version__, ()

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        with self.manager.acquire(name, version) as model:
            return ModelMetadata(name, (model.version,), PLATFORM, model.signature.inputs, model.signature.outputs)

    def model_infer(self, name: str, version: str, inputs: Sequence[InputTensor], raw_contents: Sequence[bytes],
                    outputs: Sequence[str] = (), request_id: str = "") -> InferResult:
        """Run the IR on the request's tensors; the raw heads it returns, or those of ``outputs``."""
        with self._track("model_infer", name), self._admit() as running, \
                self.manager.acquire(name, version) as model:
            sig = model.signature
            arrays = decode_inputs(sig.inputs, inputs, raw_contents)
            chosen = select_outputs(sig.outputs, outputs)
            tensor = arrays[sig.inputs[0].name]  # a SlimYOLO IR has one input (the engine checks)
            heads = model.infer(tensor, running)  # the call leaves the queue once it runs
            self.metrics.count_frames(name, int(tensor.shape[0]))
            return InferResult(name, model.version, request_id,
                               tuple(encode_output(sig.outputs[i].name, heads[i]) for i in chosen))

    # -- detection ------------------------------------------------------------------------------

    @staticmethod
    def _options(model: ServedModel, thresholds: Thresholds | None, field: str) -> DetectOptions:
        t = thresholds or Thresholds()
        return DetectOptions.resolve(t.conf, t.iou, t.max_det, model.defaults, field)

    def detect(self, name: str, version: str, image: EncodedImage | RawImage | None,
               thresholds: Thresholds | None = None) -> DetectResult:
        """Boxes of one image, in its pixels (the native-size engine, as ``Engine.detect``)."""
        with self._track("detect", name), self._admit() as running, self.manager.acquire(name, version) as model:
            options = self._options(model, thresholds, "options")
            bgr = decode_image(image, self.limits, "image")
            tensor, lb = model.engine.prepare(bgr)
            raws = model.infer(tensor, running)
            detections = detections_from_heads(raws, model.meta.heads, lb, options)
            self.metrics.count_frames(name)
            return DetectResult(name, model.version, detections, model.meta.names, bgr.shape[1], bgr.shape[0])

    def detect_stream(self, requests: Iterable[StreamRequest]) -> Iterator[StreamResult]:
        """Frames in, boxes out in the same order; frames of concurrent streams share mosaic inferences.

        The model named on the call's first frame serves every frame that names none. Each frame
        takes its own lease, so a long stream moves to a new version as soon as it is swapped in.
        A frame that cannot be used (no model, an undecodable image) ends the call with the
        error, naming its stream and frame, after the results of the frames before it; so does
        the first frame after :meth:`close` (UNAVAILABLE: the client sends it again elsewhere). The caller
        counts the call once it knows its outcome (:meth:`count_stream`).
        """
        first: list[StreamRequest] = []

        def start(request: StreamRequest) -> _StreamFrame:
            t0 = time.perf_counter()
            if not first:
                first.append(request)
            name = request.model_name or first[0].model_name
            version = request.model_version or (first[0].model_version if not request.model_name else "")
            where = f"frame (stream {request.stream_id!r}, frame_id {request.frame_id})"
            if not name:
                raise SlimYoloError(f"{where}: model_name is required on the first message of a stream")
            if self._draining.is_set():
                raise UnavailableError(f"{where}: this replica is shutting down; send this frame and the ones after "
                                       "it again on another replica")
            lease = self.manager.acquire(name, version)
            try:
                model: ServedModel = lease.model  # type: ignore[assignment]
                options = self._options(model, request.thresholds, f"{where}.options")
                pending = model.mux.submit(decode_image(request.image, self.limits, where), options)
            except BaseException:
                lease.release()
                raise
            return _StreamFrame(self, request, lease, pending, t0)

        yield from pipelined(requests, start, self.max_in_flight)

    def count_stream(self, model_name: str, code: str) -> None:
        """Count a :meth:`detect_stream` call by its outcome, which its transport learns only at its end.

        ``model_name`` is the one the call's first frame named. Over gRPC a client's cancel can end
        the frames like a normal end of stream; only the end of the call tells them apart.
        """
        self.metrics.requests.labels(self._label(model_name), "detect_stream", code).inc()

    # -- the model repository ---------------------------------------------------------------------

    def _model_control(self, call: str) -> None:
        """FailedPrecondition unless model control is explicit: who may change what is served is a deployment's
        decision, not a caller's."""
        if self.model_control != "explicit":
            raise FailedPrecondition(f"{call}: model control is off on this server (--model-control "
                                     f"{self.model_control}); start it with --model-control explicit "
                                     "(SLIMYOLO_MODEL_CONTROL=explicit) to load and unload models by call")

    def load_model(self, name: str, version: str = "") -> ModelInfo:
        self._model_control("LoadModel")
        return self.manager.load(name, version)

    def unload_model(self, name: str, version: str = "") -> list[ModelInfo]:
        self._model_control("UnloadModel")
        return self.manager.unload(name, version)

    def list_models(self, include_repository: bool = False) -> list[ModelInfo]:
        return self.manager.models(include_repository)

    def benchmark_model(self, name: str, version: str, seconds: float, mosaic: int = 0,
                        cancelled: Callable[[], bool] | None = None) -> BenchmarkResult:
        """Time the served version of ``name`` (``version``: only if it is that one) for ``seconds``, inference
        only, with its own compiled model (see the module docstring), or with its ``mosaic``×``mosaic``
        engine (the one video streams share; 0 or 1: the native size); SlimYoloError naming ``seconds`` outside
        (0, :data:`MAX_BENCHMARK_SECONDS`] or a ``mosaic`` the model is not compiled for, NotFoundError for a
        model not loaded, ResourceExhausted while another benchmark runs. ``cancelled()`` turning True (the client
        went away) stops it within a fraction of a second, raising Cancelled: nobody waits for its figures any more."""
        with self._track("benchmark_model", name, timed=False):
            if not (isinstance(seconds, int | float) and math.isfinite(seconds)
                    and 0 < seconds <= MAX_BENCHMARK_SECONDS):
                shown = f"{seconds:g}" if isinstance(seconds, int | float) else repr(seconds)
                raise SlimYoloError(f"seconds: {shown} is outside (0, {MAX_BENCHMARK_SECONDS:g}]; a benchmark "
                                    f"measures for more than 0 and at most {MAX_BENCHMARK_SECONDS:g} seconds")
            with self.manager.acquire(name, version) as model:
                engine = self._mosaic_engine(model, mosaic)
                if not self._benchmarking.acquire(blocking=False):
                    raise ResourceExhausted("another benchmark is running on this server (one at a time: two would "
                                            "each measure half the machine); retry once it is done")
                try:
                    before = self.metrics.frames_total
                    figures = bench_compiled(engine, seconds, cancelled)
                    concurrent = self.metrics.frames_total - before
                finally:
                    self._benchmarking.release()
                self.metrics.benchmark_inferences.labels(self._label(name)).inc(figures["frames"])
                if figures.get("stopped"):
                    raise Cancelled(f"the benchmark of {name!r} was cancelled by its client after "
                                    f"{figures['seconds']:g} s")
                return BenchmarkResult(
                    name, model.version, figures["fps"], figures["latency_ms"], figures["frames"], figures["seconds"],
                    figures["execution_precision"], model.meta.precision, tuple(figures["input_size"]),
                    figures["device"], figures["hint"], figures["requests"], figures["cpu"], socket.gethostname(),
                    concurrent, max(mosaic, 1))

    @staticmethod
    def _mosaic_engine(model: ServedModel, k: int) -> Engine:
        """The engine of ``model`` that runs k×k mosaics (k 0 or 1: its own); SlimYoloError naming ``mosaic``."""
        if k in (0, 1):
            return model.engine
        detector = model.mux.mosaics.get(k)
        if detector is None:
            compiled = ", ".join(f"{m}x{m}" for m in sorted(model.mux.mosaics))
            why = (f"this service compiles it for {compiled} (its --mosaic sets the largest)" if compiled
                   else "this service compiles it for no mosaic (its --mosaic is 1x1, or the IR resizes its input "
                        "inside and cannot be tiled)")
            raise SlimYoloError(f"mosaic: {k}x{k} is not a mosaic model {model.name!r} runs; {why}")
        return detector.engine
