"""``slimyolo bench --remote``: a load generator for the inference service, in the spirit of
Triton's perf_analyzer.

It drives one target (``host:port``, ``dns:///name:port``, ``ipv4:a:p,b:p``: one channel,
round-robin over every address, as every client of the project connects) with KServe v2
``ModelInfer`` calls (a raw tensor of the model's input shape: ``batch`` images in one call where
the model's batch dimension is dynamic, as perf_analyzer's ``-b``) or ``Detect`` calls (a JPEG
frame), either closed-loop (``concurrency`` clients, each sending its next call when the last is
answered) or open-loop (``rate`` calls a second, whatever the answers: latency is then measured
from when a call was due, so a server that falls behind shows it). After a warm-up it reports
throughput (``fps``: images a second; ``calls_per_s``), latency percentiles, errors by status code
and the calls each replica answered (the ``slimyolo-server`` trailing metadata every answer
carries), and calls ``progress`` about once a second while it runs.

A Python client costs CPU per call too, and on a small machine the load generator can be what it
measures: ``processes`` spreads the clients (or the rate) over that many processes, each with its
own channel and GIL, all measuring over the same seconds; and every run reports the client side's
own CPU (``client_cpu_s``, and per answered call), to be read beside the figures.

It fails fast with one sentence naming the target: before any load, when no connection to the
target is ready within ``connect_timeout`` seconds (nothing listens there, or it does not speak
HTTP/2); during the load, when :data:`UNAVAILABLE_BURST` calls in a row fail with UNAVAILABLE
(the service went away), instead of counting a flood of failed calls until the time is up.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import grpc
import numpy as np

from slimyolo.errors import SlimYoloError, UnavailableError
from slimyolo.infer.bench import percentiles
from slimyolo.rpc import MAX_MESSAGE_BYTES
from slimyolo.rpc.client import connect, remote_error
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc
from slimyolo.rpc.server import SERVED_BY
from slimyolo.security import ClientSecurity

APIS = ("infer", "detect")
# UNAVAILABLE answers in a row, none OK, that stop a run: the service is gone (each one is a call that the
# channel's retry policy already sent up to 5 times, over about 1.5 s).
UNAVAILABLE_BURST = 20


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
    processes: int = 1  # client processes the clients (or the rate) are spread over
    connect_timeout: float = 5.0  # seconds for a connection to the target to be ready before any call
    batch: int = 1  # ModelInfer: images in each call's tensor (its batch dimension)

    def check(self) -> None:
        if self.api not in APIS:
            raise SlimYoloError(f"--api: {self.api!r} is not one of {', '.join(APIS)}")
        if self.concurrency < 1:
            raise SlimYoloError(f"--concurrency: must be at least 1, got {self.concurrency}")
        if self.rate < 0:
            raise SlimYoloError(f"--rate: must not be negative, got {self.rate:g}")
        if self.seconds <= 0:
            raise SlimYoloError(f"--seconds: must be positive, got {self.seconds:g}")
        if self.batch < 1 or (self.api == "detect" and self.batch != 1):
            raise SlimYoloError(f"--batch: must be at least 1, and 1 with --api detect (a Detect call carries one "
                                f"image), got {self.batch}")
        if self.processes < 1 or (self.rate <= 0 and self.processes > self.concurrency):
            raise SlimYoloError(f"--processes: must be at least 1 and at most --concurrency ({self.concurrency}), "
                                f"got {self.processes}")


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
    fixed = tensor.shape[0]
    if fixed >= 0 and fixed != spec.batch:
        raise SlimYoloError(f"--batch {spec.batch}: model {spec.model!r} takes batches of exactly {fixed} (its input "
                            f"{tensor.name} is {list(tensor.shape)})")
    shape = [spec.batch, *(1 if d < 0 else d for d in tensor.shape[1:])]
    itemsize = {"UINT8": 1, "FP32": 4}.get(tensor.datatype)
    if itemsize is None:
        raise SlimYoloError(f"model {spec.model!r}: input datatype {tensor.datatype} is not FP32 or UINT8")
    size = math.prod(shape) * itemsize
    if size > MAX_MESSAGE_BYTES:  # refused before a byte is allocated: the channel would not send it anyway
        raise SlimYoloError(f"--batch {spec.batch}: {spec.batch} images of {tensor.datatype} {shape[1:]} are "
                            f"{size / 2**20:,.0f} MiB a call, above the {MAX_MESSAGE_BYTES // 2**20} MiB a gRPC "
                            "message may carry; send fewer images a call")
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, shape, dtype=np.uint8) if itemsize == 1
            else rng.random(shape, dtype=np.float32)).tobytes()
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


def run_load(spec: LoadSpec, progress: Callable[[dict[str, Any]], None] | None = None,
             security: ClientSecurity | None = None) -> dict[str, Any]:
    """Warm up, then load ``spec.target`` for ``spec.seconds``; the figures of the module docstring. ``security``:
    TLS and token (default: from the environment, see :func:`slimyolo.rpc.client.connect`)."""
    spec.check()
    if spec.processes > 1:
        return _run_processes(spec, security)
    with connect(spec.target, security=security) as channel:
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
        t0, cpu0 = time.perf_counter(), time.process_time()
        runner = threading.Thread(target=drive, args=(method, request, spec, t0 + spec.seconds, rec), daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(1.0)
            if progress is not None and runner.is_alive():
                progress(_summary(rec.snapshot(), time.perf_counter() - t0, spec.batch))
        result = _summary(rec.snapshot(), time.perf_counter() - t0, spec.batch, time.process_time() - cpu0)
        _check_burst(rec, spec, f"{result['elapsed_s']:.1f} s of load ({result['ok']} calls answered)")
    return _described(spec, result)


def _described(spec: LoadSpec, result: dict[str, Any]) -> dict[str, Any]:
    mode = {"rate": spec.rate} if spec.rate > 0 else {"concurrency": spec.concurrency}
    described = ("target", "model", "api", "seconds", "processes", "batch")
    return {**{k: v for k, v in asdict(spec).items() if k in described}, **mode, **result}


STARTUP_S = 5.0  # for the client processes to start, import and connect before the common warm-up begins


def _run_processes(spec: LoadSpec, security: ClientSecurity | None) -> dict[str, Any]:
    """``spec.processes`` client processes, the clients (or the rate) shared out, warming up together and
    measuring over the same seconds; their outcomes summarised as one run's."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fork would copy this process's gRPC threads' state
    n = spec.processes
    shares = [replace(spec, processes=1, concurrency=spec.concurrency // n + (i < spec.concurrency % n),
                      rate=spec.rate / n) for i in range(n)]
    start_at = time.time() + STARTUP_S + spec.warmup  # wall clock: the one clock the processes share
    pipes, procs = [], []
    for share in shares:
        parent, child = context.Pipe(duplex=False)
        proc = context.Process(target=_child_load, args=(share, start_at, security, child), daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    answers = []
    deadline = start_at + spec.seconds + spec.timeout + 30  # the last call may take its whole timeout
    for pipe, proc in zip(pipes, procs, strict=True):
        try:
            if not pipe.poll(max(1.0, deadline - time.time())):
                proc.kill()
                raise EOFError
            answers.append(pipe.recv())
        except EOFError:
            proc.join(5)
            answers.append(SlimYoloError(f"a load generator process died (exit code {proc.exitcode})"))
    for proc in procs:
        proc.join(10)
    failed = next((a for a in answers if isinstance(a, BaseException)), None)
    if failed is not None:
        raise failed
    outcomes = [_Outcome(*o) for answer in answers for o in answer["outcomes"]]
    elapsed = max(answer["elapsed"] for answer in answers)
    return _described(spec, _summary(outcomes, elapsed, spec.batch, sum(answer["cpu"] for answer in answers)))


def _child_load(spec: LoadSpec, start_at: float, security: ClientSecurity | None, pipe: Any) -> None:
    """One client process of :func:`_run_processes`: warm up until ``start_at``, measure ``spec.seconds``, send the
    outcomes (or the error) back."""
    try:
        with connect(spec.target, security=security) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=spec.connect_timeout)
            except grpc.FutureTimeoutError:
                raise UnavailableError(f"{spec.target}: nothing answers there (no connection within "
                                       f"{spec.connect_timeout:g} s)") from None
            method, request = _request(channel, spec)
            drive = _open_loop if spec.rate > 0 else _closed_loop
            warm = _Recorder()
            drive(method, request, spec, time.perf_counter() + max(0.0, start_at - time.time()), warm)
            _check_burst(warm, spec, "the warm-up")
            rec = _Recorder()
            t0, cpu0 = time.perf_counter(), time.process_time()
            drive(method, request, spec, t0 + spec.seconds, rec)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            _check_burst(rec, spec, f"{elapsed:.1f} s of load")
        pipe.send({"outcomes": [(o.latency, o.code, o.server) for o in rec.snapshot()], "elapsed": elapsed,
                   "cpu": cpu})
    except Exception as exc:  # every failure goes back to the parent, which raises it
        try:
            pipe.send(exc)
        except Exception:  # an exception that does not pickle
            pipe.send(SlimYoloError(f"{type(exc).__name__}: {exc}"))


