"""SIGTERM drains a real server process: NOT_SERVING, new calls refused, in-flight work finishes.

Each test starts tests/rpc_drain_server.py (the bootstrap serving Jobs, with one job running),
follows the job over gRPC, sends SIGTERM, and checks what the client sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimyolo.errors import UnavailableError
from slimyolo.rpc.client import connect, follow_job
from slimyolo.rpc.gen.v1 import common_pb2

HERE = Path(__file__).parent


def _start(tmp_path: Path, grace: float) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, SLIMYOLO_SHUTDOWN_GRACE_SECONDS=str(grace))
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "rpc_drain_server.py"), str(tmp_path / "gate")],
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    if not line or not line[0]:
        proc.kill()
        raise AssertionError(f"server did not start: {(tmp_path / 'server.log').read_text()}")
    return proc, json.loads(line[0])


class _Follower(threading.Thread):
    """Follows the job over gRPC in the background, as a client of the server would."""

    def __init__(self, address: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.channel, self.job_id = connect(address), job_id
        self.events: list[common_pb2.JobEvent] = []
        self.outcome: object = None

    def run(self) -> None:
        try:
            self.outcome = follow_job(self.channel, self.job_id, self.events.append)
        except Exception as exc:
            self.outcome = exc

    def wait_running(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.HasField("progress") for e in self.events):
            assert time.monotonic() < deadline, "the job never reported progress"
            time.sleep(0.05)


def _refused(address: str, timeout: float = 60) -> grpc.StatusCode:
    """Poll new health checks on a fresh channel until the server stops answering them."""
    deadline = time.monotonic() + timeout
    with connect(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                assert status in (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError as exc:
                return exc.code()
            time.sleep(0.05)
    raise AssertionError("the server kept accepting new calls after SIGTERM")


@pytest.fixture
def server(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(grace: float):
        proc, info = _start(tmp_path, grace)
        procs.append(proc)
        return proc, info

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_sigterm_lets_the_running_job_finish_within_the_grace_period(server, tmp_path):
    proc, info = server(grace=120)
    address = f"127.0.0.1:{info['port']}"
    follower = _Follower(address, info["job"])
    follower.start()
    follower.wait_running()
    with connect(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING

    proc.send_signal(signal.SIGTERM)
    # No new calls while draining: a call racing the signal on an open connection is cancelled,
    # and a new connection is refused.
    assert _refused(address) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    with connect(address) as channel, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.poll() is None and follower.is_alive()  # the job and its watcher carry on
    (tmp_path / "gate").touch()  # the job finishes its work
    follower.join(120)
    job = follower.outcome
    assert isinstance(job, common_pb2.Job), job
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED and job.result.metrics["counted"] >= 1
    assert proc.wait(120) == 0


def test_sigterm_stops_a_job_that_outlives_the_grace_period(server, tmp_path):
    proc, info = server(grace=2)
    follower = _Follower(f"127.0.0.1:{info['port']}", info["job"])
    follower.start()
    follower.wait_running()
    proc.send_signal(signal.SIGTERM)
    follower.join(120)
    assert isinstance(follower.outcome, UnavailableError), follower.outcome
    assert "the server shut down before the job finished" in str(follower.outcome)
    assert follower.events[-1].state == common_pb2.JOB_STATE_FAILED
    assert proc.wait(120) == 0
