"""Server-side benchmarks: the inference service's BenchmarkModel RPC on a real small IR, `slimyolo
bench --remote --server-side`, and the sweep's RemoteFpsMeter (convert, upload under a temporary
name, load, benchmark, unload, delete) against a real service reading the same local store.

Only sanity is asserted of the figures (positive, ordered, consistent with each other), never a speed."""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from slimyolo.darknet.model import Darknet
from slimyolo.darknet.zoo import make_cfg
from slimyolo.errors import SlimYoloError
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from slimyolo.store import open_store

M = inference_pb2
SIZE = 64


def tiny(width: float = 0.25) -> Darknet:
    """A yolov4-tiny at 64 px, a quarter of the width (untrained: speed does not depend on the weights)."""
    return Darknet(make_cfg("yolov4-tiny", 2, SIZE, width=width))


@pytest.fixture(scope="module")
def served(tmp_path_factory, start_inference):
    """An inference service on 127.0.0.1 whose model repository is the ``models`` prefix of a local store,
    serving ``tiny/1`` (``ir``, its IR); the store is this process's (``SLIMYOLO_STORE``) for the module's tests."""
    from slimyolo.prune.speed import convert_point

    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMYOLO_STORE", str(root / "store"))
        mp.delenv("SLIMYOLO_MODEL_REPOSITORY", raising=False)
        store = open_store()
        ir = convert_point(tiny(), "f32", root)
        store.put_tree("models/tiny/1", ir)
        server, plane = start_inference("models", poll_seconds=0.3)
        channel = connect(f"127.0.0.1:{server.port}")
        try:
            wait_ready(channel, "", timeout=120)
            yield SimpleNamespace(server=server, plane=plane, store=store, ir=ir,
                                  stub=inference_pb2_grpc.InferenceStub(channel))
        finally:
            channel.close()
            server.stop(0)
            plane.close()


def _target(server) -> str:
    return f"127.0.0.1:{server.port}"


def _metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("slimyolo_") and not line.startswith("#")}


def _code(call, request, timeout: float = 60) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=timeout)
    return err.value.code(), err.value.details()


def _check_figures(fps: float, p50: float, p90: float, p99: float, inferences: int, seconds: float,
                   asked: float) -> None:
    assert fps > 0 and inferences > 0
    assert 0 < p50 <= p90 <= p99
    assert seconds >= asked  # the loop runs its time, then finishes the requests in flight
    assert math.isclose(fps, inferences / seconds, rel_tol=0.02)  # fps is the count over the measured time


def test_benchmark_model_times_the_served_model_on_the_server(served):
    server, stub = served.server, served.stub
    before = _metrics(server)
    r = stub.BenchmarkModel(M.BenchmarkModelRequest(name="tiny", seconds=0.5), timeout=60)
    _check_figures(r.fps, r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.inferences, r.seconds, 0.5)
    assert (r.name, r.version) == ("tiny", "1")
    assert (r.execution_precision, r.precision, r.device, r.hint) == ("f32", common_pb2.PRECISION_FP32, "CPU",
                                                                      "throughput")
    assert (r.input_size.width, r.input_size.height) == (SIZE, SIZE)
    assert r.requests >= 1 and r.host == socket.gethostname() and r.concurrent_frames == 0
    from slimyolo.cpuinfo import cpu_info

    here = cpu_info()  # the server is this process: its CPU is ours
    assert (r.cpu.model, r.cpu.cores, list(r.cpu.isa)) == (here["cpu"], here["cores"], here["isa"])
    assert r.cpu.model and r.cpu.cores >= 1

    after = _metrics(server)
    calls = 'slimyolo_inference_requests_total{api="benchmark_model",code="OK",model="tiny"}'
    runs = 'slimyolo_inference_benchmark_inferences_total{model="tiny"}'
    assert after[calls] - before.get(calls, 0) == 1
    assert after[runs] - before.get(runs, 0) == r.inferences
    frames = 'slimyolo_inference_frames_total{model="tiny"}'
    assert after.get(frames, 0) == before.get(frames, 0)  # a benchmark is not traffic: no frames, no FPS

    pinned = stub.BenchmarkModel(M.BenchmarkModelRequest(name="tiny", version="1", seconds=0.1), timeout=60)
    assert pinned.version == "1" and pinned.fps > 0 and pinned.mosaic == 1

    # The 2x2 mosaic the service runs for video streams: the IR at twice its size, four frames an inference.
    tiled = stub.BenchmarkModel(M.BenchmarkModelRequest(name="tiny", seconds=0.2, mosaic=2), timeout=60)
    assert tiled.mosaic == 2 and (tiled.input_size.width, tiled.input_size.height) == (2 * SIZE, 2 * SIZE)
    _check_figures(tiled.fps, tiled.latency_ms.p50, tiled.latency_ms.p90, tiled.latency_ms.p99, tiled.inferences,
                   tiled.seconds, 0.2)


