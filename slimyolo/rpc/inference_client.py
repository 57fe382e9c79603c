"""Client of the inference service's model control and server-side benchmark, on plain Python values.

``slimyolo bench --remote TARGET --server-side`` and the sweep's remote FPS meter
(:class:`slimyolo.prune.speed.RemoteFpsMeter`) call these. Failed calls raise the SlimYOLO error
their status stands for (:func:`slimyolo.rpc.client.remote_error`); a target where nothing
answers fails at once, naming the address.

:func:`detect_stream` is the client of DetectStream that survives restarts and rollouts: it reopens a
call that ends UNAVAILABLE (a replica that drains or went away) on another replica and sends the
frames not yet answered again, so that every frame is answered once, in order.

A benchmark's figures come back as the dict of :func:`benchmark_dict`, with the keys of
``slimyolo bench --json``: ``fps``, ``latency_ms`` {p50, p90, p99}, ``cpu`` {cpu, cores, isa}
(:func:`slimyolo.cpuinfo.cpu_info` of the *server*), ``model``, ``version``, ``precision``...
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from slimyolo import vocab
from slimyolo.errors import UnavailableError
from slimyolo.rpc.client import connect, remote_error
from slimyolo.rpc.gen.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from slimyolo.rpc.server import LIVENESS
from slimyolo.security import ClientSecurity

CONNECT_TIMEOUT = 5.0  # seconds for a connection to be ready (as `bench --remote` waits)
LOAD_TIMEOUT = 600.0  # fetching and compiling a large model
# Beyond the benchmark's own seconds: its warm-up inferences and the last requests finishing.
BENCHMARK_SLACK = 120.0

_IR_PRECISION = {enum: name for name, enum in vocab.IR_PRECISION_ENUM.items()}


def benchmark_dict(response: inference_pb2.BenchmarkModelResponse, target: str = "") -> dict[str, Any]:
    """The figures of a BenchmarkModel answer as plain values (see the module docstring)."""
    lat = response.latency_ms
    return {"target": target, "host": response.host, "model": response.name, "version": response.version,
            "fps": response.fps, "latency_ms": {"p50": lat.p50, "p90": lat.p90, "p99": lat.p99},
            "inferences": response.inferences, "seconds": response.seconds,
            "execution_precision": response.execution_precision,
            "precision": _IR_PRECISION.get(common_pb2.Precision.Name(response.precision), "fp32"),
            "input_size": [response.input_size.height, response.input_size.width],
            "device": response.device, "hint": response.hint, "requests": response.requests,
            "cpu": {"cpu": response.cpu.model, "cores": response.cpu.cores, "isa": list(response.cpu.isa)},
            "concurrent_frames": response.concurrent_frames, "mosaic": response.mosaic or 1,
            # Frames per second: each inference of a K×K mosaic serves K² frames.
            "frames_per_second": round(response.fps * (response.mosaic or 1) ** 2, 2)}


class InferenceClient:
    """LoadModel, UnloadModel, ListModels and BenchmarkModel on the inference service at ``target``.

    ``target`` is ``HOST:PORT``, ``dns:///NAME:PORT`` or ``ipv4:A:P,B:P``. With ``pinned`` every
    call goes to the same replica (gRPC's ``pick_first``: the first address that connects), as a
    load, a benchmark and an unload of one model must; otherwise calls are balanced round-robin.
    ``security``: TLS and token (default: from the environment, as :func:`~slimyolo.rpc.client.connect` reads
    them). Use it as a context manager, or :meth:`close` it.
    """

    def __init__(self, target: str, pinned: bool = False, connect_timeout: float | None = None,
                 security: ClientSecurity | None = None) -> None:
        self.target = target
        connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        # Model control reaches replicas that serve no model yet (not ready): skip only those that are not live.
        self.channel = connect(target, lb_policy="pick_first" if pinned else "round_robin", health_service=LIVENESS,
                               security=security)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise UnavailableError(f"{target}: nothing answers there (no connection within {connect_timeout:g} s); "
                                   "is the inference service running at that address?") from None
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc

    def load_model(self, name: str, version: str = "") -> inference_pb2.ModelInfo:
        return self._call(self.stub.LoadModel, inference_pb2.LoadModelRequest(name=name, version=version),
                          LOAD_TIMEOUT).model

    def unload_model(self, name: str, version: str = "") -> list[inference_pb2.ModelInfo]:
        return list(self._call(self.stub.UnloadModel, inference_pb2.UnloadModelRequest(name=name, version=version),
                               LOAD_TIMEOUT).unloaded)

    def list_models(self, include_repository: bool = False) -> list[inference_pb2.ModelInfo]:
        return list(self._call(self.stub.ListModels,
                               inference_pb2.ListModelsRequest(include_repository=include_repository), 60.0).models)

    def benchmark(self, name: str, version: str = "", seconds: float = 10.0, mosaic: int = 0) -> dict[str, Any]:
        """Time ``name`` (``version``: only that one) on the server for ``seconds``, at its own input size or as
        the ``mosaic``×``mosaic`` mosaic the service runs for video streams (:func:`benchmark_dict`)."""
        request = inference_pb2.BenchmarkModelRequest(name=name, version=version, seconds=seconds, mosaic=mosaic)
        # The server refuses seconds out of its bounds itself (INVALID_ARGUMENT naming the field).
        wait = min(seconds, 3600.0) if math.isfinite(seconds) and seconds > 0 else 0.0
        return benchmark_dict(self._call(self.stub.BenchmarkModel, request, wait + BENCHMARK_SLACK), self.target)


_END = None  # closes a call's request stream


def detect_stream(channel: grpc.Channel, frames: Iterable[inference_pb2.DetectStreamRequest], *,
                  max_in_flight: int = 16, reconnect_seconds: float = 30.0
                  ) -> Iterator[inference_pb2.DetectStreamResponse]:
    """DetectStream over ``channel``: each frame's answer once, in the order the frames were sent.

    ``frames`` are read on a thread of their own, at most ``max_in_flight`` ahead of the answers.
    The first frame names the model (``model_name``, ``model_version``); frames that name none are
    sent with the first one's, so that every call opened for the stream names it first. When a
    call ends UNAVAILABLE (its replica drains and asks its streams to reconnect, or went away),
    a new call is opened (the channel picks a replica that is SERVING) and the frames not yet
    answered are sent again, first, in their order; up to ``reconnect_seconds`` without an answer.
    Other errors raise the SlimYOLO error they stand for.
    """
    pending: collections.deque[inference_pb2.DetectStreamRequest] = collections.deque()
    cond = threading.Condition()
    state: dict[str, Any] = {"outbox": None, "done": False, "error": None, "stop": False}
    model: list[tuple[str, str]] = []

    def feed() -> None:
        try:
            for frame in frames:
                if not model:
                    model.append((frame.model_name, frame.model_version))
                if not frame.model_name:
                    frame.model_name, frame.model_version = model[0]
                with cond:
                    cond.wait_for(lambda: len(pending) < max_in_flight or state["stop"])
                    if state["stop"]:
                        return
                    pending.append(frame)
                    state["outbox"].put(frame)
        except Exception as exc:  # the frame source failed: raised to the consumer after the answers so far
            state["error"] = exc
        with cond:
            state["done"] = True
            state["outbox"].put(_END)
            cond.notify_all()

    def open_call() -> Any:
        """A new call whose request stream starts with the frames not yet answered."""
        outbox: queue.Queue = queue.Queue()
        with cond:
            if state["outbox"] is not None:
                state["outbox"].put(_END)  # frees the old call's request thread
            for frame in pending:
                outbox.put(frame)
            if state["done"]:
                outbox.put(_END)
            state["outbox"] = outbox
        return inference_pb2_grpc.InferenceStub(channel).DetectStream(iter(outbox.get, _END))

    call = open_call()
    threading.Thread(target=feed, name="detect-stream-feed", daemon=True).start()
    broken_since: float | None = None
    try:
        while True:
            try:
                for response in call:
                    broken_since = None
                    with cond:
                        pending.popleft()
                        cond.notify_all()
                    yield response
                failure: Exception = UnavailableError("DetectStream: the call ended before every frame was answered")
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise remote_error(exc) from exc
                failure = remote_error(exc)
            with cond:
                if state["done"] and not pending:  # every frame answered
                    break
            broken_since = time.monotonic() if broken_since is None else broken_since
            if time.monotonic() - broken_since > reconnect_seconds:
                raise failure
            call.cancel()
            time.sleep(0.1)
            call = open_call()
        if state["error"] is not None:
            raise state["error"]
    finally:
        call.cancel()
        with cond:
            state["stop"] = True
            state["outbox"].put(_END)
            cond.notify_all()
