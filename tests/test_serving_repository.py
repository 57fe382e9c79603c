"""Model repositories and the model manager, without gRPC: what counts as a complete version in a
local folder and in the store, and how versions are loaded, swapped, pinned, unloaded and released
(with the real OpenVINO models of trained_mini)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from slimyolo.errors import NotFoundError, SlimYoloError, UnavailableError
from slimyolo.serving.config import ServingConfig
from slimyolo.serving.dataplane import DataPlane
from slimyolo.serving.manager import ModelState
from slimyolo.serving.repository import FolderRepository, StoreRepository, open_repository, version_key
from slimyolo.store import LocalStore, open_store


def _add(repo: Path, ir: Path, version: str, name: str = "mini") -> Path:
    dest = repo / name / version
    shutil.copytree(ir, dest)
    return dest


def _corrupt(folder: Path) -> None:
    """Same size, other bytes: only the sha256 check can tell."""
    data = bytearray((folder / "model.bin").read_bytes())
    data[100] ^= 0xFF
    (folder / "model.bin").write_bytes(bytes(data))


def test_folder_repository_lists_only_complete_versions(mini_ir, tmp_path):
    repo = FolderRepository(tmp_path)
    _add(tmp_path, mini_ir, "1")
    partial = _add(tmp_path, mini_ir, "2")
    with open(partial / "model.bin", "r+b") as fh:  # a copy still in progress
        fh.truncate(1000)
    (tmp_path / "mini" / "3").mkdir()  # no files yet
    shutil.copytree(mini_ir, tmp_path / "mini" / ".4.abc.tmp")  # convert's folder in the making
    no_report = _add(tmp_path, mini_ir, "5")
    (no_report / "conversion.json").unlink()
    (tmp_path / "notes.txt").write_text("not a model")
    assert repo.scan() == {"mini": ["1"]}

    shutil.copyfile(mini_ir / "model.bin", partial / "model.bin")  # the copy finished
    corrupt = _add(tmp_path, mini_ir, "10")
    _corrupt(corrupt)
    _add(tmp_path, mini_ir, "1", name="other")
    assert repo.scan() == {"mini": ["1", "2", "10"], "other": ["1"]}  # numeric order
    assert repo.fetch("mini", "2") == partial
    with pytest.raises(SlimYoloError, match=r"10/model.bin: sha256 .* differs from .* conversion.json"):
        repo.fetch("mini", "10")
    with pytest.raises(NotFoundError, match="not a complete model version"):
        repo.fetch("mini", "3")
    with pytest.raises(NotFoundError, match="is not a folder"):
        FolderRepository(tmp_path / "nothing").scan()


def test_version_order():
    assert sorted(["10", "9", "v2", "1", "b"], key=version_key) == ["b", "v2", "1", "9", "10"]


def test_store_repository_lists_complete_trees(mini_ir, tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_tree("models/mini/1", mini_ir)
    store.put_tree("models/mini/2", mini_ir)
    store.put_tree("models/mini/3/extra", mini_ir)  # too deep: not a model version
    store.put("models/mini/4/model.xml", mini_ir / "model.xml")  # a tree whose upload never finished
    store.put_tree("elsewhere/mini/7", mini_ir)
    repo = StoreRepository(store, "models")
    assert repo.scan() == {"mini": ["1", "2"]}
    path = repo.fetch("mini", "2")
    assert (path / "model.xml").read_bytes() == (mini_ir / "model.xml").read_bytes()
    repo.release(path)
    assert not path.exists()
    repo.close()


def test_open_repository_follows_the_documented_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"SLIMYOLO_STORE": str(tmp_path / "store")}
    assert isinstance(open_repository("./models", env), FolderRepository)
    assert open_repository(f"file://{tmp_path}/m", env).root == tmp_path / "m"
    assert open_repository(str(tmp_path / "m"), env).root == tmp_path / "m"
    in_store = open_repository("models", env)
    assert isinstance(in_store, StoreRepository) and in_store.uri == open_store(env["SLIMYOLO_STORE"]).uri_of("models")
    s3_env = {"SLIMYOLO_S3_ENDPOINT": "http://127.0.0.1:9", "SLIMYOLO_S3_ACCESS_KEY": "k",
              "SLIMYOLO_S3_SECRET_KEY": "s"}
    s3 = open_repository("s3://bucket/models", s3_env)
    assert isinstance(s3, StoreRepository) and s3.uri == "s3://bucket/models"
    with pytest.raises(SlimYoloError, match="SLIMYOLO_MODEL_REPOSITORY"):
        open_repository("models/../etc", env)
    with pytest.raises(SlimYoloError, match="SLIMYOLO_MODEL_REPOSITORY"):
        open_repository("http://host/models", env)
    with pytest.raises(SlimYoloError, match="--poll-seconds / SLIMYOLO_MODEL_POLL_SECONDS"):
        ServingConfig.from_env({"SLIMYOLO_MODEL_POLL_SECONDS": "-1"})
    with pytest.raises(SlimYoloError, match="--mosaic / SLIMYOLO_INFERENCE_MOSAIC"):
        ServingConfig.from_env({}, mosaic="2x3")
    assert ServingConfig.from_env({"SLIMYOLO_MODEL_REPOSITORY": "a"}, model_repository="b").model_repository == "b"


def _fake_version(folder: Path) -> Path:
    """A version folder that a FolderRepository counts as complete (sizes as conversion.json records)."""
    import json

    folder.mkdir(parents=True)
    files = {}
    for name, data in (("model.xml", b"<net/>"), ("model.bin", b"\0" * 8)):
        (folder / name).write_bytes(data)
        files[name] = {"sha256": "0" * 64, "size_bytes": len(data)}
    (folder / "conversion.json").write_text(json.dumps({"precision": "fp32", "files": files}))
    return folder


def test_store_prefix_warns_only_when_a_local_model_folder_was_meant(tmp_path, monkeypatch, caplog):
    """`convert --out models` writes the folder models/; a bare `models` is the store's prefix. The
    warning fires only when that prefix is empty and the folder of that name holds a model, and
    names the flag to use."""
    monkeypatch.chdir(tmp_path)
    env = {"SLIMYOLO_STORE": str(tmp_path / "store")}

    def warnings() -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="slimyolo.serving.repository"):
            open_repository("models", env)
        return [r.getMessage() for r in caplog.records]

    assert warnings() == []  # no folder
    (tmp_path / "models" / "notes").mkdir(parents=True)
    assert warnings() == []  # a folder, but no model in it
    _fake_version(tmp_path / "models" / "detector" / "1")
    assert FolderRepository(tmp_path / "models").scan() == {"detector": ["1"]}
    [hint] = warnings()  # the store is empty, the folder holds a model: that is what was meant
    assert "holds no model" in hint and "holds detector" in hint and "--model-repository ./models" in hint
    assert "slimyolo store put models/NAME/VERSION models/NAME/VERSION" in hint
    LocalStore(tmp_path / "store").put_tree("models/detector/1", tmp_path / "models" / "detector" / "1")
    assert warnings() == []  # the store has models under the prefix: the user means the store


@pytest.fixture
def plane(mini_ir, tmp_path):
    _add(tmp_path / "repo", mini_ir, "1")
    config = ServingConfig(model_repository=str(tmp_path / "repo"), poll_seconds=0, precision="f32")
    plane = DataPlane.from_config(config, CollectorRegistry(), {}, code_of=lambda exc: type(exc).__name__)
    plane.manager.poll()
    yield plane
    plane.close()


def _states(plane) -> dict[tuple[str, str], ModelState]:
    return {(i.name, i.version): i.state for i in plane.manager.models(include_repository=True)}


def test_versions_swap_and_the_old_one_is_released_after_its_last_lease(plane, mini_ir, tmp_path):
    manager, repo = plane.manager, tmp_path / "repo"
    lease = manager.acquire("mini")
    v1 = lease.model
    assert v1.version == "1"
    _add(repo, mini_ir, "2")
    manager.poll()
    with manager.acquire("mini") as now:
        assert now.version == "2"
    assert _states(plane) == {("mini", "1"): ModelState.UNLOADING, ("mini", "2"): ModelState.READY}
    assert not v1.closed  # a request still holds it: it still runs
    frame = np.full((50, 80, 3), 128, np.uint8)
    detections, shared = v1.mux.submit(frame, v1.defaults).result()
    assert shared == 1 and len(detections) >= 0
    with pytest.raises(NotFoundError, match="version '1' is not loaded"):
        manager.acquire("mini", "1")
    lease.release()
    lease.release()  # idempotent
    assert v1.closed
    with pytest.raises(UnavailableError, match="being unloaded"):
        v1.mux.submit(frame, v1.defaults)
    assert _states(plane) == {("mini", "1"): ModelState.AVAILABLE, ("mini", "2"): ModelState.READY}


def test_pins_unloads_failures_and_removals(plane, mini_ir, tmp_path):
    manager, repo = plane.manager, tmp_path / "repo"
    _add(repo, mini_ir, "2")
    manager.poll()
    assert manager.load("mini", "1").version == "1"  # a rollback
    manager.poll()
    assert manager.is_ready("mini", "1")  # the poll keeps the pinned version
    _corrupt(_add(repo, mini_ir, "3"))  # a newer version appears: the pin ends
    manager.poll()
    states = _states(plane)
    assert states[("mini", "3")] == ModelState.FAILED and states[("mini", "1")] == ModelState.READY
    (reason,) = [i.reason for i in manager.models() if i.state == ModelState.FAILED]
    assert "sha256" in reason
    manager.poll()  # a failed version is not retried by the poll
    assert manager.is_ready("mini", "1")
    with pytest.raises(SlimYoloError, match="sha256"):  # but an explicit load retries (and fails again)
        manager.load("mini", "3")
    shutil.rmtree(repo / "mini" / "3")
    manager.poll()
    assert manager.is_ready("mini", "2")  # the newest complete version
    assert manager.unload("mini")[0].state == ModelState.AVAILABLE
    manager.poll()
    assert not manager.is_ready("mini")  # unloaded on request: the poll does not bring it back
    with pytest.raises(NotFoundError, match="in the repository but not loaded"):
        manager.acquire("mini")
    with pytest.raises(NotFoundError, match="is not loaded"):
        manager.unload("mini")
    with pytest.raises(NotFoundError, match="has no version '9'"):
        manager.load("mini", "9")
    with pytest.raises(NotFoundError, match="not in the model repository"):
        manager.load("nothing")
    assert manager.load("mini").version == "2"
    shutil.rmtree(repo / "mini")
    manager.poll()  # the model left the repository
    assert manager.models(include_repository=True) == []
    assert plane.metrics.fps() == {}


def test_a_local_repository_path_may_pass_through_hidden_folders(tmp_path, monkeypatch, run_cli, start_inference):
    """``--model-repository .slimyolo/store/models`` (the default local store's models) is the user's own
    folder; the keys of requests keep the strict rules. Served, the KServe example of
    services/inference/README.md reads the input size from the model's metadata."""
    import json

    import grpc
    from conftest import mini_cfg

    from slimyolo.convert import convert
    from slimyolo.rpc.client import wait_ready
    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as pb
    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as rpc

    monkeypatch.chdir(tmp_path)
    env = {"SLIMYOLO_STORE": str(tmp_path / "store")}
    (tmp_path / "m.cfg").write_text(mini_cfg(64))
    assert run_cli("init", "m.cfg", "--out", "m.weights")[0] == 0
    convert("m.cfg", "m.weights", ".slimyolo/store/models", name="mini", version=1, via="torch", parity_images=1)
    shutil.copytree(".slimyolo/store/models/mini", ".slimyolo/store/models/.hidden")  # never a model name
    for spec in (".slimyolo/store/models", "runs/.cache/../../.slimyolo/store/models"):
        repo = open_repository(spec, env)
        assert isinstance(repo, FolderRepository) and repo.scan() == {"mini": ["1"]}, spec
    with pytest.raises(SlimYoloError, match="SLIMYOLO_MODEL_REPOSITORY"):
        open_repository("models/../etc", env)  # '..' is not a hidden folder: still a bad key

    server, plane = start_inference(Path(".slimyolo/store/models"))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        wait_ready(channel, "", timeout=120)
        stub = rpc.GRPCInferenceServiceStub(channel)
        readme = (Path(__file__).parents[1] / "services/inference/README.md").read_text()
        assert "meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=\"detector\"))" in readme
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mini"), timeout=30)
        _, c, h, w = meta.inputs[0].shape
        assert (c, h, w) == (3, 64, 64)
        x = np.zeros((1, c, h, w), np.float32)
        r = stub.ModelInfer(pb.ModelInferRequest(model_name="mini", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="FP32", shape=x.shape)], raw_input_contents=[x.tobytes()]), timeout=30)
        heads = [np.frombuffer(b, "<f4").reshape(o.shape) for o, b in zip(r.outputs, r.raw_output_contents,
                                                                            strict=True)]
        assert heads[0].shape == (1, 21, 4, 4)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=".hidden"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
    finally:
        server.stop(0)
        plane.close()
    assert json.loads(Path(".slimyolo/store/models/mini/1/conversion.json").read_text())["name"] == "mini"


