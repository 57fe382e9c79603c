"""Client of the inference service's model control and server-side benchmark, on plain Python values.

``slimyolo bench --remote TARGET --server-side`` and the sweep's remote FPS meter
(:class:`slimyolo.prune.speed.RemoteFpsMeter`) call these. Failed calls raise the SlimYOLO error
their status stands for (:func:`slimyolo.rpc.client.remote_error`); a target where nothing
answers fails at once, naming the address.

A benchmark's figures come back as the dict of :func:`benchmark_dict`, with the keys of
``slimyolo bench --json``: ``fps``, ``latency_ms`` {p50, p90, p99}, ``cpu`` {cpu, cores, isa}
(:func:`slimyolo.cpuinfo.cpu_info` of the *server*), ``model``, ``version``, ``precision``...
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from slimyolo import vocab
from slimyolo.errors import UnavailableError
from slimyolo.rpc.client import connect, remote_error
from slimyolo.rpc.gen.v1 import common_pb2, inference_pb2, inference_pb2_grpc

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
    Use it as a context manager, or :meth:`close` it.
    """

    def __init__(self, target: str, pinned: bool = False, connect_timeout: float | None = None) -> None:
        self.target = target
        connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.channel = connect(target, lb_policy="pick_first" if pinned else "round_robin")
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
