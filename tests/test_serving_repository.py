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
