"""The artifact store: how stages hand files to each other, on a local folder or on S3/MinIO.

One interface, two backends. Every stage reads its inputs and writes its outputs through a
:class:`Store`, so the same code runs in one process on a laptop (a local folder, the default)
and as services in a cluster (an S3 bucket, MinIO in deployments).

- **Blobs** (:meth:`Store.put_file`) are content-addressed: stored at ``blobs/sha256/<hex>`` and
  described by an :class:`Artifact` ``{uri, sha256, size_bytes}`` (the proto ``ArtifactRef``).
  Uploading the same content twice stores it once.
- **Named keys** (:meth:`Store.put`) hold files at a key of the caller's choosing; **trees**
  (:meth:`Store.put_tree`) hold a folder, such as a model version ``models/<name>/<version>/``,
  with a ``SHA256SUMS`` file (``sha256sum`` format) written *last*: a tree without it is
  incomplete and is neither listed nor downloaded, so a reader never sees a half-uploaded tree.
- Every download (:meth:`Store.fetch`, :meth:`Store.get_tree`) is hashed while it is written
  and compared with the expected digest; on a mismatch nothing is left at the destination.
- Uploads are never visible half-written: the local backend writes a temporary file and
  renames it; the S3 backend issues a single PUT or a multipart upload, which S3 makes
  visible only when it completes.
- Keys are validated (no ``..``, no absolute paths, no empty or hidden segments) because they
  come from requests.
- The S3 backend retries transient failures (connection refused or reset, timeouts, 5xx) with
  exponential backoff, then raises :class:`~slimyolo.errors.UnavailableError`, which the
  services turn into gRPC UNAVAILABLE so that a client can retry later.

Configuration (:func:`open_store`) comes from the environment, read like every other setting
through :class:`~slimyolo.envconfig.EnvConfig` (:class:`StoreConfig`, :class:`S3Config`):
``SLIMYOLO_STORE`` is a local path, ``file:///path`` or ``s3://bucket/prefix``; an S3 store also
needs ``SLIMYOLO_S3_ENDPOINT``, ``SLIMYOLO_S3_ACCESS_KEY`` and ``SLIMYOLO_S3_SECRET_KEY``.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, TypeVar

from slimyolo.envconfig import EnvConfig
from slimyolo.errors import NotFoundError, SlimYoloError, UnavailableError
from slimyolo.fsutil import atomic_dir, atomic_path

ENV_STORE = "SLIMYOLO_STORE"
ENV_S3_ENDPOINT = "SLIMYOLO_S3_ENDPOINT"
ENV_S3_ACCESS_KEY = "SLIMYOLO_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "SLIMYOLO_S3_SECRET_KEY"
ENV_S3_SECURE = "SLIMYOLO_S3_SECURE"
ENV_S3_REGION = "SLIMYOLO_S3_REGION"
ENV_RETRIES = "SLIMYOLO_STORE_RETRIES"
ENV_TIMEOUT = "SLIMYOLO_STORE_TIMEOUT_SECONDS"

DEFAULT_LOCAL_STORE = ".slimyolo/store"
BLOBS = "blobs/sha256"
MANIFEST = "SHA256SUMS"
MAX_KEY_BYTES = 1024  # S3's limit on an object name, prefix included
CHUNK = 1 << 20
MAX_BACKOFF_SECONDS = 5.0  # waits 0.25, 0.5, 1, 2, 4, 5, 5, ... seconds between attempts

_SEGMENT = re.compile(r"[A-Za-z0-9_+=@,-][A-Za-z0-9._+=@,-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

T = TypeVar("T")


@dataclass(frozen=True)
class Artifact:
    """A stored file: where it is and what it must hash to (the proto ``ArtifactRef``)."""

    uri: str
    sha256: str
    size_bytes: int


def validate_key(key: str, field: str = "key") -> str:
    """Return ``key`` if it is a safe relative key, else raise a SlimYoloError naming ``field``.

    Keys become file paths in the local backend and object names in S3, so anything that could
    escape the store's root or alias another key is refused: absolute paths, ``.``/``..``
    segments, empty segments (``a//b``, a trailing ``/``), backslashes, hidden segments (the
    local backend's temporary files are hidden) and characters outside ``A-Za-z0-9._+=@,-``.
    """
    if not isinstance(key, str) or not key:
        raise SlimYoloError(f"{field}: an object key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise SlimYoloError(f"{field}: key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise SlimYoloError(f"{field}: {key!r} is absolute; keys are relative to the store")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise SlimYoloError(f"{field}: {key!r} has an empty, '.' or '..' segment")
        if not _SEGMENT.fullmatch(segment):
            raise SlimYoloError(f"{field}: segment {segment!r} of {key!r} must match {_SEGMENT.pattern} "
                                "(no hidden names, spaces, backslashes or other special characters)")
    return key


def _validate_sha256(value: str, field: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise SlimYoloError(f"{field}: sha256 must be 64 lower-case hex digits, got {value!r}")
    return value


def hash_file(path: str | Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def next_version(versions: Iterable[str]) -> str:
    """One more than the highest integer among a model's version names (``1`` when there is none).

    Names that are not integers are ignored. The one rule for numbering a new model version,
    whether its versions are trees in a store or folders on disk.
    """
    return str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)


def folder_files(folder: str | Path) -> dict[str, Path]:
    """The files under a local ``folder`` by relative path, as :meth:`Store.put_tree` publishes them.

    Their paths must be valid keys (no hidden names: a ``.git`` or ``.DS_Store`` is refused, not
    skipped) and none may be the manifest's name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: not a folder")
    files = {validate_key(p.relative_to(folder).as_posix(), f"{folder}: file"): p
             for p in sorted(folder.rglob("*")) if p.is_file()}
    if MANIFEST in files:
        raise SlimYoloError(f"{folder}: a file named {MANIFEST} is reserved for the tree's manifest")
    return files


def subtree(files: Mapping[str, Artifact], folder: str) -> dict[str, Artifact]:
    """The files of a tree under ``folder`` (all of them for ""), by path relative to it."""
    if not folder:
        return dict(files)
    return {rel[len(folder) + 1:]: a for rel, a in files.items() if rel.startswith(folder + "/")}


class _HashingWriter:
    """A write-only file that hashes what goes through it, so downloads are read once."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._fh.write(data)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


class Store(abc.ABC):
    """Blobs, named keys and trees on one backend. Thread-safe; share one per process."""

    uri: str  # the store's root, e.g. file:///data/store or s3://bucket/prefix (no trailing slash)

    # -- what a backend provides ------------------------------------------------------------

    @abc.abstractmethod
    def _upload(self, key: str, src: Path) -> None:
        """Store the file ``src`` at ``key`` so that it appears whole or not at all."""

    @abc.abstractmethod
    def _download(self, key: str, dest: Path) -> tuple[str, int]:
        """Write the object at ``key`` into ``dest`` (overwriting it); return its (sha256, size).

        Raises NotFoundError when there is no such object.
        """

    @abc.abstractmethod
    def _size(self, key: str) -> int | None:
        """Size of the object at ``key``, or None when there is none."""

    @abc.abstractmethod
    def _list(self, prefix: str) -> dict[str, int]:
        """Size of every object whose key starts with ``prefix`` (a key followed by ``/``, or "" for all)."""

    @abc.abstractmethod
    def _delete(self, key: str) -> None:
        """Remove the object at ``key``; nothing when there is none."""

    # -- the interface ------------------------------------------------------------------------

    def uri_of(self, key: str) -> str:
        return f"{self.uri}/{validate_key(key)}"

    def key_of(self, uri: str, field: str = "uri") -> str:
        """The key of ``uri`` in this store; a SlimYoloError naming ``field`` if it is elsewhere."""
        if not isinstance(uri, str) or not uri.startswith(self.uri + "/"):
            raise SlimYoloError(f"{field}: {uri!r} is not in the artifact store {self.uri}")
        return validate_key(uri[len(self.uri) + 1:], field)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """Size in bytes of the object at ``key``, None when there is none."""
        return self._size(validate_key(key))

    def put_file(self, path: str | Path) -> Artifact:
        """Store a file as a content-addressed blob (once, however often it is put)."""
        path = Path(path)
        sha, size = hash_file(path)
        key = f"{BLOBS}/{sha}"
        if self._size(key) != size:
            self._upload(key, path)
        return Artifact(self.uri_of(key), sha, size)

    def put(self, key: str, path: str | Path) -> Artifact:
        """Store a file at a named key, replacing what was there."""
        validate_key(key)
        path = Path(path)
        sha, size = hash_file(path)
        self._upload(key, path)
        return Artifact(self.uri_of(key), sha, size)

    def delete(self, key: str) -> None:
        """Remove the object at a named key (nothing when there is none): for small records whose life ends,
        such as a job's handover note; trees go with :meth:`delete_tree`."""
        self._delete(validate_key(key))

    def get(self, key: str, dest: str | Path) -> Path:
        """Download the object at a named key (:meth:`put`) to ``dest``; NotFoundError when there is none."""
        validate_key(key)
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            self._download(key, tmp)
        return dest

    def fetch(self, ref: Artifact, dest: str | Path, field: str = "artifact") -> Path:
        """Download ``ref`` to ``dest``, verified against its sha256 and size.

        A mismatch raises SlimYoloError naming ``field`` and leaves ``dest`` untouched (or
        absent): the bytes go to a temporary file that only a verified download replaces it with.
        """
        key = self.key_of(ref.uri, f"{field}.uri")
        expected = _validate_sha256(ref.sha256, f"{field}.sha256")
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            sha, size = self._download(key, tmp)
            if sha != expected or size != ref.size_bytes:
                raise SlimYoloError(f"{field}: {ref.uri} has sha256 {sha} ({size} bytes), expected {expected} "
                                    f"({ref.size_bytes} bytes); the download was discarded")
        return dest

    def put_tree(self, prefix: str, folder: str | Path,
                 progress: Callable[[str, int], None] | None = None) -> dict[str, Artifact]:
        """Upload every file under ``folder`` to ``prefix/<relative path>``, then ``prefix/SHA256SUMS``.

        Trees are immutable once complete (a model version never changes under a running
        server): putting a complete tree again is an error. An incomplete one (an interrupted
        upload) is overwritten. ``progress(relative path, size)`` is called after each file.
        """
        validate_key(prefix, "prefix")
        return self.put_files(prefix, folder_files(folder), progress)

    def put_files(self, prefix: str, files: Mapping[str, str | Path],
                  progress: Callable[[str, int], None] | None = None) -> dict[str, Artifact]:
        """Upload local files as the complete tree ``prefix`` (relative path → local file), then its
        ``SHA256SUMS``; :meth:`put_tree` of the files given one by one (a single file is a tree too)."""
        validate_key(prefix, "prefix")
        if self._size(_join(prefix, MANIFEST)) is not None:
            raise SlimYoloError(f"prefix: {self.uri_of(prefix)} already holds a complete tree; "
                                "trees are immutable, upload under a new prefix (a new version)")
        for rel, path in files.items():
            validate_key(rel, f"{path}: file")
        if MANIFEST in files:
            raise SlimYoloError(f"{files[MANIFEST]}: the name {MANIFEST} is reserved for the tree's manifest")
        out: dict[str, Artifact] = {}
        for rel in sorted(files):
            out[rel] = self.put(_join(prefix, rel), files[rel])
            if progress is not None:
                progress(rel, out[rel].size_bytes)
        lines = "".join(f"{a.sha256}  {rel}\n" for rel, a in out.items())
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / MANIFEST
            manifest.write_text(lines)
            self._upload(_join(prefix, MANIFEST), manifest)
        return out

    def get_tree(self, prefix: str, dest: str | Path) -> dict[str, Artifact]:
        """Download the complete tree at ``prefix`` into the new folder ``dest``, every file verified.

        ``dest`` appears whole or not at all.
        """
        validate_key(prefix, "prefix")
        return self.get_files(self.tree_files(prefix), dest, self.uri_of(prefix))

    def get_files(self, files: Mapping[str, Artifact], dest: str | Path, where: str) -> dict[str, Artifact]:
        """Download ``files`` (relative path → Artifact) into the new folder ``dest``, every file
        verified (errors name ``where`` and the path); ``dest`` appears whole or not at all."""
        dest = Path(dest)
        if dest.exists():
            raise SlimYoloError(f"{dest} already exists; give a new folder to download {where} into")
        with atomic_dir(dest) as tmp:
            for rel, ref in files.items():
                self.fetch(ref, tmp / rel, f"{where}: {rel}")
        return dict(files)

    def tree_files(self, prefix: str) -> dict[str, Artifact]:
        """The files of the complete tree at ``prefix`` as Artifacts, by relative path.

        Lets a reader fetch one file of a tree (a stage's weights out of its run folder),
        verified against the manifest, without downloading the rest.
        """
        validate_key(prefix, "prefix")
        return {rel: Artifact(self.uri_of(_join(prefix, rel)), sha, size)
                for rel, (sha, size) in self._manifest(prefix).items()}

    def tree_of(self, key: str) -> tuple[str, str] | None:
        """(prefix of the complete tree at or above ``key``, ``key`` relative to it), or None.

        The innermost tree wins. This is how a key names a tree (``inputs/data``), or a file or
        folder inside one (``inputs/model/yolov4-tiny.cfg``).
        """
        parts = validate_key(key).split("/")
        for n in range(len(parts), 0, -1):
            prefix = "/".join(parts[:n])
            if self._size(_join(prefix, MANIFEST)) is not None:
                return prefix, "/".join(parts[n:])
        return None

    def delete_tree(self, prefix: str) -> None:
        """Remove the complete tree at ``prefix``: its ``SHA256SUMS`` first, so that from that moment
        on it is an incomplete tree that no reader uses, then its files (only those; nested trees
        stay). For trees whose life ends, such as a stage's superseded checkpoints."""
        files = self._manifest(validate_key(prefix, "prefix"))
        self._delete(_join(prefix, MANIFEST))
        for rel in files:
            self._delete(_join(prefix, rel))

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (every key when empty), sorted."""
        return sorted(self._list(validate_key(prefix, "prefix") + "/" if prefix else ""))

    def list_trees(self, prefix: str = "") -> list[str]:
        """Prefixes of the complete trees under ``prefix``, sorted (e.g. ``models/yolo/1``)."""
        suffix = "/" + MANIFEST
        return [k[: -len(suffix)] for k in self.list_keys(prefix) if k.endswith(suffix)]

    def _manifest(self, prefix: str) -> dict[str, tuple[str, int]]:
        """The (sha256, size) of each file of the tree at ``prefix``, from its SHA256SUMS."""
        key = _join(prefix, MANIFEST)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self._download(key, Path(tmp) / MANIFEST)
            except NotFoundError:
                raise NotFoundError(f"{self.uri_of(prefix)}: no complete tree there ({MANIFEST} is missing)") from None
            text = (Path(tmp) / MANIFEST).read_text()
        sizes = self._list(prefix + "/")
        entries: dict[str, tuple[str, int]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            sha, sep, rel = line.partition("  ")
            if not sep:
                raise SlimYoloError(f"{self.uri_of(key)}:{n}: expected '<sha256>  <path>'")
            _validate_sha256(sha, f"{self.uri_of(key)}:{n}")
            validate_key(rel, f"{self.uri_of(key)}:{n}")
            size = sizes.get(_join(prefix, rel))
            if size is None:
                raise NotFoundError(f"{self.uri_of(key)}:{n}: {rel} is listed but missing")
            entries[rel] = (sha, size)
        return entries


class LocalStore(Store):
    """A folder on a local or mounted file system: keys are relative paths under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def _upload(self, key: str, src: Path) -> None:
        with atomic_path(self._path(key)) as tmp:
            shutil.copyfile(src, tmp)

    def _download(self, key: str, dest: Path) -> tuple[str, int]:
        try:
            src = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the copy
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri_of(key)} does not exist") from None
        with src, open(dest, "wb") as out:
            writer = _HashingWriter(out)
            shutil.copyfileobj(src, writer, CHUNK)
        return writer.digest.hexdigest(), writer.size

    def _size(self, key: str) -> int | None:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):  # absent, or deleted a moment ago
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None  # a folder is a prefix, not a key

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix) if prefix else self.root
        sizes: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # atomic_dir's temporary folders
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):  # atomic_path's temporary files
                    continue
                try:
                    size = (Path(dirpath) / name).stat().st_size
                except FileNotFoundError:  # deleted between the walk and now (delete_tree in another process):
                    continue  # gone, as an S3 listing made a moment later would not show it
                sizes[_join("" if rel == "." else rel, name)] = size
        return sizes


