"""The artifact store on both backends: a local folder and a real S3 server (weed server -s3)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.store import MANIFEST, Artifact, LocalStore, S3Store, Store, open_store, validate_key


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    seaweed = request.getfixturevalue("seaweed")
    return open_store(env=seaweed.env(seaweed.new_bucket(), prefix="runs/r1"))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tamper(store: Store, key: str, data: bytes, seaweed=None) -> None:
    """Replace an object behind the store's back (a corrupted or substituted artifact)."""
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        seaweed.client().put_object(store.bucket, f"{store.prefix}/{key}", io.BytesIO(data), len(data))


@pytest.mark.parametrize("key", ["a", "models/yolov4/1/model.xml", "blobs/sha256/" + "0" * 64, "a-b_c.d/e+f=g@h,i"])
def test_valid_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "why"), [
    ("", "non-empty"), ("/etc/passwd", "absolute"), ("a/../b", "'..'"), ("..", "'..'"), ("a//b", "empty"),
    ("a/", "empty"), ("./a", "'.'"), (".hidden/x", "hidden"), ("a\\b", "backslashes"), ("a b", "spaces"),
    ("x" * 1025, "1024 bytes"), ("a/\u00e9", "special"),
])
def test_bad_keys_are_refused_naming_the_field(key, why):
    with pytest.raises(SlimYoloError, match=why) as err:
        validate_key(key, "request.model_name")
    assert str(err.value).startswith("request.model_name: ")


def test_blobs_are_content_addressed_and_verified(store, tmp_path):
    data = os.urandom(100_000)
    src = _write(tmp_path / "w.weights", data)
    ref = store.put_file(src)
    assert ref == Artifact(f"{store.uri}/blobs/sha256/{hashlib.sha256(data).hexdigest()}",
                           hashlib.sha256(data).hexdigest(), len(data))
    assert store.put_file(_write(tmp_path / "copy.bin", data)) == ref  # same content, same blob
    assert store.list_keys() == [f"blobs/sha256/{ref.sha256}"]
    out = store.fetch(ref, tmp_path / "out" / "w.weights")
    assert out.read_bytes() == data


