"""A stage's work folder: inputs fetched from the store (verified), outputs published as a tree.

Every stage run gets a fresh folder ``slimyolo-stage-*`` (under ``$SLIMYOLO_WORK_DIR``, else the
system's temporary folder), removed when the run ends, so a service's disk holds only the runs in
progress. Inputs come down verified against their sha256 (:meth:`Store.fetch`); outputs go up
as one tree (:meth:`Store.put_tree`), which readers see complete or not at all.

A run holds an exclusive ``flock`` on its folder for as long as it lives; the kernel drops it
when the process dies, whatever killed it (SIGKILL, the OOM killer). A service starting up
removes the folders nobody holds (:func:`remove_stale_work_dirs`): the leftovers of a killed
process, never the folder of a run in progress in another process sharing the same disk.

A data set that arrives in a request is hostile until checked: its archive is unpacked by
:mod:`slimyolo.stages.archive` (plain files and folders only, limits on members and bytes) and
every path its ``.data`` file names must stay inside its folder
(:func:`slimyolo.data.dataset.read_data_file` with ``root``). Errors raised inside a run name
the request's field, never the server-local path of the work folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from slimyolo.envconfig import EnvConfig
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.params import DataRef, FileRef, ImportRef
from slimyolo.progress import Event, Progress, StageStep
from slimyolo.stages import archive
from slimyolo.store import Artifact, Store, subtree

log = logging.getLogger(__name__)

ENV_WORK_DIR = "SLIMYOLO_WORK_DIR"
WORK_PREFIX = "slimyolo-stage-"
_NEW_PREFIX = ".slimyolo-new-"  # a folder is renamed to WORK_PREFIX* once locked, so none is ever seen unlocked


@dataclass(frozen=True)
class WorkConfig(EnvConfig):
    """Where stage runs work, and how large a data set archive may be (the environment's settings)."""

    work_dir: str = ""  # "": the system's temporary folder
    archive_max_members: int = archive.DEFAULT_MAX_MEMBERS
    archive_max_bytes: int = archive.DEFAULT_MAX_BYTES

    VARIABLES: ClassVar[dict[str, str]] = {"work_dir": ENV_WORK_DIR,
                                           "archive_max_members": "SLIMYOLO_ARCHIVE_MAX_MEMBERS",
                                           "archive_max_bytes": "SLIMYOLO_ARCHIVE_MAX_BYTES"}

    def _check(self) -> None:
        for name in ("archive_max_members", "archive_max_bytes"):
            if getattr(self, name) < 1:
                raise SlimYoloError(f"{self.VARIABLES[name]}: must be at least 1, got {getattr(self, name)}")

    @property
    def base(self) -> Path:
        return Path(self.work_dir or tempfile.gettempdir())


def _tree_of(store: Store, key: str, field: str) -> tuple[str, str]:
    """(prefix of the complete tree at or above ``key``, ``key`` relative to it)."""
    located = store.tree_of(key)
    if located is not None:
        return located
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
    files = subtree(store.tree_files(prefix), rel)
    if not files:
        raise NotFoundError(f"{field}: the tree {store.uri_of(prefix)} has no folder {rel!r}")
    return files


def remove_stale_work_dirs(config: WorkConfig | None = None) -> list[Path]:
    """Remove this user's ``slimyolo-stage-*`` folders that no live process holds; returns them.

    A service calls it at start-up: the folders of runs killed with their process are gone, and
    the folders of runs in progress (their lock is held, by this or another process) are kept.
    """
    base = (config or WorkConfig.from_env(os.environ)).base
    removed = []
    for path in sorted(base.glob(f"{WORK_PREFIX}*")):
        try:  # no symbolic links, not another user's folder
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run holds it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d work folder(s) left by stopped processes under %s", len(removed), base)
    return removed


class Workspace:
    """A temporary folder for one stage run, and the store it exchanges files with (a context manager)."""

    def __init__(self, store: Store, config: WorkConfig | None = None) -> None:
        self.store = store
        self.config = config or WorkConfig.from_env(os.environ)
        self.root = Path()
        self._lock = -1
        self._data_sets = 0
        self._fields: dict[str, str] = {}  # paths of fetched inputs → the fields that named them (for errors)

    def __enter__(self) -> Workspace:
        base = self.config.base
        base.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=base)).resolve()
        self._lock = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # held until __exit__, or until the process dies
        self.root = new.with_name(WORK_PREFIX + new.name[len(_NEW_PREFIX):])
        new.rename(self.root)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._lock)
        if isinstance(exc, SlimYoloError) and exc.args and isinstance(exc.args[0], str):
            exc.args = (self.scrub(exc.args[0]), *exc.args[1:])

    def scrub(self, message: str) -> str:
        """``message`` with the work folder's paths replaced by the fields (or store keys) that named them.

        A client sees the errors and progress of its run; the server-local paths of its work folder
        tell it nothing it can use, and tell an attacker about the server.
        """
        for path in sorted(self._fields, key=len, reverse=True):
            message = message.replace(path, self._fields[path])
        return message.replace(f"{self.root}/", "").replace(str(self.root), "the work folder")

    def name(self, path: Path, label: str) -> Path:
        """Show ``path`` (an output folder of the run) as ``label`` (its store key) in errors and progress."""
        self._fields[str(path)] = label
        return path

    def progress(self, progress: Progress | None) -> Progress | None:
        """``progress`` with the text details of every step scrubbed (:meth:`scrub`): store keys and field
        names instead of the work folder's paths."""
        if progress is None:
            return None

        def scrubbed(event: Event) -> None:
            if isinstance(event, StageStep) and any(isinstance(v, str) for v in event.details.values()):
                event = dataclasses.replace(event, details={k: self.scrub(v) if isinstance(v, str) else v
                                                            for k, v in event.details.items()})
            progress(event)

        return scrubbed

    def file(self, ref: FileRef, field: str, name: str) -> Path:
        """Fetch a file into ``inputs/`` (verified), named ``name`` (``.weights`` or ``.pt`` by content for weights)."""
        artifact = resolve(self.store, ref, field)
        dest = self.store.fetch(artifact, self.root / "inputs" / name, field)
        if name.endswith(".weights"):  # named by what it is, for the run's files and messages
            from slimyolo.darknet.weights import is_checkpoint  # torch: imported only for weights

            if is_checkpoint(dest):
                dest = dest.rename(dest.with_suffix(".pt"))
        self._fields[str(dest)] = field
        return dest

    def data(self, ref: DataRef, field: str) -> Path:
        """Fetch a data set and check it; returns its ``.data`` file.

        Every path the data set names (``data_file``, the ``.data`` file's ``names``, ``train``,
        ``valid``, the images its lists name and their label files) must stay inside its folder:
        a request must not make the server read its own files. Errors name ``field``.
        """
        from slimyolo.data.dataset import read_data_file

        self._data_sets += 1
        folder = self.root / "inputs" / f"data-{self._data_sets}"
        self._fields[str(folder)] = field
        if ref.imported is not None:
            folder = self._import(ref.imported, folder, f"{field}.import")
        elif ref.tree is not None:
            for rel, artifact in folder_files(self.store, ref.tree, field).items():
                self.store.fetch(artifact, folder / rel, f"{field}: {rel}")
        else:
            assert ref.archive is not None
            tar = self.file(ref.archive, f"{field}.archive", "data.tar")
            archive.extract(tar, folder, max_members=self.config.archive_max_members,
                            max_bytes=self.config.archive_max_bytes, where=f"{field}.archive")
            tar.unlink()
        path = folder
        if ref.data_file:
            path = (folder / ref.data_file).resolve()
            if not path.is_relative_to(folder):
                raise SlimYoloError(f"{field}.data_file: {ref.data_file!r} leads outside the data set's folder")
            if not path.is_file():
                raise NotFoundError(f"{field}.data_file: the data set has no {ref.data_file}")
        try:
            return read_data_file(path, root=folder).path
        except SlimYoloError as exc:
            raise type(exc)(f"{field}: {exc}") from None

    def _import(self, ref: ImportRef, folder: Path, field: str) -> Path:
        """Fetch the annotated photos of ``ref.source`` and import them into ``folder`` (slimyolo data import).

        Every path the source names (a COCO ``file_name``, an XML's ``filename``, a YOLO list's
        entries) must stay inside the fetched tree: the rest is reported and skipped, never read.
        """
        from slimyolo.data.importer import import_dataset

        source = folder.with_name(folder.name + "-source")
        self._fields[str(source)] = f"{field}.source"
        for rel, artifact in folder_files(self.store, ref.source, f"{field}.source").items():
            self.store.fetch(artifact, source / rel, f"{field}.source: {rel}")
        try:
            report = import_dataset(ref.format, source / ref.file if ref.file else source, folder,
                                    ref.options(source, "data", root=source))
        except SlimYoloError as exc:
            raise type(exc)(f"{field}: {exc}") from None
        for line in report.summary():
            log.info("%s: %s", field, line.strip())
        for issue in report.issues:
            log.warning("%s: %s", field, issue)
        return folder

    def publish(self, prefix: str, folder: Path) -> dict[str, Artifact]:
        """Upload ``folder`` as the tree ``prefix``; its files as Artifacts by relative path."""
        return self.store.put_tree(prefix, folder)