def test_bad_benchmark_requests_are_refused_naming_the_field(served):
    server, plane, stub = served.server, served.plane, served.stub
    before = _metrics(server)
    for seconds in (0.0, -1.0, 60.5, 1e9, math.nan, math.inf):
        code, details = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="tiny", seconds=seconds))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("seconds: "), (seconds, details)
        assert "(0, 60]" in details
    code, details = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="nope", seconds=0.1))
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
    code, details = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="tiny", version="7", seconds=0.1))
    assert code == grpc.StatusCode.NOT_FOUND and "version '7'" in details
    code, details = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="tiny", seconds=0.1, mosaic=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("mosaic: 3x3 is not a mosaic")
    assert "compiles it for 2x2" in details

    # One benchmark at a time: another one meanwhile is refused at once, not queued.
    assert plane._benchmarking.acquire(timeout=60)
    try:
        code, details = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="tiny", seconds=0.1))
    finally:
        plane._benchmarking.release()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "another benchmark is running" in details

    after = _metrics(server)

    def delta(model: str, code: str) -> float:
        key = f'slimyolo_inference_requests_total{{api="benchmark_model",code="{code}",model="{model}"}}'
        return after.get(key, 0) - before.get(key, 0)

    assert delta("tiny", "INVALID_ARGUMENT") == 7 and delta("tiny", "NOT_FOUND") == 1
    assert delta("", "NOT_FOUND") == 1  # a name the server does not know is not a label
    assert delta("tiny", "RESOURCE_EXHAUSTED") == 1
    assert stub.BenchmarkModel(M.BenchmarkModelRequest(name="tiny", seconds=0.1), timeout=60).fps > 0


