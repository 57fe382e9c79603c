"""Durable stages: a train stage SIGKILLed mid-run resumes from its last checkpoint in the store and
ends with the weights of an uninterrupted run; a finished spec is returned, a changed one refused;
no reader ever sees a partial tree while the stage runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import MINI_CFG

from slimyolo.darknet.weights import read_checkpoint
from slimyolo.errors import NotFoundError
from slimyolo.store import LocalStore

EPOCHS = 6
SPEC = {"cfg": "inputs/mini.cfg", "data": "inputs/synth", "epochs": EPOCHS, "batch_size": 8, "img_size": 96,
        "threads": 1, "seed": 3, "eval_interval": 2, "max_eval_images": 8, "augment": {"mosaic": 0.0}}


@pytest.fixture
def inputs_store(tmp_path) -> LocalStore:
    """A local store holding the mini cfg and a small synthetic data set as the tree ``inputs``."""
    from slimyolo.data.synth import write_synthetic

    inputs = tmp_path / "inputs"
    write_synthetic(inputs / "synth", classes=2, train=48, val=8, size=96, seed=0)
    (inputs / "mini.cfg").write_text(MINI_CFG)
    store = LocalStore(tmp_path / "store")
    store.put_tree("inputs", inputs)
    return store


def _stage(store: LocalStore, spec: Path) -> subprocess.Popen:
    """``slimyolo stage train --spec SPEC`` on ``store``, started."""
    env = dict(os.environ, SLIMYOLO_STORE=str(store.root), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "slimyolo", "stage", "train", "--spec", str(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(store: LocalStore, spec: Path) -> tuple[int, str, str]:
    """``slimyolo stage train --spec SPEC`` to its end: (exit status, stdout, stderr)."""
    proc = _stage(store, spec)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _spec(tmp_path: Path, out: str, **changes) -> Path:
    path = tmp_path / f"{out.replace('/', '-')}-{len(changes)}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "out": out, **changes}))
    return path


class Reader(threading.Thread):
    """Lists the store while the stage runs and downloads every complete tree it sees, verified."""

    def __init__(self, store: LocalStore, prefix: str, dest: Path) -> None:
        super().__init__(daemon=True)
        self.store, self.prefix, self.dest = store, prefix, dest
        self.stop, self.seen, self.errors = threading.Event(), set(), []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for tree in self.store.list_trees(self.prefix):
                n += 1
                try:
                    self.store.get_tree(tree, self.dest / str(n))
                    self.seen.add(tree)
                except NotFoundError:  # removed between the listing and the download: superseded
                    if tree in self.store.list_trees(self.prefix):
                        self.errors.append(f"{tree}: listed complete, a file missing")
                except Exception as exc:  # a partial file would fail its sha256 here
                    self.errors.append(f"{tree}: {exc}")
            time.sleep(0.01)


def test_a_killed_train_stage_resumes_from_its_last_checkpoint_with_the_same_weights(inputs_store, tmp_path):
    store = inputs_store
    code, out, err = _run(store, _spec(tmp_path, "runs/whole"))
    assert code == 0, err[-3000:]
    uninterrupted = json.loads(out)
    assert uninterrupted["metrics"]["resumed_from_epoch"] == 0
    assert store.list_trees("runs/whole") == ["runs/whole"]  # the checkpoints go once the result is complete

    spec = _spec(tmp_path, "runs/cut")
    reader = Reader(store, "runs/cut", tmp_path / "read")
    reader.start()
    proc = _stage(store, spec)
    deadline = time.monotonic() + 600
    while not store.list_trees("runs/cut/checkpoints"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    (first,) = store.list_trees("runs/cut/checkpoints")
    while store.list_trees("runs/cut/checkpoints") == [first] and proc.poll() is None:
        time.sleep(0.005)  # the second epoch's checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = store.list_trees("runs/cut/checkpoints")  # the older one too if killed before its removal
    assert killed_at[-1] != first, killed_at
    epoch = int(killed_at[-1].rsplit("-", 1)[1])
    assert 2 <= epoch < EPOCHS
    assert not store.exists("runs/cut/SHA256SUMS")

    again = _stage(store, spec)
    out, err = again.communicate(timeout=600)
    reader.stop.set()
    reader.join()
    assert again.returncode == 0, err[-3000:]
    resumed = json.loads(out)
    assert resumed["metrics"]["resumed_from_epoch"] == epoch
    assert f"train: resume (epoch {epoch}, key {killed_at[-1]})" in err
    assert f"train epoch {epoch}/{EPOCHS}" not in err and f"train epoch {epoch + 1}/{EPOCHS}" in err
    for role in ("weights", "cfg"):  # darknet's files: byte for byte
        assert resumed["artifacts"][role]["sha256"] == uninterrupted["artifacts"][role]["sha256"], role
    for role in ("checkpoint", "last"):  # torch's zip names its folder after the (temporary) file: the tensors
        a, b = (read_checkpoint(store.root / "runs" / run / f"{role if role == 'last' else 'best'}.pt")
                for run in ("whole", "cut"))
        for key in ("model", *(("raw_model",) if role == "last" else ())):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(t, b[key][name]) for name, t in a[key].items()), (role, key)
    assert resumed["metrics"]["best_map50"] == uninterrupted["metrics"]["best_map50"]
    assert store.list_trees("runs/cut") == ["runs/cut"]
    assert not reader.errors, reader.errors
    assert any("/checkpoints/epoch-" in tree for tree in reader.seen), reader.seen  # it did read checkpoints whole


def test_a_finished_spec_is_returned_and_a_changed_one_refused(inputs_store, tmp_path):
    store = inputs_store
    spec = _spec(tmp_path, "runs/done", epochs=1)
    code, first, err = _run(store, spec)
    assert code == 0, err[-3000:]
    code, second, err = _run(store, spec)
    assert code == 0, err[-3000:]
    assert second == first  # the same JSON, byte for byte
    assert "train: finished already" in err and "train epoch 1/1" not in err

    code, out, err = _run(store, _spec(tmp_path, "runs/done", epochs=2, lr0=0.002))
    assert (code, out) == (2, "")
    assert ("out: " + store.uri_of("runs/done") + " holds a complete tree of another train spec (differs in "
            "epochs: 1 → 2; lr0: (not set) → 0.002)") in err


def test_a_train_stage_killed_inside_an_epoch_resumes_from_its_step_checkpoint(inputs_store, tmp_path):
    """checkpoint_steps: long epochs are checkpointed every N steps too; a kill loses at most N steps."""
    store = inputs_store
    code, out, err = _run(store, _spec(tmp_path, "runs/plain", epochs=2))
    assert code == 0, err[-3000:]
    uninterrupted = json.loads(out)

    spec = _spec(tmp_path, "runs/steps", epochs=2, checkpoint_steps=2)  # 48 images, batch 8: steps 2 and 4
    proc = _stage(store, spec)
    deadline = time.monotonic() + 600
    while not any("-step-" in t for t in store.list_trees("runs/steps/checkpoints")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    newest = store.list_trees("runs/steps/checkpoints")[-1]
    code, out, err = _run(store, spec)
    assert code == 0, err[-3000:]
    resumed = json.loads(out)
    epoch, step = (int(n) for n in re.fullmatch(r".*/epoch-(\d+)-step-(\d+)", newest).groups())
    assert (resumed["metrics"]["resumed_from_epoch"], resumed["metrics"]["resumed_from_step"]) == (epoch, step)
    assert step in (2, 4) and f"train: resume (epoch {epoch}, step {step}, key {newest})" in err
    for role in ("weights", "cfg"):
        assert resumed["artifacts"][role]["sha256"] == uninterrupted["artifacts"][role]["sha256"], role
