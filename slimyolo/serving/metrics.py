"""The inference service's Prometheus series, on the registry of the server that serves them.

- ``slimyolo_inference_requests_total{model,api,code}``: calls by API (``detect``,
  ``detect_stream``, ``model_infer``) and outcome (the gRPC status name when served over gRPC);
- ``slimyolo_inference_frames_total{model}``: images run through the network (a stream frame,
  a Detect image, each item of a ModelInfer batch);
- ``slimyolo_inference_duration_seconds{model}``: OpenVINO's own time for one inference request
  (a mosaic of several frames counts once), as the runtime measures it;
- ``slimyolo_inference_end_to_end_duration_seconds{model,api}``: one image (or one ModelInfer call)
  from the bytes received to the boxes (tensors) ready: decode, letterbox, queueing, inference,
  YOLO decode and NMS;
- ``slimyolo_inference_fps{model}``: frames per second over the last ``fps_window`` seconds;
- ``slimyolo_inference_models_loaded``; ``slimyolo_inference_model_loads_total{model,result}``
  (``result`` is ``ok`` or ``failed``: a hot reload that did not happen shows here);
- ``slimyolo_inference_queued_requests``: Detect and ModelInfer calls admitted but not yet running
  on an inference request (decoding, or waiting for a free one), the quantity that
  ``SLIMYOLO_INFERENCE_MAX_QUEUE`` bounds and a HorizontalPodAutoscaler can scale on (as OVMS'
  ``ovms_current_requests`` or Triton's pending-request count);
- ``slimyolo_inference_in_flight_requests``: Detect and ModelInfer calls being served, queued or running;
- ``slimyolo_inference_benchmark_inferences_total{model}``: inferences run by BenchmarkModel calls
  (the calls themselves are ``requests_total{api="benchmark_model"}``). They are not frames: the
  FPS gauge and ``frames_total`` count what clients were served, so that an autoscaler does not
  take a benchmark for traffic; ``inference_duration_seconds`` does include them (OpenVINO's time
  of every request run).

``model`` is a model name of the repository; requests naming a model the server does not know
are counted with ``model=""``, so that clients cannot grow the label's cardinality, and the
temporary models of sweeps (``_sweep-<uuid>``, :func:`slimyolo.serving.repository.is_temporary`)
are all counted as ``model="_sweep"`` for the same reason.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from slimyolo.serving.repository import TEMPORARY_PREFIX, is_temporary

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FPS_WINDOW_SECONDS = 10.0


TEMPORARY_LABEL = TEMPORARY_PREFIX.rstrip("-")


def model_label(name: str) -> str:
    """The ``model`` label of a model name: the name, or ``_sweep`` for every temporary model of a sweep."""
    return TEMPORARY_LABEL if is_temporary(name) else name


class _FpsMeter:
    """Frames counted in a sliding window of timestamps (one entry per batch of frames)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, frames: int, now: float) -> None:
        self._events.append((now, frames))
        self._total += frames
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return self._total / self.window

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._total -= self._events.popleft()[1]


class InferenceMetrics:
    """The series of the module docstring, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, fps_window: float = FPS_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.requests = Counter("slimyolo_inference_requests_total", "Inference calls, by API and status code.",
                                ["model", "api", "code"], registry=registry)
        self.frames = Counter("slimyolo_inference_frames_total", "Images run through the network.", ["model"],
                              registry=registry)
        self.inference = Histogram("slimyolo_inference_duration_seconds",
                                   "OpenVINO time of one inference request (a mosaic counts once).", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.end_to_end = Histogram("slimyolo_inference_end_to_end_duration_seconds",
                                    "One image from bytes received to boxes ready: decode, preprocess, queue, "
                                    "infer, postprocess.", ["model", "api"], buckets=LATENCY_BUCKETS,
                                    registry=registry)
        self.models_loaded = Gauge("slimyolo_inference_models_loaded", "Model versions loaded and serving.",
                                   registry=registry)
        self.loads = Counter("slimyolo_inference_model_loads_total", "Model version loads, by result (ok, failed).",
                             ["model", "result"], registry=registry)
        self.queued = Gauge("slimyolo_inference_queued_requests",
                            "Detect and ModelInfer calls waiting to run on an inference request.", registry=registry)
        self.in_flight = Gauge("slimyolo_inference_in_flight_requests",
                               "Detect and ModelInfer calls being served (queued or running).", registry=registry)
        self.benchmark_inferences = Counter("slimyolo_inference_benchmark_inferences_total",
                                            "Inferences run by BenchmarkModel calls (not counted as frames).",
                                            ["model"], registry=registry)
        self.fps_window, self._clock = fps_window, clock
        self._frames_total = 0
        self._meters: dict[str, _FpsMeter] = {}
        self._lock = threading.Lock()
        registry.register(_FpsCollector(self))

    def count_frames(self, model: str, frames: int = 1) -> None:
        """Count frames served for ``model`` (a model name: its label is :func:`model_label`'s)."""
        model = model_label(model)
        self.frames.labels(model).inc(frames)
        with self._lock:
            meter = self._meters.setdefault(model, _FpsMeter(self.fps_window))
            meter.add(frames, self._clock())
            self._frames_total += frames

    @property
    def frames_total(self) -> int:
        """Frames served since the start, every model together."""
        with self._lock:
            return self._frames_total

    def fps(self) -> dict[str, float]:
        """Frames per second of each model over the sliding window."""
        now = self._clock()
        with self._lock:
            return {model: meter.rate(now) for model, meter in self._meters.items()}

    def forget(self, model: str) -> None:
        """Stop reporting the FPS of a model no longer served (counters keep their totals)."""
        with self._lock:
            self._meters.pop(model_label(model), None)


class _FpsCollector(Collector):
    def __init__(self, metrics: InferenceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("slimyolo_inference_fps",
                                   f"Frames per second over the last {self._metrics.fps_window:g} seconds.",
                                   labels=["model"])
        for model, fps in sorted(self._metrics.fps().items()):
            family.add_metric([model], fps)
        yield family