def test_a_sweeps_temporary_model_is_served_only_where_it_was_loaded_and_until_its_tree_goes(plane, mini_ir,
                                                                                             tmp_path):
    """Every replica polls the shared repository; a sweep's point (``_sweep-…``) must not be compiled by all of
    them, only by the one its meter sent LoadModel to, and must go when the meter deletes its tree."""
    manager, repo = plane.manager, tmp_path / "repo"
    _add(repo, mini_ir, "1", name="_sweep-0123456789ab")
    manager.poll()  # another replica's view: available, never loaded by the poll
    assert not manager.is_ready("_sweep-0123456789ab")
    assert _states(plane)[("_sweep-0123456789ab", "1")] == ModelState.AVAILABLE
    assert manager.load("_sweep-0123456789ab", "1").version == "1"  # the meter's replica
    _add(repo, mini_ir, "2", name="_sweep-0123456789ab")  # the next point, not yet loaded
    manager.poll()
    assert manager.is_ready("_sweep-0123456789ab", "1") and not manager.is_ready("_sweep-0123456789ab", "2")
    shutil.rmtree(repo / "_sweep-0123456789ab" / "1")  # the meter deletes the point it timed (killed: no unload)
    manager.poll()
    assert not manager.is_ready("_sweep-0123456789ab")  # gone with its tree, not replaced by version 2
    assert manager.is_ready("mini", "1")
