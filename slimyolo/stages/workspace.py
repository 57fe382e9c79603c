"""A stage's work folder: inputs fetched from the store (verified), outputs published as a tree.

Every stage run gets a fresh temporary folder (under ``$SLIMYOLO_WORK_DIR``, else the system's
temporary folder), removed when the run ends, so a service's disk holds only the runs in
progress. Inputs come down verified against their sha256 (:meth:`Store.fetch`); outputs go up
as one tree (:meth:`Store.put_tree`), which readers see complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.stages.specs import DataRef, FileRef
from slimyolo.store import MANIFEST, Artifact, Store

ENV_WORK_DIR = "SLIMYOLO_WORK_DIR"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives; darknet .weights start with a version header


def _tree_of(store: Store, key: str, field: str) -> tuple[str, str]:
    """(prefix of the complete tree at or above ``key``, ``key`` relative to it)."""
    parts = key.split("/")
    for n in range(len(parts), 0, -1):
        prefix = "/".join(parts[:n])
        if store.exists(f"{prefix}/{MANIFEST}"):
            return prefix, "/".join(parts[n:])
    raise NotFoundError(f"{field}: {store.uri_of(key)} is not in a complete tree of the store (keys name trees, "
                        "such as stage outputs, and the files and folders in them; give other files as "
                        "{uri, sha256, size_bytes})")


def resolve(store: Store, ref: FileRef, field: str) -> Artifact:
    """The Artifact a FileRef stands for; a key is looked up in the manifest of the tree holding it."""
    if isinstance(ref, Artifact):
        return ref
    prefix, rel = _tree_of(store, ref, field)
    files = store.tree_files(prefix)
    if rel not in files:
        raise NotFoundError(f"{field}: the tree {store.uri_of(prefix)} has no file {rel!r}")
    return files[rel]


def folder_files(store: Store, key: str, field: str) -> dict[str, Artifact]:
    """The files of a tree, or of a folder inside one, by path relative to ``key``."""
    prefix, rel = _tree_of(store, key, field)
    files = {name[len(rel) + 1:] if rel else name: a for name, a in store.tree_files(prefix).items()
             if not rel or name.startswith(rel + "/")}
    if not files:
        raise NotFoundError(f"{field}: the tree {store.uri_of(prefix)} has no folder {rel!r}")
    return files


def check_new_tree(store: Store, prefix: str, field: str) -> None:
    """Fail before the work, not after it, when ``prefix`` already holds a tree (trees are immutable)."""
    if store.exists(f"{prefix}/{MANIFEST}"):
        raise SlimYoloError(f"{field}: {store.uri_of(prefix)} already holds a complete tree; choose a new one")


class Workspace:
    """A temporary folder for one stage run, and the store it exchanges files with (a context manager)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = Path()
        self._data_sets = 0

    def __enter__(self) -> Workspace:
        base = os.environ.get(ENV_WORK_DIR) or None
        if base:
            Path(base).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="slimyolo-stage-", dir=base))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def file(self, ref: FileRef, field: str, name: str) -> Path:
        """Fetch a file into ``inputs/`` (verified), named ``name`` (``.weights`` or ``.pt`` by content for weights)."""
        artifact = resolve(self.store, ref, field)
        dest = self.store.fetch(artifact, self.root / "inputs" / name, field)
        if name.endswith(".weights"):  # the trainer and converter tell a .pt apart by its suffix
            with open(dest, "rb") as fh:
                if fh.read(4) == ZIP_MAGIC:
                    dest = dest.rename(dest.with_suffix(".pt"))
        return dest

    def data(self, ref: DataRef, field: str) -> Path:
        """Fetch a data set; returns its ``.data`` file, or its folder when the file is to be found there."""
        self._data_sets += 1
        folder = self.root / "inputs" / f"data-{self._data_sets}"
        if ref.tree is not None:
            for rel, artifact in folder_files(self.store, ref.tree, field).items():
                self.store.fetch(artifact, folder / rel, f"{field}: {rel}")
        else:
            assert ref.archive is not None
            archive = self.file(ref.archive, f"{field}.archive", "data.tar")
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(folder, filter="data")  # no absolute paths, no links out, no devices
            except (tarfile.TarError, OSError) as exc:
                raise SlimYoloError(f"{field}.archive: not a readable tar archive of a data set ({exc})") from None
            archive.unlink()
        if not ref.data_file:
            return folder
        path = folder / ref.data_file
        if not path.is_file():
            raise NotFoundError(f"{field}.data_file: the data set has no {ref.data_file}")
        return path

    def publish(self, prefix: str, folder: Path) -> dict[str, Artifact]:
        """Upload ``folder`` as the tree ``prefix``; its files as Artifacts by relative path."""
        return self.store.put_tree(prefix, folder)
