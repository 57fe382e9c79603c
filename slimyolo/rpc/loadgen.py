"""``slimyolo bench --remote``: a load generator for the inference service, in the spirit of
Triton's perf_analyzer.

It drives one target (``host:port``, ``dns:///name:port``, ``ipv4:a:p,b:p``: one channel,
round-robin over every address, as every client of the project connects) with KServe v2
``ModelInfer`` calls (a raw tensor of the model's input shape) or ``Detect`` calls (a JPEG
frame), either closed-loop (``concurrency`` clients, each sending its next call when the last is
answered) or open-loop (``rate`` calls a second, whatever the answers: latency is then measured
from when a call was due, so a server that falls behind shows it). After a warm-up it reports
throughput, latency percentiles, errors by status code and the calls each replica answered (the
``slimyolo-server`` trailing metadata every answer carries), and calls ``progress`` about once a
second while it runs.

It fails fast with one sentence naming the target: before any load, when no connection to the
target is ready within ``connect_timeout`` seconds (nothing listens there, or it does not speak
HTTP/2); during the load, when :data:`UNAVAILABLE_BURST` calls in a row fail with UNAVAILABLE
(the service went away), instead of counting a flood of failed calls until the time is up.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np

from slimyolo.errors import SlimYoloError, UnavailableError
from slimyolo.infer.bench import percentiles
from slimyolo.rpc.client import connect, remote_error
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc
from slimyolo.rpc.server import SERVED_BY

APIS = ("infer", "detect")
UNAVAILABLE_BURST = 100  # UNAVAILABLE answers in a row, none OK, that stop a run: the service is gone


@dataclass(frozen=True)
class LoadSpec:
    """What to send where, and how hard (``rate`` > 0: open loop, else ``concurrency`` clients)."""

    target: str
    model: str
    api: str = "infer"
    concurrency: int = 1
    rate: float = 0.0
    seconds: float = 10.0
    warmup: float = 2.0  # seconds of the same load before measuring (channels, first inferences)
    version: str = ""
    image: bytes = b""  # Detect: this encoded image (default: a 640x480 JPEG frame)
    timeout: float = 30.0  # deadline of each call
    connect_timeout: float = 5.0  # seconds for a connection to the target to be ready before any call

    def check(self) -> None:
        if self.api not in APIS:
            raise SlimYoloError(f"--api: {self.api!r} is not one of {', '.join(APIS)}")
        if self.concurrency < 1:
            raise SlimYoloError(f"--concurrency: must be at least 1, got {self.concurrency}")
        if self.rate < 0:
            raise SlimYoloError(f"--rate: must not be negative, got {self.rate:g}")
        if self.seconds <= 0:
            raise SlimYoloError(f"--seconds: must be positive, got {self.seconds:g}")


@dataclass
class _Outcome:
    latency: float
    code: str
    server: str


class _Recorder:
    """The outcomes of a run, and the progress line's figures while it goes."""

    def __init__(self) -> None:
        self.outcomes: list[_Outcome] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()  # set after UNAVAILABLE_BURST UNAVAILABLE answers in a row
        self._unavailable = 0
        self.last_unavailable = ""

    def add(self, latency: float, call: grpc.Call, code: grpc.StatusCode) -> None:
        server = next((v for k, v in call.trailing_metadata() or () if k == SERVED_BY), "")
        with self._lock:
            self.outcomes.append(_Outcome(latency, code.name, server))
            if code == grpc.StatusCode.UNAVAILABLE:
                self._unavailable += 1
                self.last_unavailable = call.details() or ""
                if self._unavailable >= UNAVAILABLE_BURST:
                    self.stop.set()
            elif code == grpc.StatusCode.OK:
                self._unavailable = 0

    def snapshot(self) -> list[_Outcome]:
        with self._lock:
            return list(self.outcomes)


def _request(channel: grpc.Channel, spec: LoadSpec) -> tuple[Callable[..., Any], Any]:
    """The stub method and the one request every call of the run sends."""
    if spec.api == "detect":
        image = spec.image or _frame()
        return (inference_pb2_grpc.InferenceStub(channel).Detect,
                inference_pb2.DetectRequest(model_name=spec.model, model_version=spec.version,
                                            image=inference_pb2.Image(encoded=image)))
    stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        meta = stub.ModelMetadata(kserve_pb2.ModelMetadataRequest(name=spec.model, version=spec.version),
                                  timeout=spec.timeout, wait_for_ready=True)
    except grpc.RpcError as exc:
        raise remote_error(exc) from exc
    (tensor,) = meta.inputs
    shape = [1 if d < 0 else d for d in tensor.shape]  # a dynamic batch: one image a call
    rng = np.random.default_rng(0)
    if tensor.datatype == "UINT8":
        data = rng.integers(0, 256, shape, dtype=np.uint8).tobytes()
    elif tensor.datatype == "FP32":
        data = rng.random(shape, dtype=np.float32).tobytes()
    else:
        raise SlimYoloError(f"model {spec.model!r}: input datatype {tensor.datatype} is not FP32 or UINT8")
    return stub.ModelInfer, kserve_pb2.ModelInferRequest(
        model_name=spec.model, model_version=spec.version, raw_input_contents=[data],
        inputs=[kserve_pb2.ModelInferRequest.InferInputTensor(name=tensor.name, datatype=tensor.datatype,
                                                               shape=shape)])