class S3Store(Store):
    """A bucket (and optional key prefix) on S3, MinIO or any S3-compatible server."""

    # S3 error codes worth retrying; anything else is the request's or the configuration's fault.
    TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                                 "OperationAborted", "XMinioServerNotInitialized"})
    AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                            "InvalidToken", "ExpiredToken"})

    def __init__(self, endpoint: str, bucket: str, prefix: str = "", *, access_key: str, secret_key: str,
                 secure: bool, region: str | None = None, retries: int = 5, backoff_seconds: float = 0.25,
                 timeout_seconds: float = 30.0) -> None:
        import urllib3
        from minio import Minio

        if not _BUCKET.fullmatch(bucket):
            raise SlimYoloError(f"{ENV_STORE}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
        if prefix:
            validate_key(prefix, f"{ENV_STORE} prefix")
        if retries < 1:
            raise SlimYoloError(f"{ENV_RETRIES}: must be at least 1, got {retries}")
        self.endpoint, self.bucket, self.prefix = endpoint, bucket, prefix
        self.retries, self.backoff_seconds = retries, backoff_seconds
        self.uri = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
        # Retries are ours (with backoff, and mapped to UnavailableError), not urllib3's.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
                                   retries=False, maxsize=16)
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                             region=region, http_client=http)

    def _name(self, key: str) -> str:
        return _join(self.prefix, key)

    def _call(self, what: str, target: str, op: Callable[[], T]) -> T:
        """Run one S3 operation with retries; map its failures to SlimYOLO's errors."""
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        delay, last = self.backoff_seconds, None
        for attempt in range(1, self.retries + 1):
            try:
                return op()
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise NotFoundError(f"{target} does not exist") from None
                if exc.code == "NoSuchBucket":
                    raise NotFoundError(f"{ENV_STORE}: bucket {self.bucket!r} does not exist at "
                                        f"{self.endpoint}") from None
                if exc.code in self.AUTH_CODES:
                    raise SlimYoloError(f"object store {self.endpoint} refused the credentials ({exc.code}) "
                                        f"to {what} {target}: check {ENV_S3_ACCESS_KEY} and "
                                        f"{ENV_S3_SECRET_KEY}") from None
                status = exc.response.status if exc.response is not None else 0
                if exc.code not in self.TRANSIENT_CODES and status < 500:
                    raise SlimYoloError(f"object store {self.endpoint}: cannot {what} {target}: "
                                        f"{exc.code}: {exc.message}") from None
                last = exc
            # Network trouble only: a local file that cannot be read or written is not the store's fault.
            except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, ConnectionError,
                    TimeoutError) as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_SECONDS)
        raise UnavailableError(f"object store {self.endpoint} is unavailable: could not {what} {target} "
                               f"in {self.retries} attempts ({type(last).__name__}: {last})")

    def _upload(self, key: str, src: Path) -> None:
        # fput_object sends one PUT, or a multipart upload for large files; either way the object
        # becomes visible only once complete.
        self._call("upload", self.uri_of(key), lambda: self._client.fput_object(self.bucket, self._name(key), str(src)))

    def _download(self, key: str, dest: Path) -> tuple[str, int]:
        def attempt() -> tuple[str, int]:
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                with open(dest, "wb") as out:  # a retry starts the file over
                    writer = _HashingWriter(out)
                    for chunk in response.stream(CHUNK):
                        writer.write(chunk)
            finally:
                response.close()
                response.release_conn()
            return writer.digest.hexdigest(), writer.size

        return self._call("download", self.uri_of(key), attempt)

    def _size(self, key: str) -> int | None:
        def attempt() -> int | None:
            try:
                return self._client.stat_object(self.bucket, self._name(key)).size
            except Exception as exc:
                if getattr(exc, "code", None) in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise

        return self._call("stat", self.uri_of(key), attempt)

    def _delete(self, key: str) -> None:
        self._call("delete", self.uri_of(key), lambda: self._client.remove_object(self.bucket, self._name(key)))

    def _list(self, prefix: str) -> dict[str, int]:
        def attempt() -> dict[str, int]:
            name = self._name(prefix) if prefix else (self.prefix + "/" if self.prefix else None)
            skip = len(self.prefix) + 1 if self.prefix else 0
            objects = self._client.list_objects(self.bucket, prefix=name, recursive=True)
            return {o.object_name[skip:]: o.size for o in objects if not o.is_dir}

        return self._call("list", f"{self.uri}/{prefix}", attempt)


