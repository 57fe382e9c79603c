"""Model repositories: where the inference service finds model versions, and when one is complete.

A repository holds ``<name>/<version>/`` folders laid out as ``slimyolo convert`` writes them
(``model.xml``, ``model.bin``, ``conversion.json``). Two kinds:

- :class:`StoreRepository`, trees in the artifact store (``models/<name>/<version>/`` uploaded with
  :meth:`slimyolo.store.Store.put_tree`). A version exists once its ``SHA256SUMS`` is there, which
  the store writes last; every file is verified against it on download, into a private cache.
- :class:`FolderRepository`, a local folder written by ``convert`` directly. ``convert`` renames a
  finished version folder into place, but a folder may also arrive by ``cp``/``rsync``, file by
  file, so a folder counts as a version only when its ``conversion.json`` (which ``convert``
  writes with the sha256 and size of every file) is readable and ``model.xml`` and ``model.bin``
  have the sizes it records (checked on every scan: cheap), and it is loaded only when their
  sha256 match too (checked once, when loading: a corrupt or half-overwritten copy is refused
  with the file named, never served).

Names and versions are single key segments (letters, digits, ``._+=@,-``; no hidden names), the
same rule in both kinds. Versions are ordered numerically when they are integers (as ``convert``
numbers them) and above any non-integer version, which are ordered by name.

Names that start with :data:`TEMPORARY_PREFIX` (``_sweep-``) are reserved for the models a sweep
hands the service for one measurement (:class:`slimyolo.prune.speed.RemoteFpsMeter`:
``_sweep-<uuid>``, loaded, benchmarked and unloaded within seconds): the service counts them all
under the one metric label ``_sweep`` and never becomes ready on one of them alone.
"""

from __future__ import annotations

import abc
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.serving.config import ENV_MODEL_REPOSITORY
from slimyolo.store import Store, hash_file, open_store, validate_key

log = logging.getLogger(__name__)

REPORT = "conversion.json"
IR_FILES = ("model.xml", "model.bin")
TEMPORARY_PREFIX = "_sweep-"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of the temporary models of a sweep (see the module docstring)."""
    return name.startswith(TEMPORARY_PREFIX)


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key of a version: integers numerically, above every non-integer version."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def newest(versions: Iterable[str]) -> str | None:
    return max(versions, key=version_key, default=None)


def _is_segment(name: str) -> bool:
    try:
        validate_key(name)
    except SlimYoloError:
        return False
    return "/" not in name


class Repository(abc.ABC):
    """Lists the complete model versions and hands out local copies to load."""

    uri: str

    @abc.abstractmethod
    def scan(self) -> dict[str, list[str]]:
        """Every model with at least one complete version → its versions, oldest first.

        Raises UnavailableError when the storage behind the repository cannot be reached.
        """

    @abc.abstractmethod
    def fetch(self, name: str, version: str) -> Path:
        """A local folder holding the version's files, verified; give it back with :meth:`release`."""

    @abc.abstractmethod
    def release(self, path: Path) -> None:
        """The loaded model no longer needs ``path`` (from :meth:`fetch`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop everything this repository keeps locally."""

    @staticmethod
    def _sorted(found: Mapping[str, list[str]]) -> dict[str, list[str]]:
        return {name: sorted(versions, key=version_key) for name, versions in sorted(found.items()) if versions}


class FolderRepository(Repository):
    """A local folder of ``<name>/<version>/`` as ``convert --out`` writes it (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def scan(self) -> dict[str, list[str]]:
        if not self.root.is_dir():
            raise NotFoundError(f"{ENV_MODEL_REPOSITORY}: {self.root} is not a folder")
        found: dict[str, list[str]] = {}
        for model_dir in self.root.iterdir():
            if not (model_dir.is_dir() and _is_segment(model_dir.name)):
                continue  # convert's folders in the making are hidden (.name.xxx.tmp)
            found[model_dir.name] = [v.name for v in model_dir.iterdir()
                                     if v.is_dir() and _is_segment(v.name) and self._complete(v)]
        return self._sorted(found)

    @staticmethod
    def _recorded(folder: Path) -> dict[str, dict]:
        """conversion.json's record of each IR file (sha256, size_bytes); SlimYoloError when unusable."""
        try:
            files = json.loads((folder / REPORT).read_text())["files"]
            return {name: {"sha256": files[name]["sha256"], "size_bytes": int(files[name]["size_bytes"])}
                    for name in IR_FILES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SlimYoloError(f"{folder / REPORT}: unreadable or without the sha256 and size of "
                                f"{' and '.join(IR_FILES)} ({type(exc).__name__}: {exc})") from None

    def _complete(self, folder: Path) -> bool:
        try:
            recorded = self._recorded(folder)
            return all((folder / name).stat().st_size == entry["size_bytes"] for name, entry in recorded.items())
        except (SlimYoloError, OSError) as exc:
            log.debug("%s is not a complete model version: %s", folder, exc)
            return False

    def fetch(self, name: str, version: str) -> Path:
        folder = self.root / name / version
        if not self._complete(folder):
            raise NotFoundError(f"{folder}: not a complete model version ({', '.join(IR_FILES)} and {REPORT} "
                                "recording their sizes)")
        for file, entry in self._recorded(folder).items():
            sha, _ = hash_file(folder / file)
            if sha != entry["sha256"]:
                raise SlimYoloError(f"{folder / file}: sha256 {sha} differs from {entry['sha256']} recorded in "
                                    f"{REPORT}; the file is corrupt or was overwritten, convert the model again")
        return folder

    def release(self, path: Path) -> None:
        """Nothing to do: versions are served from the folder itself."""

    def close(self) -> None:
        """Nothing to do: the folder is the user's."""


class StoreRepository(Repository):
    """Model versions as trees under ``prefix`` in an artifact store, downloaded into a private cache."""

    def __init__(self, store: Store, prefix: str = "") -> None:
        self.store, self.prefix = store, validate_key(prefix, ENV_MODEL_REPOSITORY) if prefix else ""
        self.uri = store.uri_of(self.prefix) if self.prefix else store.uri
        self._cache = tempfile.TemporaryDirectory(prefix="slimyolo-models-")

    def _key(self, name: str, version: str) -> str:
        return "/".join(p for p in (self.prefix, name, version) if p)

    def scan(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        skip = len(self.prefix) + 1 if self.prefix else 0
        for tree in self.store.list_trees(self.prefix):
            parts = tree[skip:].split("/")
            if len(parts) == 2:  # <name>/<version>; deeper trees are not model versions
                found.setdefault(parts[0], []).append(parts[1])
        return self._sorted(found)

    def fetch(self, name: str, version: str) -> Path:
        dest = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=self._cache.name)) / "ir"
        try:
            self.store.get_tree(self._key(name, version), dest)
        except BaseException:
            shutil.rmtree(dest.parent, ignore_errors=True)
            raise
        return dest

    def release(self, path: Path) -> None:
        shutil.rmtree(path.parent, ignore_errors=True)

    def close(self) -> None:
        self._cache.cleanup()