def test_a_benchmark_whose_client_gives_up_stops_at_once(served):
    server, stub = served.server, served.stub
    before = _metrics(server)
    t0 = time.monotonic()
    code, _ = _code(stub.BenchmarkModel, M.BenchmarkModelRequest(name="tiny", seconds=60), timeout=1.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    while True:  # the server is free again soon, not after the 60 s asked for
        try:
            assert stub.BenchmarkModel(M.BenchmarkModelRequest(name="tiny", seconds=0.1), timeout=60).fps > 0
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
    assert time.monotonic() - t0 < 20
    key = 'slimyolo_inference_requests_total{api="benchmark_model",code="CANCELLED",model="tiny"}'
    while _metrics(server).get(key, 0) - before.get(key, 0) < 1:  # counted as its call ends on the server
        assert time.monotonic() - t0 < 30
        time.sleep(0.1)
    assert _metrics(server)[key] - before.get(key, 0) == 1


def test_bench_server_side_command(served, run_cli):
    server = served.server
    code, out, err = run_cli("bench", "--remote", _target(server), "--model", "tiny", "--server-side",
                             "--seconds", "0.3", "--json")
    assert code == 0, err
    r = json.loads(out)
    _check_figures(r["fps"], *r["latency_ms"].values(), r["inferences"], r["seconds"], 0.3)
    assert list(r["latency_ms"]) == ["p50", "p90", "p99"]
    assert (r["model"], r["version"], r["precision"], r["execution_precision"]) == ("tiny", "1", "fp32", "f32")
    assert set(r["cpu"]) == {"cpu", "cores", "isa"} and r["cpu"]["cpu"] and r["target"] == _target(server)

    code, out, err = run_cli("bench", "--remote", _target(server), "--model", "tiny/1", "--server-side",
                             "--seconds", "0.2")
    assert code == 0, err
    from slimyolo.cpuinfo import cpu_info

    head, figures = out.splitlines()[:2]
    assert head.startswith(f"tiny/1 on {_target(server)} (host {socket.gethostname()}), server-side, inference only")
    assert " FPS " in figures and "p99" in figures and cpu_info()["cpu"] in figures  # the CPU beside the figures

    code, out, err = run_cli("bench", "--remote", _target(server), "--model", "tiny", "--server-side", "--mosaic",
                             "2x2", "--seconds", "0.2", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["mosaic"] == 2 and r["input_size"] == [2 * SIZE, 2 * SIZE]
    assert r["frames_per_second"] == round(4 * r["fps"], 2)

    for args, message in [
        (("--seconds", "61"), "seconds: 61 is outside (0, 60]"),
        (("--concurrency", "4", "--api", "detect"), "--concurrency, --api do not apply"),
        (("--precision", "bf16"), "--precision do not apply"),
        (("--mosaic", "3x3"), "mosaic: 3x3 is not a mosaic model 'tiny' runs"),
    ]:
        code, _, err = run_cli("bench", "--remote", _target(server), "--model", "tiny", "--server-side", *args)
        assert code == 2 and message in err, err
    code, _, err = run_cli("bench", "--model", "tiny", "--server-side")
    assert code == 2 and "--server-side: give --remote TARGET" in err
    code, _, err = run_cli("bench", "--remote", _target(server), "--model", "nope/1", "--server-side",
                           "--seconds", "0.1")
    assert code == 2 and "'nope'" in err


def _temporaries(stub, include_repository: bool = False) -> list[tuple[str, str, str]]:
    """The temporary models the service has loaded (or, with ``include_repository``, also sees in its repository)."""
    listed = stub.ListModels(M.ListModelsRequest(include_repository=include_repository), timeout=60).models
    return [(m.name, m.version, M.ModelState.Name(m.state)) for m in listed if m.name.startswith("_sweep-")]


def _gone_from_the_repository(stub) -> bool:
    """Whether the service's repository no longer lists a temporary model, once it scanned again (0.3 s)."""
    deadline = time.monotonic() + 30
    while _temporaries(stub, include_repository=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_remote_fps_meter_measures_on_the_service_and_leaves_nothing_behind(served):
    from slimyolo.prune.speed import RemoteFpsMeter

    server, store, stub = served.server, served.store, served.stub
    before = _metrics(server)
    meter = RemoteFpsMeter(_target(server), seconds=0.2, repeats=2)
    assert meter.name.startswith("_sweep-") and meter.cpu is None and "nothing measured yet" in meter.measured_on
    model = tiny()
    fps = meter(model)
    assert fps > 0 and meter.cpu is not None and meter.host == socket.gethostname()
    assert meter.cpu["cpu"] in meter.measured_on and _target(server) in meter.measured_on
    assert meter.last["fps"] <= fps and meter.last["model"] == meter.name  # the best of the runs counts
    assert "timed server-side by the inference service" in meter.note() and meter.cpu["cpu"] in meter.note()
    assert meter(tiny()) == fps  # the same architecture: from the cache, not measured again
    assert meter(tiny(0.5)) > 0  # another one: the next temporary version
    assert meter.points == 2 and len(meter.cache) == 2

    assert _temporaries(stub) == [] and store.list_keys(f"models/{meter.name}") == []  # unloaded, deleted
    assert _gone_from_the_repository(stub)
    after = _metrics(server)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    # Every temporary model is counted under one label, so that sweeps do not grow the metrics.
    assert delta('slimyolo_inference_model_loads_total{model="_sweep",result="ok"}') == 2
    assert delta('slimyolo_inference_requests_total{api="benchmark_model",code="OK",model="_sweep"}') == 4
    assert delta('slimyolo_inference_benchmark_inferences_total{model="_sweep"}') > 0
    assert not [k for k in after if meter.name in k]
    assert after["slimyolo_inference_models_loaded"] == 1  # tiny alone


def test_the_meters_time_the_mosaic_as_frames_per_second(served, monkeypatch):
    """With mosaic 2 both meters time the IR at twice its size and count four frames an inference."""
    from slimyolo.prune import speed
    from slimyolo.prune.speed import FpsMeter, RemoteFpsMeter

    monkeypatch.setattr(speed, "convert_point", lambda model, precision, work: served.ir)  # tiny(), converted

    model = tiny()
    remote = RemoteFpsMeter(_target(served.server), seconds=0.2, repeats=1, mosaic=2)
    fps = remote(model)
    assert remote.last["mosaic"] == 2 and remote.last["input_size"] == [2 * SIZE, 2 * SIZE]
    assert fps == remote.last["frames_per_second"] == round(4 * remote.last["fps"], 2)
    assert "as the 2x2 mosaic (4 frames an inference)" in remote.note()
    local = FpsMeter("f32", seconds=0.2, repeats=1, mosaic=2)
    assert local(model) > 0 and all(k.endswith("-f32-2x2") for k in local.cache)
    assert "as the 2x2 mosaic" in local.note() and local.measured_on.startswith("local (")
    with pytest.raises(SlimYoloError, match="mosaic: K of a KxK mosaic"):
        FpsMeter(mosaic=-1)
    assert _temporaries(served.stub) == []


def test_remote_fps_meter_fails_clearly_and_cleans_up(served, tmp_path, monkeypatch):
    from slimyolo.prune import speed
    from slimyolo.prune.speed import RemoteFpsMeter

    server, plane, store, stub = served.server, served.plane, served.store, served.stub
    monkeypatch.setattr(speed, "convert_point", lambda model, precision, work: served.ir)  # converted already
    # The service reads another store: it cannot see the upload.
    other = open_store(str(tmp_path / "elsewhere"))
    meter = RemoteFpsMeter(_target(server), seconds=0.1, repeats=1, store=other)
    with pytest.raises(SlimYoloError, match="the pruner and the inference service must share the store"):
        meter(tiny())
    assert other.list_keys() == [] and _temporaries(stub) == []

    # A failure after the load (the service runs f32, not the bf16 asked for): unloaded and deleted all the same.
    meter = RemoteFpsMeter(_target(server), precision="bf16", seconds=0.1, repeats=1)
    with pytest.raises(SlimYoloError, match=r"runs models in f32 .* not bf16"):
        meter(tiny())
    assert _temporaries(stub) == [] and store.list_keys(f"models/{meter.name}") == []
    assert plane.ready()

    with pytest.raises(SlimYoloError, match="at most 60 seconds"):
        RemoteFpsMeter(_target(server), seconds=61)
    with pytest.raises(SlimYoloError, match="give the inference service"):
        RemoteFpsMeter("")
    monkeypatch.setattr("slimyolo.rpc.inference_client.CONNECT_TIMEOUT", 1.0)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # a port where nothing listens
    try:
        with pytest.raises(SlimYoloError, match="nothing answers there"):
            RemoteFpsMeter(f"127.0.0.1:{port.getsockname()[1]}")
    finally:
        port.close()


def test_a_temporary_model_alone_does_not_make_the_server_ready():
    from types import SimpleNamespace

    from slimyolo.serving.manager import ModelManager
    from slimyolo.serving.repository import Repository

    class Repo(Repository):
        uri = "memory://"

        def __init__(self) -> None:
            self.models: dict[str, list[str]] = {}

        def scan(self):
            return dict(self.models)

        def fetch(self, name, version):
            return Path("/nonexistent")

        def release(self, path):
            pass

        def close(self):
            pass

    repo = Repo()
    manager = ModelManager(repo, lambda n, v, p: SimpleNamespace(name=n, version=v, meta=None, close=lambda: None),
                           poll_seconds=0)
    changes: list[bool] = []
    manager.start(changes.append)
    manager._thread.join(10)  # no polling: the first scan, then the thread ends
    assert manager._scanned.is_set()
    repo.models = {"_sweep-0123456789ab": ["1"]}
    manager.load("_sweep-0123456789ab", "1")
    assert not manager.ready  # loaded, yet no traffic should come for it
    repo.models = {"_sweep-0123456789ab": ["1"], "mine": ["3"]}
    manager.load("mine")
    assert manager.ready and changes == [False, True]
    manager.close()