def _check_burst(rec: _Recorder, spec: LoadSpec, when: str) -> None:
    if rec.stop.is_set():
        raise UnavailableError(f"{spec.target}: {UNAVAILABLE_BURST} calls in a row failed with UNAVAILABLE after "
                               f"{when} ({rec.last_unavailable or 'no details'}); the service went away or stopped "
                               "answering, so the load was stopped")


def _summary(outcomes: list[_Outcome], elapsed: float, batch: int, cpu: float | None = None) -> dict[str, Any]:
    """The figures of a run of ``batch`` images a call; ``cpu``: the client side's own CPU seconds over it (None
    while it runs)."""
    ok = [o.latency for o in outcomes if o.code == "OK"]
    errors = collections.Counter(o.code for o in outcomes if o.code != "OK")
    servers = collections.Counter(o.server or "(unnamed)" for o in outcomes if o.code == "OK")
    return {"requests": len(outcomes), "ok": len(ok), "elapsed_s": round(elapsed, 3),
            "fps": round(batch * len(ok) / elapsed, 2) if elapsed > 0 else 0.0,
            "calls_per_s": round(len(ok) / elapsed, 2) if elapsed > 0 else 0.0, "latency_ms": percentiles(ok),
            "errors": dict(sorted(errors.items())), "by_server": dict(sorted(servers.items())),
            **({} if cpu is None else {"client_cpu_s": round(cpu, 3),
                                       "client_cpu_ms_per_call": round(1000 * cpu / max(len(ok), 1), 3)})}