def test_a_download_whose_digest_differs_is_rejected_and_leaves_nothing(store, tmp_path, request):
    seaweed = request.getfixturevalue("seaweed") if isinstance(store, S3Store) else None
    ref = store.put_file(_write(tmp_path / "a.cfg", b"[net]\nwidth=416\n"))
    dest = tmp_path / "dl" / "a.cfg"
    with pytest.raises(SlimYoloError, match=r"cfg: .* has sha256 .*expected .*discarded"):
        store.fetch(replace(ref, sha256="f" * 64), dest, field="cfg")
    assert not dest.exists() and not any(dest.parent.iterdir())

    # The stored object itself is substituted: the reference's digest catches it, and a file
    # already at the destination keeps its content.
    _write(dest, b"previous")
    key = store.key_of(ref.uri)
    _tamper(store, key, b"[net]\nwidth=608\n", seaweed)
    with pytest.raises(SlimYoloError, match="expected " + ref.sha256):
        store.fetch(ref, dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.cfg"]


def test_references_are_checked_before_any_download(store, tmp_path):
    ref = store.put_file(_write(tmp_path / "x", b"x"))
    with pytest.raises(SlimYoloError, match=r"^weights\.uri: 's3://elsewhere/x' is not in the artifact store"):
        store.fetch(replace(ref, uri="s3://elsewhere/x"), tmp_path / "y", field="weights")
    with pytest.raises(SlimYoloError, match=r"^weights\.uri: .*'\.\.'"):
        store.fetch(replace(ref, uri=store.uri + "/blobs/../../x"), tmp_path / "y", field="weights")
    with pytest.raises(SlimYoloError, match=r"^weights\.sha256: sha256 must be 64"):
        store.fetch(replace(ref, sha256="abc"), tmp_path / "y", field="weights")
    with pytest.raises(NotFoundError, match="does not exist"):
        store.fetch(replace(ref, uri=store.uri + "/blobs/sha256/" + "0" * 64), tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_named_keys(store, tmp_path):
    first = store.put("configs/train.yaml", _write(tmp_path / "a.yaml", b"epochs: 1\n"))
    assert first.uri == store.uri + "/configs/train.yaml"
    assert store.exists("configs/train.yaml") and not store.exists("configs/other.yaml")
    second = store.put("configs/train.yaml", _write(tmp_path / "b.yaml", b"epochs: 2\n"))
    assert store.fetch(second, tmp_path / "c.yaml").read_bytes() == b"epochs: 2\n"
    with pytest.raises(SlimYoloError, match="expected"):
        store.fetch(first, tmp_path / "d.yaml")  # an old reference no longer matches the key
    with pytest.raises(SlimYoloError, match=r"'\.\.'"):
        store.put("../escape", tmp_path / "a.yaml")


def test_trees_are_listed_only_when_complete_and_downloaded_verified(store, tmp_path, request):
    seaweed = request.getfixturevalue("seaweed") if isinstance(store, S3Store) else None
    version = tmp_path / "ir"
    files = {"model.xml": b"<net/>", "model.bin": os.urandom(3000), "extra/labels.txt": b"car\nperson\n"}
    for rel, data in files.items():
        _write(version / rel, data)
    refs = store.put_tree("models/yolov4-tiny/1", version)
    assert sorted(refs) == sorted(files)
    assert refs["model.bin"].sha256 == hashlib.sha256(files["model.bin"]).hexdigest()

    # An interrupted upload (files but no manifest) is invisible.
    store.put("models/yolov4-tiny/2/model.xml", version / "model.xml")
    assert store.list_trees("models") == ["models/yolov4-tiny/1"]
    with pytest.raises(NotFoundError, match=f"no complete tree.*{MANIFEST}"):
        store.get_tree("models/yolov4-tiny/2", tmp_path / "v2")
    assert not (tmp_path / "v2").exists()

    got = store.get_tree("models/yolov4-tiny/1", tmp_path / "v1")
    assert got == refs
    assert {p.relative_to(tmp_path / "v1").as_posix(): p.read_bytes()
            for p in (tmp_path / "v1").rglob("*") if p.is_file()} == files

    with pytest.raises(SlimYoloError, match="immutable"):
        store.put_tree("models/yolov4-tiny/1", version)

    _tamper(store, "models/yolov4-tiny/1/model.bin", b"x" * 3000, seaweed)
    with pytest.raises(SlimYoloError, match=r"model\.bin.*expected"):
        store.get_tree("models/yolov4-tiny/1", tmp_path / "v1-again")
    assert not (tmp_path / "v1-again").exists()


def test_uploads_are_never_visible_half_written(store, tmp_path):
    """A reader polling during an upload sees no object or the whole one (S3: a multipart upload)."""
    data = os.urandom(12 * 1024 * 1024)  # above the 5 MiB part size: S3 uploads it in parts
    src = _write(tmp_path / "big.bin", data)
    seen: list[int | None] = []
    done = threading.Event()

    def upload() -> None:
        try:
            store.put("big/weights.bin", src)
        finally:
            done.set()

    thread = threading.Thread(target=upload)
    thread.start()
    while not done.is_set():
        seen.append(store.size("big/weights.bin"))
    thread.join()
    assert seen and set(seen) <= {None, len(data)}
    assert store.list_keys("big") == ["big/weights.bin"]


def test_open_store_configuration_errors(tmp_path):
    with pytest.raises(SlimYoloError, match="needs SLIMYOLO_S3_ENDPOINT, SLIMYOLO_S3_SECRET_KEY"):
        open_store("s3://bucket/p", env={"SLIMYOLO_S3_ACCESS_KEY": "k"})
    base = {"SLIMYOLO_S3_ACCESS_KEY": "k", "SLIMYOLO_S3_SECRET_KEY": "s"}
    with pytest.raises(SlimYoloError, match=r"has no scheme.*SLIMYOLO_S3_SECURE"):
        open_store("s3://bucket", env={**base, "SLIMYOLO_S3_ENDPOINT": "minio:9000"})
    with pytest.raises(SlimYoloError, match="expected http://HOST:PORT"):
        open_store("s3://bucket", env={**base, "SLIMYOLO_S3_ENDPOINT": "ftp://minio:9000"})
    with pytest.raises(SlimYoloError, match="contradicts"):
        open_store("s3://bucket", env={**base, "SLIMYOLO_S3_ENDPOINT": "https://m:9000", "SLIMYOLO_S3_SECURE": "0"})
    with pytest.raises(SlimYoloError, match="SLIMYOLO_S3_SECURE='maybe': expected true or false"):
        open_store("s3://bucket", env={**base, "SLIMYOLO_S3_ENDPOINT": "m:9000", "SLIMYOLO_S3_SECURE": "maybe"})
    with pytest.raises(SlimYoloError, match="not a valid bucket name"):
        open_store("s3://B_/x", env={**base, "SLIMYOLO_S3_ENDPOINT": "http://m:9000"})
    with pytest.raises(SlimYoloError, match="SLIMYOLO_STORE_RETRIES='many': expected int"):
        open_store("s3://bucket", env={**base, "SLIMYOLO_S3_ENDPOINT": "http://m:9000",
                                       "SLIMYOLO_STORE_RETRIES": "many"})
    with pytest.raises(SlimYoloError, match="expected a local path, file:///path or s3://"):
        open_store("gs://bucket", env={})
    s3 = open_store(env={**base, "SLIMYOLO_STORE": "s3://bucket/a/b", "SLIMYOLO_S3_ENDPOINT": "m:9000",
                         "SLIMYOLO_S3_SECURE": "true"})
    assert isinstance(s3, S3Store) and s3.uri == "s3://bucket/a/b"
    local = open_store(env={"SLIMYOLO_STORE": (tmp_path / "s").as_uri()})
    assert isinstance(local, LocalStore) and local.root == tmp_path / "s"
    assert open_store(str(tmp_path / "t"), env={"SLIMYOLO_STORE": "s3://ignored"}).uri == (tmp_path / "t").as_uri()


def test_default_store_is_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store(env={})
    assert isinstance(store, LocalStore) and store.root == tmp_path / ".slimyolo" / "store"


def test_s3_signatures_are_checked(seaweed, tmp_path):
    bucket = seaweed.new_bucket()
    good = open_store(env=seaweed.env(bucket))
    ref = good.put_file(_write(tmp_path / "f", b"data"))
    for var in ("SLIMYOLO_S3_SECRET_KEY", "SLIMYOLO_S3_ACCESS_KEY"):
        bad = open_store(env={**seaweed.env(bucket), var: "wrong"})
        with pytest.raises(SlimYoloError, match=r"refused the credentials.*SLIMYOLO_S3_SECRET_KEY"):
            bad.fetch(ref, tmp_path / "g")
        with pytest.raises(SlimYoloError, match="refused the credentials"):
            bad.put_file(tmp_path / "f")
    assert not (tmp_path / "g").exists()
    missing = open_store(env=seaweed.env("no-such-bucket"))
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist"):
        missing.list_keys()


def test_store_outage_is_unavailable_and_retries_ride_it_out(tmp_path):
    """Kill the S3 server: operations fail with UnavailableError; restart it: they work again.

    And an operation that starts while the server is down succeeds if the server comes back
    within its retries (exponential backoff).
    """
    from seaweed import SeaweedServer

    from slimyolo.errors import UnavailableError

    server = SeaweedServer(tmp_path / "weed").start()
    try:
        bucket = server.new_bucket()
        quick = open_store(env=server.env(bucket, SLIMYOLO_STORE_RETRIES="2"))
        ref = quick.put_file(_write(tmp_path / "w", b"weights"))
        server.kill()
        with pytest.raises(UnavailableError, match=r"object store 127.0.0.1:\d+ is unavailable.*in 2 attempts"):
            quick.fetch(ref, tmp_path / "out")
        with pytest.raises(UnavailableError):
            quick.put_file(_write(tmp_path / "v", b"other"))
        with pytest.raises(UnavailableError):
            quick.list_trees("models")
        assert not (tmp_path / "out").exists()

        patient = open_store(env=server.env(bucket, SLIMYOLO_STORE_RETRIES="10"))
        result: dict[str, object] = {}

        def fetch() -> None:
            try:
                result["path"] = patient.fetch(ref, tmp_path / "late")
            except Exception as exc:
                result["error"] = exc

        thread = threading.Thread(target=fetch)
        thread.start()  # retries against the dead server while it restarts (same ports, same data)
        server.start()
        thread.join(timeout=300)
        assert result == {"path": tmp_path / "late"}
        assert (tmp_path / "late").read_bytes() == b"weights"
        assert quick.fetch(ref, tmp_path / "out").read_bytes() == b"weights"
    finally:
        server.stop()


def test_a_local_listing_skips_files_deleted_while_it_walks(tmp_path, monkeypatch):
    """delete_tree in another process may remove a file between os.walk naming it and the listing's stat: the
    listing then leaves it out (as an S3 listing made a moment later would), rather than failing the reader."""
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "tree"
    src.mkdir()
    (src / "kept.txt").write_bytes(b"kept")
    store.put_tree("runs/cut/checkpoints/epoch-00001", src)
    real_walk = os.walk

    def walk_naming_a_vanished_file(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            yield dirpath, dirnames, [*filenames, "best.pt"] if "epoch-00001" in dirpath else filenames

    monkeypatch.setattr("slimyolo.store.os.walk", walk_naming_a_vanished_file)
    keys = store.list_keys("runs/cut")
    assert "runs/cut/checkpoints/epoch-00001/kept.txt" in keys
    assert not any(k.endswith("best.pt") for k in keys)
    assert store.list_trees("runs/cut/checkpoints") == ["runs/cut/checkpoints/epoch-00001"]
    assert store.exists("runs/cut/checkpoints/epoch-00001/kept.txt")
    assert not store.exists("runs/cut/checkpoints")  # a prefix (a folder here) is not a key
