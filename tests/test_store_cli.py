"""``slimyolo store put|ls|get`` on both backends: a local folder and a real S3 server (weed server -s3)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimyolo.stages.workspace import folder_files, resolve
from slimyolo.store import MANIFEST, LocalStore, S3Store, hash_file, open_store

ENV_NAMES = ("SLIMYOLO_STORE", "SLIMYOLO_S3_ENDPOINT", "SLIMYOLO_S3_ACCESS_KEY", "SLIMYOLO_S3_SECRET_KEY",
             "SLIMYOLO_S3_SECURE", "SLIMYOLO_S3_REGION")


@pytest.fixture(params=["local", "s3"])
def store_env(request, tmp_path, monkeypatch) -> dict[str, str]:
    """The SLIMYOLO_* variables of a fresh store, set in this process's environment too."""
    if request.param == "local":
        env = {"SLIMYOLO_STORE": str(tmp_path / "store")}
    else:
        seaweed = request.getfixturevalue("seaweed")
        env = seaweed.env(seaweed.new_bucket(), prefix="team/a")
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def local_files(tmp_path) -> tuple[Path, Path]:
    """(a darknet-layout data set folder with binary images, a cfg file)."""
    data = tmp_path / "synth"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "synth.data").write_text("classes=2\ntrain=train.txt\nvalid=train.txt\nnames=synth.names\n")
    (data / "synth.names").write_text("a\nb\n")
    (data / "train.txt").write_text("images/0.jpg\nimages/1.jpg\n")
    for i in range(2):
        (data / "images" / f"{i}.jpg").write_bytes(os.urandom(50_000 + i))
        (data / "labels" / f"{i}.txt").write_text(f"{i} 0.5 0.5 0.2 0.2\n")
    cfg = tmp_path / "yolov4-tiny.cfg"
    cfg.write_text("[net]\nwidth=416\nheight=416\n")
    return data, cfg


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_put_ls_get_round_trip(store_env, local_files, tmp_path, run_cli, monkeypatch):
    data, cfg = local_files
    monkeypatch.setattr("slimyolo.store_cli.PROGRESS_SECONDS", 0.0)  # a progress line after every file
    code, out, err = run_cli("store", "put", data, "inputs/data")
    assert (code, out) == (0, "inputs/data\n"), err
    assert err.splitlines()[0] == "inputs/data: 1/7 files, 48.8 KiB of 97.8 KiB"  # images/0.jpg, first in order
    assert "published" in err.splitlines()[-1] and "7 file(s)" in err
    code, out, _ = run_cli("store", "put", cfg, "inputs/model")
    assert (code, out) == (0, "inputs/model/yolov4-tiny.cfg\n")

    assert run_cli("store", "ls")[:2] == (0, "inputs/data\ninputs/model\n")
    assert run_cli("store", "ls", "inputs/")[:2] == (0, "inputs/data\ninputs/model\n")
    code, out, _ = run_cli("store", "ls", "-l", "inputs/model")
    size = cfg.stat().st_size
    assert code == 0 and out.splitlines() == [f"inputs/model  (1 file(s), {size} bytes)",
                                              f"{size:>15,}  inputs/model/yolov4-tiny.cfg"]
    code, out, _ = run_cli("store", "ls", "-l", "inputs/data/images")  # a folder inside a tree
    assert code == 0 and out.splitlines() == ["         50,000  inputs/data/images/0.jpg",
                                              "         50,001  inputs/data/images/1.jpg"]

    code, out, err = run_cli("store", "get", "inputs/data", tmp_path / "back")
    assert code == 0 and out == f"{tmp_path / 'back'}\n" and "sha256 verified" in err
    assert _tree(tmp_path / "back") == _tree(data)
    (tmp_path / "here").mkdir()
    assert run_cli("store", "get", "inputs/model/yolov4-tiny.cfg", tmp_path / "here")[0] == 0
    assert (tmp_path / "here" / "yolov4-tiny.cfg").read_bytes() == cfg.read_bytes()
    assert run_cli("store", "get", "inputs/data/images", tmp_path / "images")[0] == 0
    assert _tree(tmp_path / "images") == _tree(data / "images")

    # What a stage spec names resolves: a file by its key in the tree, a data set by the tree's key.
    store = open_store(env=store_env)
    assert resolve(store, "inputs/model/yolov4-tiny.cfg", "cfg").sha256 == hash_file(cfg)[0]
    assert sorted(folder_files(store, "inputs/data", "data")) == sorted(_tree(data))


def test_put_refuses_a_key_holding_inside_or_above_a_tree(store_env, local_files, tmp_path, run_cli):
    data, cfg = local_files
    assert run_cli("store", "put", data, "inputs/data")[0] == 0
    store = open_store(env=store_env)
    before = store.list_keys()
    code, out, err = run_cli("store", "put", cfg, "inputs/data")
    assert (code, out) == (2, "") and "KEY:" in err and "inputs/data already holds a complete tree" in err
    code, _, err = run_cli("store", "put", cfg, "inputs/data/more")
    assert code == 2 and "KEY: inputs/data/more lies inside the complete tree" in err
    code, _, err = run_cli("store", "put", data, "inputs")
    assert code == 2 and "holds the complete tree(s) inputs/data" in err
    assert store.list_keys() == before


