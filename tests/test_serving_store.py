"""The inference service over a model repository in the artifact store (a real ``weed server -s3``):
a new version uploaded while a request runs on the old one, LoadModel/UnloadModel/ListModels, a
version that fails to load, and ``slimyolo serve inference`` as a process of its own that imports
neither PyTorch nor TensorFlow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import grpc
import numpy as np
import pytest
from seaweed import free_ports

from slimyolo.data.dataset import read_data_file
from slimyolo.infer.engine import Engine
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from slimyolo.rpc.server import Server, ServerConfig
from slimyolo.services.inference import build
from slimyolo.serving.config import ServingConfig
from slimyolo.store import open_store

M = inference_pb2


@pytest.fixture
def store(seaweed, monkeypatch):
    """A fresh bucket as the process's artifact store (what the service reads from the environment)."""
    for name, value in seaweed.env(seaweed.new_bucket()).items():
        monkeypatch.setenv(name, value)
    return open_store()


@pytest.fixture(scope="module")
def image(trained_mini) -> bytes:
    return cv2.imencode(".png", cv2.imread(str(read_data_file(trained_mini.data).valid[0])))[1].tobytes()


def _start(**config) -> tuple[Server, object]:
    server = Server("inference", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
    plane = build(server, ServingConfig(model_repository="models", precision="f32", model_control="explicit", **config))
    server.start()
    return server, plane


def _models(stub, include_repository: bool = True) -> dict[tuple[str, str], str]:
    listed = stub.ListModels(M.ListModelsRequest(include_repository=include_repository), timeout=60).models
    return {(m.name, m.version): M.ModelState.Name(m.state) for m in listed}


def _detect(stub, image: bytes, **kw) -> M.DetectResponse:
    return stub.Detect(M.DetectRequest(model_name="mini", image=M.Image(encoded=image),
                                       options=M.DetectionOptions(conf_threshold=0.05)), timeout=120, **kw)


def _metric(server: Server, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_a_new_version_is_served_while_a_request_finishes_on_the_old_one(store, mini_ir, image):
    store.put_tree("models/mini/1", mini_ir)
    server, plane = _start(poll_seconds=0.3)
    try:
        channel = connect(f"127.0.0.1:{server.port}")
        wait_ready(channel, "", timeout=120)
        stub, ks = inference_pb2_grpc.InferenceStub(channel), kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert _detect(stub, image).model_version == "1"

        with plane.manager.acquire("mini") as v1:
            pass
        entered, go_on = threading.Event(), threading.Event()
        infer = v1.engine.infer

        def held(tensor, started=None):  # holds a request inside version 1, as a slow inference would
            entered.set()
            go_on.wait(120)
            return infer(tensor, started)

        v1.engine.infer = held
        in_flight = stub.Detect.future(M.DetectRequest(model_name="mini", image=M.Image(encoded=image),
                                                       options=M.DetectionOptions(conf_threshold=0.05)), timeout=120)
        assert entered.wait(60)
        store.put_tree("models/mini/2", mini_ir)  # a new version appears in the repository
        deadline = time.monotonic() + 60
        while not ks.ModelReady(kserve_pb2.ModelReadyRequest(name="mini", version="2"), timeout=30).ready:
            assert time.monotonic() < deadline, "version 2 was not loaded"
            time.sleep(0.1)
        second = _detect(stub, image)
        assert second.model_version == "2"  # new requests run on the new version at once
        assert _models(stub) == {("mini", "1"): "MODEL_STATE_UNLOADING", ("mini", "2"): "MODEL_STATE_READY"}
        assert not v1.closed

        go_on.set()
        first = in_flight.result()
        assert first.model_version == "1"  # the request in flight finished on the old version
        assert first.detections == second.detections and len(first.detections)
        assert v1.closed and not v1.path.exists()  # released with its last request, download removed
        assert _models(stub) == {("mini", "1"): "MODEL_STATE_AVAILABLE", ("mini", "2"): "MODEL_STATE_READY"}
        assert _metric(server, 'slimyolo_inference_model_loads_total{model="mini",result="ok"}') == 2
        channel.close()
    finally:
        server.stop(0)
        plane.close()


def test_load_unload_list_and_a_version_that_fails_to_load(store, mini_ir, image, tmp_path):
    store.put_tree("models/mini/1", mini_ir)
    store.put_tree("models/mini/2", mini_ir)
    server, plane = _start(poll_seconds=0)  # no background polling: the test scans with manager.poll()
    try:
        # Without health checking: the replica's own answers once it serves no model (a channel that watches
        # health would send nothing to it then).
        channel = connect(f"127.0.0.1:{server.port}", health_service=None)
        wait_ready(channel, "", timeout=120)
        stub = inference_pb2_grpc.InferenceStub(channel)
        assert _models(stub) == {("mini", "1"): "MODEL_STATE_AVAILABLE", ("mini", "2"): "MODEL_STATE_READY"}
        assert _models(stub, include_repository=False) == {("mini", "2"): "MODEL_STATE_READY"}

        loaded = stub.LoadModel(M.LoadModelRequest(name="mini", version="1"), timeout=120).model
        assert (loaded.name, loaded.version, loaded.state, loaded.precision) == (
            "mini", "1", M.MODEL_STATE_READY, common_pb2.PRECISION_FP32)
        assert (loaded.input_size.width, loaded.input_size.height) == (96, 96)
        assert list(loaded.class_names) == list(Engine(mini_ir).meta.names)
        assert _detect(stub, image).model_version == "1"
        plane.manager.poll()
        assert _detect(stub, image).model_version == "1"  # a rollback stays until a newer version appears

        def code(call, request) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=120)
            return err.value.code(), err.value.details()

        assert code(stub.UnloadModel, M.UnloadModelRequest(name="mini", version="2"))[0] == grpc.StatusCode.NOT_FOUND
        (unloaded,) = stub.UnloadModel(M.UnloadModelRequest(name="mini"), timeout=60).unloaded
        assert (unloaded.version, unloaded.state) == ("1", M.MODEL_STATE_AVAILABLE)
        assert code(stub.Detect, M.DetectRequest(model_name="mini", image=M.Image(encoded=image)))[0] == \
            grpc.StatusCode.NOT_FOUND
        plane.manager.poll()
        assert _models(stub, include_repository=False) == {}  # not brought back by the poll
        assert stub.LoadModel(M.LoadModelRequest(name="mini"), timeout=120).model.version == "2"

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model.xml").write_text("<net>not an IR</net>")
        (broken / "model.bin").write_bytes(b"\0" * 64)
        store.put_tree("models/mini/3", broken)
        plane.manager.poll()
        failed = [m for m in stub.ListModels(M.ListModelsRequest(), timeout=60).models if m.version == "3"]
        assert [m.state for m in failed] == [M.MODEL_STATE_FAILED]
        assert "not a readable OpenVINO IR" in failed[0].reason
        assert _detect(stub, image).model_version == "2"  # the served version keeps serving
        got, details = code(stub.LoadModel, M.LoadModelRequest(name="mini", version="3"))
        assert got == grpc.StatusCode.INVALID_ARGUMENT and "not a readable OpenVINO IR" in details
        assert code(stub.LoadModel, M.LoadModelRequest(name="mini", version="9"))[0] == grpc.StatusCode.NOT_FOUND
        assert code(stub.LoadModel, M.LoadModelRequest(name="nothing"))[0] == grpc.StatusCode.NOT_FOUND
        assert _metric(server, 'slimyolo_inference_model_loads_total{model="mini",result="failed"}') == 2
        channel.close()
    finally:
        server.stop(0)
        plane.close()


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'keras', 'nncf'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from slimyolo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_inference_runs_without_torch_or_tensorflow(store, mini_ir, image, tmp_path):
    """The deployment's command on the deployment's variables, in a process that cannot import torch."""
    store.put_tree("models/mini/1", mini_ir)
    port, metrics_port = free_ports(2)
    env = {**os.environ, "SLIMYOLO_MODEL_REPOSITORY": "models", "SLIMYOLO_INFERENCE_PRECISION": "f32"}
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", BLOCK_TORCH, "serve", "inference", "--bind", "127.0.0.1",
                                 "--port", str(port), "--metrics-port", str(metrics_port), "--poll-seconds", "0"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with connect(f"127.0.0.1:{port}") as channel:
            try:
                wait_ready(channel, "", timeout=120)
            except Exception:
                raise AssertionError((tmp_path / "server.log").read_text()) from None
            response = _detect(inference_pb2_grpc.InferenceStub(channel), image)
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        expected = Engine(mini_ir, precision="f32", conf_thres=0.05).detect(decoded)
        assert response.model_version == "1" and len(response.detections) == len(expected) > 0
        np.testing.assert_allclose([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in response.detections],
                                   expected.boxes, atol=1e-3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
