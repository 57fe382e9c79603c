"""Atomic writes: all or nothing, and the same permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from slimyolo.fsutil import atomic_dir, atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "model") as d:
        (d / "model.xml").write_text("<net/>")
        raise ValueError("parity failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "model") as d:
        (d / "model.xml").write_text("<net/>")
    assert (tmp_path / "model/model.xml").read_text() == "<net/>"
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "model"):
        pass