def _frame() -> bytes:
    """A 640x480 camera-sized JPEG: smooth shapes on a gradient, as scenes compress (not noise)."""
    import cv2

    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([(x * 255 // 639), (y * 255 // 479), ((x + y) * 255 // 1118)], axis=2).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(12):
        cx, cy, r = int(rng.integers(0, 640)), int(rng.integers(0, 480)), int(rng.integers(10, 80))
        cv2.circle(image, (cx, cy), r, tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _closed_loop(method: Callable[..., Any], request: Any, spec: LoadSpec, stop: float, rec: _Recorder) -> None:
    def client() -> None:
        while time.perf_counter() < stop and not rec.stop.is_set():
            t = time.perf_counter()
            try:
                _, call = method.with_call(request, timeout=spec.timeout)
                rec.add(time.perf_counter() - t, call, grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                rec.add(time.perf_counter() - t, exc, exc.code())

    threads = [threading.Thread(target=client, name=f"loadgen-{i}", daemon=True) for i in range(spec.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _open_loop(method: Callable[..., Any], request: Any, spec: LoadSpec, stop: float, rec: _Recorder) -> None:
    pending: set[grpc.Future] = set()
    lock = threading.Lock()
    all_done = threading.Condition(lock)

    def sent(due: float) -> None:
        future = method.future(request, timeout=spec.timeout)
        with lock:
            pending.add(future)

        def done(f: grpc.Future) -> None:
            code = f.code()
            rec.add(time.perf_counter() - due, f, code)
            with lock:
                pending.discard(f)
                all_done.notify_all()

        future.add_done_callback(done)

    interval, due = 1.0 / spec.rate, time.perf_counter()
    while due < stop and not rec.stop.is_set():
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent(due)
        due += interval
    with lock:
        all_done.wait_for(lambda: not pending, timeout=spec.timeout + 5)


def run_load(spec: LoadSpec, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Warm up, then load ``spec.target`` for ``spec.seconds``; the figures of the module docstring."""
    spec.check()
    with connect(spec.target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=spec.connect_timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"{spec.target}: nothing answers there (no connection within "
                                   f"{spec.connect_timeout:g} s); is the inference service running at that "
                                   "address?") from None
        method, request = _request(channel, spec)
        drive = _open_loop if spec.rate > 0 else _closed_loop
        if spec.warmup > 0:
            warm = _Recorder()
            drive(method, request, spec, time.perf_counter() + spec.warmup, warm)
            _check_burst(warm, spec, "the warm-up")
        rec = _Recorder()
        t0 = time.perf_counter()
        runner = threading.Thread(target=drive, args=(method, request, spec, t0 + spec.seconds, rec), daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(1.0)
            if progress is not None and runner.is_alive():
                progress(_summary(rec.snapshot(), time.perf_counter() - t0))
        result = _summary(rec.snapshot(), time.perf_counter() - t0)
        _check_burst(rec, spec, f"{result['elapsed_s']:.1f} s of load ({result['ok']} calls answered)")
    mode = {"rate": spec.rate} if spec.rate > 0 else {"concurrency": spec.concurrency}
    return {**{k: v for k, v in asdict(spec).items() if k in ("target", "model", "api", "seconds")}, **mode,
            **result}


def _check_burst(rec: _Recorder, spec: LoadSpec, when: str) -> None:
    if rec.stop.is_set():
        raise UnavailableError(f"{spec.target}: {UNAVAILABLE_BURST} calls in a row failed with UNAVAILABLE after "
                               f"{when} ({rec.last_unavailable or 'no details'}); the service went away or stopped "
                               "answering, so the load was stopped")


def _summary(outcomes: list[_Outcome], elapsed: float) -> dict[str, Any]:
    ok = [o.latency for o in outcomes if o.code == "OK"]
    errors = collections.Counter(o.code for o in outcomes if o.code != "OK")
    servers = collections.Counter(o.server or "(unnamed)" for o in outcomes if o.code == "OK")
    return {"requests": len(outcomes), "ok": len(ok), "elapsed_s": round(elapsed, 3),
            "fps": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0, "latency_ms": percentiles(ok),
            "errors": dict(sorted(errors.items())), "by_server": dict(sorted(servers.items()))}