@dataclass(frozen=True)
class StoreConfig(EnvConfig):
    """Where the store is (``SLIMYOLO_STORE``; empty: the local folder ``.slimyolo/store``)."""

    store: str = ""

    VARIABLES: ClassVar[Mapping[str, str]] = {"store": ENV_STORE}


@dataclass(frozen=True)
class S3Config(EnvConfig):
    """How to reach an S3 store: the ``SLIMYOLO_S3_*`` and ``SLIMYOLO_STORE_*`` variables.

    Read only for an ``s3://`` store, so a local store ignores them, as it always has. ``secure``
    stays a string: unset means "from the endpoint's scheme", which a bool cannot say.
    """

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    secure: str = ""
    region: str = ""
    retries: int = 5
    timeout_seconds: float = 30.0

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "endpoint": ENV_S3_ENDPOINT, "access_key": ENV_S3_ACCESS_KEY, "secret_key": ENV_S3_SECRET_KEY,
        "secure": ENV_S3_SECURE, "region": ENV_S3_REGION, "retries": ENV_RETRIES, "timeout_seconds": ENV_TIMEOUT}

    def secure_flag(self) -> bool:
        value = self.secure.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise SlimYoloError(f"{ENV_S3_SECURE}={self.secure!r}: expected true or false")

    def open(self, uri: str) -> S3Store:
        """The S3Store of ``uri`` (``s3://bucket[/prefix]``); configuration errors name the variable."""
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        names = {"endpoint": ENV_S3_ENDPOINT, "access_key": ENV_S3_ACCESS_KEY, "secret_key": ENV_S3_SECRET_KEY}
        missing = [var for name, var in names.items() if not getattr(self, name)]
        if missing:
            raise SlimYoloError(f"the artifact store {uri} needs {', '.join(missing)} in the environment")
        endpoint = self.endpoint.strip().rstrip("/")
        scheme, sep, host = endpoint.partition("://")
        if sep:
            if scheme not in ("http", "https") or not host or "/" in host:
                raise SlimYoloError(f"{ENV_S3_ENDPOINT}={endpoint!r}: expected http://HOST:PORT or https://HOST:PORT")
            secure = scheme == "https"
            if self.secure and self.secure_flag() != secure:
                raise SlimYoloError(f"{ENV_S3_SECURE}={self.secure} contradicts {ENV_S3_ENDPOINT}={endpoint}")
        else:
            if not self.secure:
                raise SlimYoloError(f"{ENV_S3_ENDPOINT}={endpoint!r} has no scheme: write http:// or https://, "
                                    f"or set {ENV_S3_SECURE}=true|false")
            host, secure = endpoint, self.secure_flag()
        return S3Store(host, bucket, prefix.strip("/"), access_key=self.access_key, secret_key=self.secret_key,
                       secure=secure, region=self.region or None, retries=self.retries,
                       timeout_seconds=self.timeout_seconds)


def open_store(uri: str | None = None, env: Mapping[str, str] | None = None) -> Store:
    """The store at ``uri``, or at ``$SLIMYOLO_STORE``, or the local folder ``.slimyolo/store``.

    ``uri`` is a local path, ``file:///path`` or ``s3://bucket[/prefix]``. Configuration errors
    (a missing variable, a malformed endpoint) raise at once, before any request is made.
    """
    env = os.environ if env is None else env
    uri = uri or StoreConfig.from_env(env).store or DEFAULT_LOCAL_STORE
    if uri.startswith("s3://"):
        return S3Config.from_env(env).open(uri)
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise SlimYoloError(f"{ENV_STORE}={uri!r}: file URIs must be local (file:///path)")
        return LocalStore(unquote(parsed.path))
    if "://" in uri:
        raise SlimYoloError(f"{ENV_STORE}={uri!r}: expected a local path, file:///path or s3://bucket/prefix")
    return LocalStore(uri)