def test_errors_name_the_key_or_path(store_env, local_files, tmp_path, run_cli):
    data, cfg = local_files
    assert run_cli("store", "put", data, "inputs/data")[0] == 0
    code, out, err = run_cli("store", "get", "inputs/nope", tmp_path / "x")
    assert (code, out) == (2, "") and "KEY:" in err and "inputs/nope is not a complete tree" in err
    code, _, err = run_cli("store", "get", "inputs/data/missing.txt", tmp_path / "x")
    assert code == 2 and "has no file or folder 'missing.txt'" in err
    code, _, err = run_cli("store", "ls", "nothing/here")
    assert code == 2 and "PREFIX: no complete tree at or under" in err and "nothing/here" in err
    code, _, err = run_cli("store", "put", tmp_path / "absent", "inputs/absent")
    assert code == 2 and f"{tmp_path / 'absent'}: no such file or folder" in err
    (tmp_path / "x" / "data").mkdir(parents=True)
    code, _, err = run_cli("store", "get", "inputs/data", tmp_path / "x")  # into x: x/data, which exists
    assert code == 2 and f"{tmp_path / 'x' / 'data'} already exists" in err
    (tmp_path / "x" / "synth.names").write_text("mine\n")
    code, _, err = run_cli("store", "get", "inputs/data/synth.names", tmp_path / "x")
    assert code == 2 and "already exists" in err and (tmp_path / "x" / "synth.names").read_text() == "mine\n"
    for args in (("put", cfg, "a/../b"), ("get", "inputs/../x", tmp_path / "y"), ("ls", "inputs/.."),
                 ("put", cfg, "/abs")):
        code, _, err = run_cli("store", *args)
        assert code == 2 and ("'..' segment" in err or "is absolute" in err), (args, err)
    assert not (tmp_path / "y").exists() and open_store(env=store_env).list_trees() == ["inputs/data"]


def test_get_into_a_folder_keeps_the_key_name(store_env, local_files, tmp_path, run_cli):
    """LOCAL ending in a slash, or an existing folder, means "into": LOCAL/<last segment of KEY>, as cp does."""
    data, _ = local_files
    assert run_cli("store", "put", data, "inputs/data")[0] == 0
    names = (data / "synth.names").read_bytes()
    code, out, err = run_cli("store", "get", "inputs/data/synth.names", f"{tmp_path / 'new'}/")  # a missing folder
    assert (code, out) == (0, f"{tmp_path / 'new' / 'synth.names'}\n"), err
    assert (tmp_path / "new" / "synth.names").read_bytes() == names
    (tmp_path / "old").mkdir()
    code, out, _ = run_cli("store", "get", "inputs/data/synth.names", tmp_path / "old")  # an existing one
    assert (code, out) == (0, f"{tmp_path / 'old' / 'synth.names'}\n")
    code, out, _ = run_cli("store", "get", "inputs/data/images", f"{tmp_path / 'old'}/")  # a folder of a tree
    assert code == 0 and _tree(tmp_path / "old" / "images") == _tree(data / "images")
    code, out, _ = run_cli("store", "get", "inputs/data", tmp_path / "old")  # a whole tree
    assert code == 0 and _tree(tmp_path / "old" / "data") == _tree(data)
    code, _, err = run_cli("store", "get", "inputs/data/synth.names", f"{tmp_path / 'old'}/")
    assert code == 2 and f"{tmp_path / 'old' / 'synth.names'} already exists" in err
    code, _, err = run_cli("store", "get", "inputs/data/nothing", f"{tmp_path / 'gone'}/")
    assert code == 2 and not (tmp_path / "gone").exists()


def test_a_tampered_download_is_refused_and_leaves_nothing(store_env, local_files, tmp_path, run_cli, request):
    data, _ = local_files
    assert run_cli("store", "put", data, "inputs/data")[0] == 0
    store = open_store(env=store_env)
    evil = b"classes=9\n"
    if isinstance(store, LocalStore):
        (store.root / "inputs/data/synth.data").write_bytes(evil)
    else:
        assert isinstance(store, S3Store)
        seaweed = request.getfixturevalue("seaweed")
        seaweed.client().put_object(store.bucket, f"{store.prefix}/inputs/data/synth.data", io.BytesIO(evil),
                                    len(evil))
    for key, dest in (("inputs/data", tmp_path / "back"), ("inputs/data/synth.data", tmp_path / "one.data")):
        code, _, err = run_cli("store", "get", key, dest)
        assert code == 2 and "synth.data" in err and "the download was discarded" in err
        assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_the_command_line_program(tmp_path, local_files):
    """The installed entry point, in a process of its own: exit statuses and streams."""
    data, _ = local_files
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMYOLO_")}
    env["SLIMYOLO_STORE"] = (tmp_path / "store").as_uri()

    def slimyolo(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slimyolo", "store", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=120)

    put = slimyolo("put", data, "inputs/data")
    assert (put.returncode, put.stdout) == (0, "inputs/data\n"), put.stderr
    assert (tmp_path / "store" / "inputs/data" / MANIFEST).is_file()
    missing = slimyolo("get", "inputs/missing", tmp_path / "m")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("slimyolo: error: KEY: ") and "inputs/missing" in missing.stderr
