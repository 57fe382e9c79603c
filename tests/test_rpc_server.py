"""The server bootstrap, for real: gRPC servers on 127.0.0.1 free ports, real clients.

The probe service registered here is a generic handler whose methods call the core library
(cfg parsing, the store, a progress callback) and return or raise what it does; it checks the
interceptor's status mapping and metrics for every kind of RPC.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from slimyolo.darknet.cfg import parse_cfg_text
from slimyolo.darknet.zoo import make_cfg
from slimyolo.errors import Cancelled, NotFoundError, SlimYoloError, UnavailableError
from slimyolo.rpc.client import connect, remote_error, wait_ready
from slimyolo.rpc.gen.v1 import jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.server import LIVENESS, SERVED_BY, Server, ServerConfig, add_arguments
from slimyolo.store import Artifact, LocalStore, S3Store


def _probe_handler(tmp_path) -> grpc.GenericRpcHandler:
    """test.Probe: each method does real library work on its (bytes) request."""
    store = LocalStore(tmp_path / "store")

    def parse(request: bytes, context) -> bytes:
        cfg = parse_cfg_text(request.decode(), "request.cfg")
        return str(len(cfg.layers)).encode()

    def fetch(request: bytes, context) -> bytes:
        if request == b"down":  # an S3 store whose server is not there
            dead = S3Store("127.0.0.1:9", "bucket", access_key="k", secret_key="s", secure=False, retries=1)
            return dead.fetch(Artifact("s3://bucket/x", "0" * 64, 1), tmp_path / "x").read_bytes()
        return store.fetch(Artifact(store.uri_of(request.decode()), "0" * 64, 1), tmp_path / "y").read_bytes()

    def run_cancelled(request: bytes, context) -> bytes:
        def progress(update: dict) -> None:
            raise Cancelled("stopped by the caller")

        for epoch in range(3):
            progress({"epoch": epoch})
        return b"unreachable"

    def bug(request: bytes, context) -> bytes:
        return str(1 // len(request)).encode()

    def deny(request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")

    def echo(request: bytes, context) -> bytes:
        times = dict(context.invocation_metadata()).get("times", "1")
        return request * int(times)

    def count_up(request: bytes, context):
        for i in range(int(request)):
            yield str(i).encode()
        raise NotFoundError("nothing after the last one")

    def join(requests, context) -> bytes:
        return b"+".join(requests)

    def chat(requests, context):
        for r in requests:
            yield r.upper()

    methods = {"Parse": grpc.unary_unary_rpc_method_handler(parse),
               "Fetch": grpc.unary_unary_rpc_method_handler(fetch),
               "RunCancelled": grpc.unary_unary_rpc_method_handler(run_cancelled),
               "Bug": grpc.unary_unary_rpc_method_handler(bug),
               "Deny": grpc.unary_unary_rpc_method_handler(deny),
               "Echo": grpc.unary_unary_rpc_method_handler(echo),
               "CountUp": grpc.unary_stream_rpc_method_handler(count_up),
               "Join": grpc.stream_unary_rpc_method_handler(join),
               "Chat": grpc.stream_stream_rpc_method_handler(chat)}
    return grpc.method_handlers_generic_handler("test.Probe", methods)


def _make_server(tmp_path, **config) -> Server:
    server = Server("probe", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0, **config))
    server.enable_jobs()
    server.add_service("test.Probe", lambda handler, grpc_server: grpc_server.add_generic_rpc_handlers((handler,)),
                       _probe_handler(tmp_path))
    return server


@pytest.fixture
def server(tmp_path):
    """A server whose test.Probe is not ready: its clients connect with health_service=None (no health checking),
    since a channel that watches health (the default) sends nothing to a replica that is not SERVING."""
    server = _make_server(tmp_path)
    server.start()
    yield server
    server.stop(0)


def _metrics(server: Server) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _sample(metrics, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def _health(channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status


def test_health_is_not_serving_until_the_servicer_is_ready(server):
    S = health_pb2.HealthCheckResponse
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:  # a probe: it must see NOT_SERVING
        assert _health(channel, LIVENESS) == S.SERVING
        assert _health(channel, "slimyolo.v1.Jobs") == S.SERVING
        assert _health(channel, "test.Probe") == S.NOT_SERVING
        assert _health(channel, "") == S.NOT_SERVING
        with pytest.raises(UnavailableError, match="not ready after"):
            wait_ready(channel, "", timeout=0.5)
        server.set_serving("test.Probe")
        wait_ready(channel, "", timeout=30)
        assert _health(channel, "") == S.SERVING
        server.set_serving("test.Probe", False)
        assert _health(channel, "") == S.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            _health(channel, "slimyolo.v1.Nothing")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(KeyError, match="not a service"):
        server.set_serving("slimyolo.v1.Nothing")


def test_reflection_lists_services_and_serves_their_descriptors(server):
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert set(db.get_services()) == {"slimyolo.v1.Jobs", "test.Probe", "grpc.health.v1.Health",
                                          "grpc.reflection.v1alpha.ServerReflection"}
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)  # built only from what the server sends
        jobs = pool.FindServiceByName("slimyolo.v1.Jobs")
        assert {m.name for m in jobs.methods} == {"GetJob", "WatchJob", "CancelJob", "ListJobs"}
        watch = jobs.FindMethodByName("WatchJob")
        assert watch.server_streaming and watch.output_type.fields_by_name["job"].message_type.full_name == \
            "slimyolo.v1.Job"


def test_exceptions_become_status_codes_and_metrics(server, caplog):
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
        def call(method: str, request: bytes, **kw) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(f"/test.Probe/{method}")(request, timeout=60, **kw)
            return err.value

        cfg = make_cfg("yolov3-tiny", 2, 416).to_text()
        err = call("Parse", cfg.replace("filters=16", "filters=oops", 1).encode())
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("request.cfg:")
        assert "filters" in err.details()
        assert isinstance(remote_error(err), SlimYoloError)
        err = call("Fetch", b"blobs/missing")
        assert err.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in err.details()
        assert isinstance(remote_error(err), NotFoundError)
        err = call("Fetch", b"down")
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:9 is unavailable" in err.details()
        assert isinstance(remote_error(err), UnavailableError)
        err = call("RunCancelled", b"")
        assert (err.code(), err.details()) == (grpc.StatusCode.CANCELLED, "stopped by the caller")
        assert isinstance(remote_error(err), Cancelled)
        with caplog.at_level(logging.ERROR, logger="slimyolo.rpc.server"):
            err = call("Bug", b"")
        assert err.code() == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in err.details()
        assert "traceback" in err.details() and "division" not in err.details()  # no internals leak
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
        err = call("Deny", b"")
        assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "no")  # the servicer's own status

        # The server keeps serving after all that, and every kind of RPC goes through the interceptor.
        layers = str(len(make_cfg("yolov3-tiny", 2, 416).layers)).encode()
        assert channel.unary_unary("/test.Probe/Parse")(cfg.encode(), timeout=60) == layers
        stream = channel.unary_stream("/test.Probe/CountUp")(b"3", timeout=60)
        got = []
        with pytest.raises(grpc.RpcError) as streamed:
            got.extend(stream)
        assert got == [b"0", b"1", b"2"] and streamed.value.code() == grpc.StatusCode.NOT_FOUND
        assert channel.stream_unary("/test.Probe/Join")(iter([b"a", b"b", b"c"]), timeout=60) == b"a+b+c"
        assert list(channel.stream_stream("/test.Probe/Chat")(iter([b"x", b"y"]), timeout=60)) == [b"X", b"Y"]

    m = _metrics(server)
    for method, code in [("Parse", "INVALID_ARGUMENT"), ("Fetch", "NOT_FOUND"), ("Fetch", "UNAVAILABLE"),
                         ("RunCancelled", "CANCELLED"), ("Bug", "INTERNAL"), ("Deny", "PERMISSION_DENIED"),
                         ("Parse", "OK")]:
        assert _sample(m, "grpc_server_handled_total", grpc_type="unary", grpc_service="test.Probe",
                       grpc_method=method, grpc_code=code) == 1, (method, code)
    assert _sample(m, "grpc_server_started_total", grpc_type="unary", grpc_service="test.Probe",
                   grpc_method="Fetch") == 2
    assert _sample(m, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service="test.Probe",
                   grpc_method="Fetch") == 2
    stream_labels = {"grpc_service": "test.Probe"}
    assert _sample(m, "grpc_server_handled_total", grpc_type="server_stream", grpc_method="CountUp",
                   grpc_code="NOT_FOUND", **stream_labels) == 1
    assert _sample(m, "grpc_server_msg_sent_total", grpc_type="server_stream", grpc_method="CountUp",
                   **stream_labels) == 3
    assert _sample(m, "grpc_server_msg_received_total", grpc_type="client_stream", grpc_method="Join",
                   **stream_labels) == 3
    assert _sample(m, "grpc_server_handled_total", grpc_type="client_stream", grpc_method="Join", grpc_code="OK",
                   **stream_labels) == 1
    assert _sample(m, "grpc_server_msg_received_total", grpc_type="bidi_stream", grpc_method="Chat",
                   **stream_labels) == 2
    assert _sample(m, "grpc_server_msg_sent_total", grpc_type="bidi_stream", grpc_method="Chat",
                   **stream_labels) == 2
    assert _sample(m, "grpc_server_handled_total", grpc_type="unary", grpc_service="grpc.health.v1.Health",
                   grpc_method="Check", grpc_code="OK") == 0  # no health checks in this test
    assert _sample(m, "process_cpu_seconds_total") > 0


def test_jobs_service_errors_are_statuses(server):
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(jobs_pb2.GetJobRequest(id="no-such-job"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no job 'no-such-job'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.CancelJob(jobs_pb2.CancelJobRequest(id=""), timeout=30)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                           "id: a job id is required")
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchJob(jobs_pb2.WatchJobRequest(id="gone"), timeout=30))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert list(stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs) == []
    m = _metrics(server)
    assert _sample(m, "grpc_server_handled_total", grpc_type="server_stream", grpc_service="slimyolo.v1.Jobs",
                   grpc_method="WatchJob", grpc_code="NOT_FOUND") == 1


def test_message_size_limits(tmp_path):
    server = _make_server(tmp_path, max_message_bytes=4096)
    server.start()
    try:
        with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
            echo = channel.unary_unary("/test.Probe/Echo")
            assert echo(b"x" * 3000, timeout=30) == b"x" * 3000
            with pytest.raises(grpc.RpcError) as err:  # request over the server's receive limit
                echo(b"x" * 5000, timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as err:  # response over the server's send limit
                echo(b"x" * 1000, metadata=[("times", "5")], timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as err:
                jobs_pb2_grpc.JobsStub(channel).GetJob(jobs_pb2.GetJobRequest(id="j" * 5000), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert echo(b"still serving", timeout=30) == b"still serving"
    finally:
        server.stop(0)


def test_servers_have_their_own_registries_and_ports(tmp_path, server):
    other = _make_server(tmp_path)
    other.start()
    try:
        assert {other.port, other.metrics_port}.isdisjoint({server.port, server.metrics_port})
        with connect(f"127.0.0.1:{other.port}", health_service=None) as channel:
            channel.unary_unary("/test.Probe/Echo")(b"hi", timeout=30)
        assert _sample(_metrics(other), "grpc_server_handled_total", grpc_type="unary", grpc_service="test.Probe",
                       grpc_method="Echo", grpc_code="OK") == 1
        assert _sample(_metrics(server), "grpc_server_handled_total", grpc_type="unary", grpc_service="test.Probe",
                       grpc_method="Echo", grpc_code="OK") == 0
    finally:
        other.stop(0)
    clash = Server("clash", ServerConfig(bind="127.0.0.1", port=server.port, metrics_port=0))
    with pytest.raises(SlimYoloError, match=f"SLIMYOLO_GRPC_PORT: cannot listen on 127.0.0.1:{server.port}"):
        clash.start()
    clash = Server("clash", ServerConfig(bind="127.0.0.1", port=0, metrics_port=server.metrics_port))
    with pytest.raises(SlimYoloError, match=f"SLIMYOLO_METRICS_PORT: cannot listen on 127.0.0.1:{server.metrics_port}"):
        clash.start()
    clash.stop(0)


def test_stop_refuses_new_calls_and_reports_not_serving(tmp_path):
    server = _make_server(tmp_path)
    server.start()
    server.set_serving("test.Probe")
    channel = connect(f"127.0.0.1:{server.port}", health_service=None)
    assert _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
    server.stop(5)
    assert server.wait(0)
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/test.Probe/Echo")(b"late", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    server.stop(5)  # a second stop is harmless


def test_config_from_environment_and_flags():
    env = {"SLIMYOLO_GRPC_PORT": "6000", "SLIMYOLO_METRICS_PORT": "6001", "SLIMYOLO_BIND_ADDRESS": "127.0.0.1",
           "SLIMYOLO_SHUTDOWN_GRACE_SECONDS": "2.5", "SLIMYOLO_JOB_WORKERS": "2"}
    assert ServerConfig.from_env(env) == ServerConfig(bind="127.0.0.1", port=6000, metrics_port=6001,
                                                      grace_seconds=2.5, job_workers=2)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "7000", "--max-message-bytes", "1024"])
    config = ServerConfig.from_args(args, env)
    assert (config.port, config.metrics_port, config.max_message_bytes) == (7000, 6001, 1024)
    assert ServerConfig.from_env({}) == ServerConfig()
    with pytest.raises(SlimYoloError, match="SLIMYOLO_GRPC_PORT='http': expected int"):
        ServerConfig.from_env({"SLIMYOLO_GRPC_PORT": "http"})
    with pytest.raises(SlimYoloError, match="--port / SLIMYOLO_GRPC_PORT: 70000 is not a port number"):
        ServerConfig.from_env({}, port=70000)
    with pytest.raises(SlimYoloError, match=r"--metrics-port / SLIMYOLO_METRICS_PORT: .* must differ"):
        ServerConfig.from_env({"SLIMYOLO_METRICS_PORT": "50051"})
    with pytest.raises(SlimYoloError, match="--job-workers / SLIMYOLO_JOB_WORKERS: must be at least 1"):
        ServerConfig.from_args(parser.parse_args(["--job-workers", "0"]), {})


def _served_by(channel) -> str:
    """Which replica answered a health check on ``channel`` (its ``slimyolo-server`` trailing metadata)."""
    _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(health_pb2.HealthCheckRequest(service=LIVENESS),
                                                                    timeout=30)
    return dict(call.trailing_metadata())[SERVED_BY]


def test_a_channel_sends_nothing_to_a_replica_that_is_not_serving(tmp_path):
    """connect()'s service config watches each replica's health: one that reports NOT_SERVING (draining, or not
    ready) gets no call, and gets calls again once it is SERVING."""
    servers = [_make_server(tmp_path / str(i)) for i in range(2)]
    for server in servers:
        server.start()
    try:
        servers[1].set_serving("test.Probe")
        names = [f"{socket.gethostname()}:{s.port}" for s in servers]  # how each replica names itself
        with connect("ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)) as channel:
            assert {_served_by(channel) for _ in range(20)} == {names[1]}
            servers[0].set_serving("test.Probe")
            deadline = time.monotonic() + 30
            while {_served_by(channel) for _ in range(10)} != set(names):
                assert time.monotonic() < deadline, "the replica that became SERVING got no call"
    finally:
        for server in servers:
            server.stop(0)


def test_a_drain_reports_not_serving_and_serves_on_for_the_drain_delay(tmp_path):
    server = _make_server(tmp_path, drain_delay=2.0)
    server.start()
    server.set_serving("test.Probe")
    S = health_pb2.HealthCheckResponse
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
        assert _health(channel, "") == S.SERVING
        t0 = time.monotonic()
        stopping = threading.Thread(target=server.stop, args=(1.0,))
        stopping.start()
        time.sleep(0.5)
        assert _health(channel, "") == S.NOT_SERVING  # still answering: the delay lets load balancers catch up
        assert _health(channel, LIVENESS) == S.NOT_SERVING
        stopping.join(30)
        assert time.monotonic() - t0 >= 2.0
    with connect(f"127.0.0.1:{server.port}", health_service=None) as channel, pytest.raises(grpc.RpcError) as err:
        _health(channel, "")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ServerConfig.from_env({"SLIMYOLO_DRAIN_DELAY_SECONDS": "5"}).drain_delay == 5.0
    assert ServerConfig().drain_delay == 0.0
    with pytest.raises(SlimYoloError, match="--drain-delay / SLIMYOLO_DRAIN_DELAY_SECONDS: must not be negative"):
        ServerConfig.from_env({"SLIMYOLO_DRAIN_DELAY_SECONDS": "-1"})

