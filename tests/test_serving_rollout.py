"""Zero failed calls through a lost replica and a restart, on 127.0.0.1: three inference replicas behind one
``ipv4:`` target; ``bench --remote`` (ModelInfer) and DetectStream clients load them for 40 s while one replica
is SIGKILLed at 8 s and another SIGTERMed at 15 s and started again on its port. The clients' service config
retries what broke (UNAVAILABLE, calls refused while draining), their health watches skip the draining
replica, and the stream client reopens its calls elsewhere: no call fails, every frame is answered once, in
order, and the restarted replica serves again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_procs import free_port, serve

from slimyolo.rpc.client import connect
from slimyolo.rpc.gen.v1 import inference_pb2
from slimyolo.rpc.inference_client import detect_stream

SECONDS, KILL_AT, TERM_AT = 40.0, 8.0, 15.0
STREAMS = 3


@pytest.fixture(scope="module")
def repo(mini_ir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    shutil.copytree(mini_ir, root / "mini" / "1")
    return root


def _handled(metrics_port: int, method: str) -> float:
    """Calls of ``method`` a replica answered OK (its grpc_server_handled_total)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == method
               and s.labels.get("grpc_code") == "OK")


def _stream_client(target: str, name: str, stop: threading.Event, out: dict) -> None:
    """One camera: frames until ``stop``, through detect_stream; records what was sent and answered."""
    image = cv2.imencode(".jpg", np.random.default_rng(len(name)).integers(0, 255, (96, 96, 3), dtype=np.uint8))[1]
    sent: list[int] = []

    def frames():
        while not stop.is_set():
            sent.append(len(sent))
            yield inference_pb2.DetectStreamRequest(model_name="mini", stream_id=name, frame_id=sent[-1],
                                                    frame=inference_pb2.Image(encoded=image.tobytes()))
            time.sleep(0.01)

    answered: list[tuple[str, int]] = []
    try:
        with connect(target) as channel:
            for response in detect_stream(channel, frames(), max_in_flight=4, reconnect_seconds=60):
                answered.append((response.stream_id, response.frame_id))
        out[name] = (sent, answered, None)
    except Exception as exc:  # reported by the test, with what was answered so far
        out[name] = (sent, answered, exc)


def test_no_call_fails_when_a_replica_is_killed_and_another_restarted(repo, tmp_path, run_cli):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    flags = ["--model-repository", str(repo), "--precision", "f32", "--poll-seconds", "0", "--mosaic", "1x1",
             "--drain-delay", "1", "--grace-seconds", "10"]
    ports = [free_port() for _ in range(3)]
    replicas = [serve("inference", flags, env, tmp_path / f"replica-{i}.log", port) for i, port in enumerate(ports)]
    restarted = None
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        bench: dict = {}

        def load() -> None:
            bench["result"] = run_cli("bench", "--remote", target, "--model", "mini", "--concurrency", "8",
                                      "--seconds", str(SECONDS), "--warmup", "0", "--json")

        stop, streams = threading.Event(), {}
        threads = [threading.Thread(target=load)] + [
            threading.Thread(target=_stream_client, args=(target, f"cam{i}", stop, streams)) for i in range(STREAMS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(KILL_AT)
        replicas[0].stop(signal.SIGKILL)
        time.sleep(max(0.0, TERM_AT - (time.monotonic() - t0)))
        assert replicas[1].stop(signal.SIGTERM) == 0, replicas[1].log.read_text()[-3000:]
        restarted = serve("inference", flags, env, tmp_path / "replica-1-again.log", ports[1])
        time.sleep(max(0.0, SECONDS - 2 - (time.monotonic() - t0)))
        stop.set()
        for t in threads:
            t.join(120)
        code, out, err = bench["result"]
        assert code == 0, err
        result = json.loads(out)
        assert result["errors"] == {} and result["ok"] > 0, result
        assert _handled(restarted.metrics_port, "ModelInfer") > 0  # the restarted replica serves again
        for name, (sent, answered, error) in streams.items():
            assert error is None, (name, error, len(sent), len(answered))
            assert answered == [(name, i) for i in range(len(sent))], name  # every frame once, in order
            assert len(sent) > 20, name
    finally:
        for replica in [*replicas, *([restarted] if restarted else [])]:
            replica.stop(signal.SIGKILL)