_LOCAL_PREFIXES = ("/", "./", "../", "~")


def _has_hidden_folder(path: str) -> bool:
    """``path`` has a hidden segment (``.slimyolo``; not ``.`` or ``..``): a local path, never a store key."""
    return any(s.startswith(".") and s not in (".", "..") for s in path.split("/"))


def open_repository(spec: str, env: Mapping[str, str]) -> Repository:
    """The repository ``spec`` names (the ``SLIMYOLO_MODEL_REPOSITORY`` rules, see the module docstring).

    ``s3://bucket/prefix`` opens that S3 location with the ``SLIMYOLO_S3_*`` credentials; a path
    (``/``, ``./``, ``../``, ``~`` or ``file://``) is a local folder, and so is a path with a hidden
    folder in it (``.slimyolo/store/models``, the default local store's models: a store key never has a
    hidden segment, so it cannot mean one); anything else is a key prefix in the artifact store of
    ``SLIMYOLO_STORE``. This is the operator's own setting: the keys that requests carry (model names,
    versions) keep the strict key rules.
    """
    if spec.startswith("s3://"):
        return StoreRepository(open_store(spec, env))
    if spec.startswith("file://"):
        parsed = urlparse(spec)
        if parsed.netloc not in ("", "localhost"):
            raise SlimYoloError(f"{ENV_MODEL_REPOSITORY}={spec!r}: file URIs must be local (file:///path)")
        return FolderRepository(unquote(parsed.path))
    if spec.startswith(_LOCAL_PREFIXES) or spec in (".", "..") or _has_hidden_folder(spec):
        return FolderRepository(spec)
    if "://" in spec:
        raise SlimYoloError(f"{ENV_MODEL_REPOSITORY}={spec!r}: expected s3://bucket/prefix, a local folder "
                            "(/abs, ./rel, file:///abs) or a key prefix in the artifact store")
    repository = StoreRepository(open_store(None, env), validate_key(spec.strip("/"), ENV_MODEL_REPOSITORY))
    hint = local_folder_hint(spec, repository)
    if hint:
        log.warning("%s", hint)
    return repository


def store_prefix(configured: str | None, env: Mapping[str, str], field: str = "model_repository") -> str:
    """The key prefix of the store's model repository: ``configured``, else ``SLIMYOLO_MODEL_REPOSITORY``, else
    ``models`` (:attr:`ServingConfig.model_repository`): what the inference service reads when its repository is
    a prefix of the store, so that a writer with the same settings publishes where the service looks (as
    :func:`slimyolo.stages.runners.model_repository` does for the converter). SlimYoloError naming ``field`` for
    a value that is not a key prefix (a local folder or an ``s3://`` location)."""
    from slimyolo.serving.config import ServingConfig

    prefix = configured or env.get(ENV_MODEL_REPOSITORY) or ServingConfig.model_repository
    return validate_key(prefix.strip("/"), f"{field} / {ENV_MODEL_REPOSITORY}")


def local_folder_hint(spec: str, repository: Repository) -> str | None:
    """The warning for a store prefix ``spec`` that was likely meant as the local folder of that name
    (``convert --out models`` writes the folder ``models``, while a bare ``models`` is the store's
    prefix): only when the folder holds at least one complete model version and the store holds none
    under the prefix. None otherwise: a user who means the store and has such a folder is not warned
    while the store has models, nor is one whose folder holds no model."""
    folder = Path(spec)
    if not folder.is_dir():
        return None
    try:
        local = FolderRepository(folder).scan()
        if not local or repository.scan():
            return None
    except (SlimYoloError, OSError):
        return None  # the store cannot be read now: the manager reports that itself
    models = ", ".join(sorted(local))
    return (f"{ENV_MODEL_REPOSITORY}={spec} is a key prefix in the artifact store {repository.uri}, which holds no "
            f"model, while the local folder {folder.resolve()} holds {models} (as `slimyolo convert --out {spec}` "
            f"writes it): to serve that folder give --model-repository ./{spec.strip('/')} (or "
            f"{ENV_MODEL_REPOSITORY}=./{spec.strip('/')}); to serve from the store, publish each version there "
            f"(slimyolo store put {spec.strip('/')}/NAME/VERSION {spec.strip('/')}/NAME/VERSION)")
