"""Inference that scales out, on 127.0.0.1: one client target over three replicas (round-robin,
losing a replica mid-run), backpressure (RESOURCE_EXHAUSTED from a full queue, and recovery),
and ``slimyolo bench --remote``, the load generator that measures both."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.loadgen import LoadSpec, run_load
from slimyolo.rpc.server import SERVED_BY

Tensor = kserve_pb2.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def repo(mini_ir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout")
    shutil.copytree(mini_ir, root / "mini" / "1")
    return root


@pytest.fixture(scope="module")
def replicas(repo, start_inference):
    """Three replicas of the service (no mosaic engines: only unary calls here), each SERVING."""
    started = [start_inference(repo, poll_seconds=0, mosaic="1x1") for _ in range(3)]
    try:
        for server, _ in started:
            with connect(f"127.0.0.1:{server.port}") as channel:
                wait_ready(channel, "", timeout=120)
        yield [server for server, _ in started]
    finally:
        for server, plane in started:
            server.stop(0)
            plane.close()


def _target(servers) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


def _name(server) -> str:
    """How a replica names itself in its answers (the ``slimyolo-server`` trailing metadata)."""
    import socket

    return f"{socket.gethostname()}:{server.port}"


def _metrics(server) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _handled(server, code: str = "OK") -> float:
    labels = {"grpc_type": "unary", "grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer",
              "grpc_code": code}
    key = ("grpc_server_handled_total", frozenset(labels.items()))
    return _metrics(server).get(key, 0.0)


def _infer_request(batch: int = 1) -> kserve_pb2.ModelInferRequest:
    x = np.random.default_rng(0).random((batch, 3, 96, 96), dtype=np.float32)
    return kserve_pb2.ModelInferRequest(model_name="mini", inputs=[Tensor(name="images", datatype="FP32",
                                                                          shape=x.shape)],
                                        raw_input_contents=[x.tobytes()])


def test_one_target_spreads_the_calls_evenly_over_three_replicas(replicas, run_cli):
    before = [_handled(s) for s in replicas]
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--concurrency", "6",
                             "--seconds", "2", "--warmup", "0.2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {} and result["ok"] >= 150, result
    assert set(result["by_server"]) == {_name(s) for s in replicas}
    for server, was in zip(replicas, before, strict=True):
        share = result["by_server"][_name(server)] / result["ok"]
        assert abs(share - 1 / 3) <= 0.10, result["by_server"]
        # What the answers said agrees with what each replica counted (the warm-up's calls included).
        assert _handled(server) - was >= result["by_server"][_name(server)]
    assert result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0


def test_losing_a_replica_mid_run_fails_only_its_calls_in_flight(replicas, repo, start_inference):
    extra, plane = start_inference(repo, poll_seconds=0, mosaic="1x1")  # the one this test stops
    servers = [*replicas[:2], extra]
    outcomes: list[tuple[int, str, str]] = []  # (epoch at the call's start, code, replica)
    lock = threading.Lock()
    epoch, stop = [0], threading.Event()
    try:
        with connect(f"127.0.0.1:{extra.port}") as channel:
            wait_ready(channel, "", timeout=120)
        with connect(_target(servers)) as channel:
            infer = kserve_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            request = _infer_request()

            def client() -> None:
                while not stop.is_set():
                    started = epoch[0]
                    try:
                        _, call = infer.with_call(request, timeout=60)
                        code = "OK"
                    except grpc.RpcError as exc:
                        call, code = exc, exc.code().name
                    server = next((v for k, v in call.trailing_metadata() or () if k == SERVED_BY), "")
                    with lock:
                        outcomes.append((started, code, server))

            def answered(after: int) -> int:
                with lock:
                    return sum(1 for e, c, _ in outcomes if e == after and c == "OK")

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                deadline = time.monotonic() + 120
                while answered(0) < 90:
                    assert time.monotonic() < deadline, "the replicas did not answer"
                    time.sleep(0.01)
                extra.stop(0)  # gone at once: its calls in flight fail
                epoch[0] = 1
                while answered(1) < 90:
                    assert time.monotonic() < deadline, "the two replicas left did not answer"
                    time.sleep(0.01)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
    finally:
        extra.stop(0)
        plane.close()
    before = [o for o in outcomes if o[0] == 0]
    after = [o for o in outcomes if o[0] == 1]
    assert {s for _, c, s in before if c == "OK"} == {_name(s) for s in servers}
    errors = [c for _, c, _ in before if c != "OK"]
    assert len(errors) <= 4, errors  # at most the one call in flight per client
    assert [o for o in after if o[1] != "OK"] == []
    served = {s for _, _, s in after}
    assert served == {_name(s) for s in replicas[:2]}, served


def test_a_full_queue_answers_resource_exhausted_at_once_and_recovers(repo, start_inference):
    server, plane = start_inference(repo, poll_seconds=0, mosaic="1x1", max_queue=2)
    try:
        # What the server answers, seen without the retries of slimyolo's channels (connect retries RESOURCE_EXHAUSTED).
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.enable_retries", 0)]) as channel:
            wait_ready(channel, "", timeout=120)
            infer = kserve_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            # Batches of 64 keep every inference request busy, so that the 16 clients' calls queue.
            heavy = _infer_request(batch=64)
            outcomes: list[tuple[str, float, str]] = []
            lock = threading.Lock()

            def client() -> None:
                for _ in range(6):
                    t = time.monotonic()
                    try:
                        infer(heavy, timeout=120)
                        code, details = "OK", ""
                    except grpc.RpcError as exc:
                        code, details = exc.code().name, exc.details()
                    with lock:
                        outcomes.append((code, time.monotonic() - t, details))

            threads = [threading.Thread(target=client) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            codes = {c for c, _, _ in outcomes}
            assert codes == {"OK", "RESOURCE_EXHAUSTED"}, codes
            refused = [(s, d) for c, s, d in outcomes if c == "RESOURCE_EXHAUSTED"]
            # Refused at once, not after waiting its turn: far within the call's deadline.
            assert max(s for s, _ in refused) < 10, refused
            assert "SLIMYOLO_INFERENCE_MAX_QUEUE=2" in refused[0][1]
            # Load gone: the queue is empty and the next call is served.
            assert infer(_infer_request(), timeout=60).model_name == "mini"
        metrics = _metrics(server)
        assert metrics[("slimyolo_inference_queued_requests", frozenset())] == 0
        assert metrics[("slimyolo_inference_in_flight_requests", frozenset())] == 0
        exhausted = ("slimyolo_inference_requests_total", frozenset({"model": "mini", "api": "model_infer",
                                                                     "code": "RESOURCE_EXHAUSTED"}.items()))
        assert metrics[exhausted] == len(refused)
        assert _handled(server, "RESOURCE_EXHAUSTED") == len(refused)
    finally:
        server.stop(0)
        plane.close()


def test_the_default_queue_serves_32_clients_without_errors(replicas):
    one = replicas[0]
    result = run_load(LoadSpec(f"127.0.0.1:{one.port}", "mini", "detect", concurrency=32, seconds=2, warmup=0))
    assert result["errors"] == {} and result["ok"] >= 32, result
    assert result["by_server"] == {_name(one): result["ok"]}


def test_the_manifests_offer_a_headless_service_and_the_queue_gauge_the_hpa_rule_names():
    from pathlib import Path

    import yaml
    from prometheus_client import CollectorRegistry

    from slimyolo.serving.metrics import InferenceMetrics

    base = Path(__file__).resolve().parent.parent / "k8s" / "base"
    docs = list(yaml.safe_load_all((base / "inference.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (headless,) = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in headless["spec"]["ports"]] == [50051]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert float(env["SLIMYOLO_GRPC_MAX_CONNECTION_AGE_SECONDS"]) > 0
    registry = CollectorRegistry()
    InferenceMetrics(registry)
    served = {m.name for m in registry.collect()}
    named = set(re.findall(r"slimyolo_inference_\w+", (base / "inference-hpa.yaml").read_text()))
    assert named and named <= served, named - served


def test_a_maximum_connection_age_makes_clients_reconnect_without_failing_calls():
    from slimyolo.rpc.server import Server, ServerConfig

    server = Server("aging", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0, max_connection_age=0.5,
                                          max_connection_age_grace=5))
    peer = grpc.method_handlers_generic_handler("test.Peer", {
        "Peer": grpc.unary_unary_rpc_method_handler(lambda request, context: context.peer().encode())})
    server.add_service("test.Peer", lambda servicer, g: g.add_generic_rpc_handlers((servicer,)), peer)
    server.start()
    server.set_serving("test.Peer")
    try:
        with connect(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary("/test.Peer/Peer")
            peers: set[bytes] = set()
            deadline = time.monotonic() + 60
            while len(peers) < 3:  # each a new connection (its own client port): the server closed the last
                assert time.monotonic() < deadline, peers
                peers.add(call(b"", timeout=30))  # never fails: a closing connection lets its calls finish
                time.sleep(0.05)
    finally:
        server.stop(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # bound and closed: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("api", ["infer", "detect"])
def test_bench_remote_where_nothing_listens_says_so_at_once(api, run_cli):
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    code, out, err = run_cli("bench", "--remote", address, "--model", "mini", "--api", api, "--seconds", "10",
                             "--warmup", "0")
    assert time.monotonic() - t0 < 9  # the connection wait (5 s), not the 10 s of load or a 30 s deadline
    assert (code, out) == (2, "")
    assert err.strip().splitlines()[-1] == (f"slimyolo: error: {address}: nothing answers there (no connection "
                                            "within 5 s); is the inference service running at that address?")


def test_a_burst_of_unavailable_answers_stops_the_load():
    """A server that answers every call UNAVAILABLE (a service gone behind a proxy that still accepts
    connections): the load stops after a burst of them instead of spinning until the time is up."""
    from concurrent import futures

    from slimyolo.errors import UnavailableError
    from slimyolo.rpc import loadgen

    class Unavailable(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method.startswith("/grpc.health.v1.Health/"):
                return None  # no health service (UNIMPLEMENTED): the clients' health checks let calls through
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream"),
                request_deserializer=lambda b: b, response_serializer=lambda b: b)

    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[Unavailable()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(UnavailableError) as err:
            run_load(LoadSpec(f"127.0.0.1:{port}", "mini", "detect", concurrency=4, seconds=30, warmup=0))
        assert time.monotonic() - t0 < 20
        assert str(err.value).startswith(f"127.0.0.1:{port}: {loadgen.UNAVAILABLE_BURST} calls in a row failed "
                                         "with UNAVAILABLE after ")
        assert "(no healthy upstream)" in str(err.value) and "the load was stopped" in str(err.value)
    finally:
        server.stop(0)


def test_bench_spreads_its_clients_over_processes_and_reports_its_own_cpu(replicas, run_cli):
    """--processes 2: the clients in two processes measuring over the same seconds, one result for all of them."""
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--concurrency", "4",
                             "--processes", "2", "--seconds", "2", "--warmup", "0.2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["processes"], result["concurrency"], result["errors"]) == (2, 4, {}), result
    assert result["ok"] >= 50 and set(result["by_server"]) == {_name(s) for s in replicas}
    assert 1.9 <= result["elapsed_s"] <= 4.0  # both processes measured over the same 2 seconds
    assert result["client_cpu_s"] > 0 and result["client_cpu_ms_per_call"] > 0
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--concurrency", "1",
                             "--processes", "2", "--seconds", "1")
    assert code == 2 and "--processes: must be at least 1 and at most --concurrency (1), got 2" in err
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--seconds", "1",
                             "--warmup", "0")
    assert code == 0 and "  client: 1 process, " in out and " ms a call answered)" in out, err


def _frames(server) -> float:
    return _metrics(server).get(("slimyolo_inference_frames_total", frozenset({("model", "mini")})), 0.0)


def test_bench_sends_a_batch_of_images_a_call_and_counts_images(replicas, run_cli):
    """--batch 4: each ModelInfer carries 4 images (the model's dynamic batch); FPS counts images, the replicas
    count 4 frames a call, and a batch the call cannot carry is refused before any load."""
    before = sum(_frames(s) for s in replicas)
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--concurrency", "2",
                             "--batch", "4", "--seconds", "1", "--warmup", "0", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["batch"] == 4 and result["errors"] == {} and result["ok"] > 0, result
    assert result["fps"] == pytest.approx(4 * result["calls_per_s"], abs=0.02)
    assert result["fps"] == pytest.approx(4 * result["ok"] / result["elapsed_s"], rel=1e-3)
    assert sum(_frames(s) for s in replicas) - before == 4 * result["requests"]  # every call ran 4 images
    code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--batch", "4",
                             "--seconds", "1", "--warmup", "0")
    assert code == 0 and "FPS, 4 images a call: " in out, err
    for args, message in ((("--api", "detect", "--batch", "2"), "--batch: must be at least 1, and 1 with --api "
                                                                 "detect (a Detect call carries one image), got 2"),
                          (("--batch", "0"), "--batch: must be at least 1"),
                          (("--batch", "1000000"), "--batch 1000000: 1000000 images of FP32 [3, 96, 96] are "
                                                   "105,469 MiB a call, above the 64 MiB a gRPC message may carry")):
        code, out, err = run_cli("bench", "--remote", _target(replicas), "--model", "mini", "--seconds", "1", *args)
        assert code == 2 and message in err, err
    code, out, err = run_cli("bench", "--model", "mini.xml", "--batch", "2")
    assert code == 2 and "--batch: the images a ModelInfer call carries, with --remote TARGET" in err, err
