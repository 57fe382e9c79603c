"""``slimyolo store put|ls|get``: place files where a stage spec can name them, and fetch results.

The store is the one of the environment (``SLIMYOLO_STORE``, and ``SLIMYOLO_S3_*`` for S3), the
same the stages and services use. Everything is published as a complete tree
(:meth:`slimyolo.store.Store.put_files`: every file, then its ``SHA256SUMS``), because that is
what a spec names: a data set by its tree's key (``data: inputs/data``), a file by the key of a
file inside a tree (``cfg: inputs/model/yolov4-tiny.cfg``). So::

    slimyolo store put yolov4-tiny.cfg inputs/model     # prints inputs/model/yolov4-tiny.cfg
    slimyolo store put data/ inputs/data                 # prints inputs/data
    slimyolo store ls -l inputs
    slimyolo store get runs/prune/pruned.weights .       # one file of a tree, verified

Trees are immutable: ``put`` refuses a key that holds a tree, lies inside one or above one.
Downloads are verified against the manifest's sha256 and never overwrite a local file or folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.store import Store, folder_files, subtree, validate_key

PROGRESS_SECONDS = 2.0  # at most one progress line per interval while uploading

_PUT_HELP = """\
Publish LOCAL as one complete tree under KEY.

A folder becomes the tree KEY with the same relative paths: name it in a spec by KEY (a data
set: "data: KEY") or name its files as KEY/<path>. A file becomes a tree holding that one file
under its own name: "store put model.cfg inputs/model" makes the key inputs/model/model.cfg,
which is how a spec names it ("cfg: inputs/model/model.cfg"); put several files in one folder
to publish them together. Prints the keys to name in a spec.

Trees are immutable: a KEY that already holds a tree, lies inside one or holds trees below it
is refused; choose a new key (a new version)."""

_GET_HELP = """\
Download KEY into LOCAL, every file verified against the sha256 of its tree's manifest.

KEY is a complete tree or a folder inside one (LOCAL: a new folder), or a file inside one
(LOCAL: a new file). An existing folder, or any LOCAL ending in "/", means "into": the
download is written as LOCAL/<last segment of KEY> (the folder is created when missing), as cp
does. Nothing local is overwritten, and a download that fails leaves nothing behind."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="put, list and get files in the artifact store ($SLIMYOLO_STORE)",
                       description="The artifact store of SLIMYOLO_STORE (a local folder, file:///path or "
                                   "s3://bucket/prefix with SLIMYOLO_S3_*), as the stages see it.")
    cmds = p.add_subparsers(dest="store_command", required=True, metavar="COMMAND")

    q = cmds.add_parser("put", help="publish a file or folder as a complete tree", description=_PUT_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("local", type=Path, metavar="LOCAL", help="a file or a folder")
    q.add_argument("key", metavar="KEY", help="the new tree's key, e.g. inputs/model or inputs/data")
    q.set_defaults(func=_put)

    q = cmds.add_parser("ls", help="list the complete trees under a prefix",
                        description="List the complete trees under PREFIX (all of them without one); "
                                    "with -l, each tree's files and their sizes. A PREFIX inside a tree "
                                    "lists the files it names.")
    q.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="a key prefix, e.g. inputs or runs/r1")
    q.add_argument("-l", "--long", action="store_true", help="also list each tree's files with their sizes")
    q.set_defaults(func=_ls)

    q = cmds.add_parser("get", help="download a tree, or a file or folder of one, verified",
                        description=_GET_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("key", metavar="KEY", help="a tree, or a file or folder inside one")
    q.add_argument("local", metavar="LOCAL", help="where to write it (an existing folder, or one ending in /: "
                                                 "into it, under the key's last segment)")
    q.set_defaults(func=_get)


def _key(value: str, field: str) -> str:
    return validate_key(value.rstrip("/") or value, field)


def _open() -> Store:
    from slimyolo.store import open_store

    return open_store()


class _Uploads:
    """Progress of an upload on stderr: a line every PROGRESS_SECONDS, and one at the end."""

    def __init__(self, key: str, files: int, total: int) -> None:
        self.key, self.files, self.total = key, files, total
        self.done = self.sent = 0
        self.start = self.last = time.monotonic()

    def __call__(self, rel: str, size: int) -> None:
        self.done, self.sent = self.done + 1, self.sent + size
        now = time.monotonic()
        if self.done < self.files and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"{self.key}: {self.done}/{self.files} files, {_size(self.sent)} of {_size(self.total)}",
                  file=sys.stderr, flush=True)

    def finish(self, uri: str) -> None:
        seconds = time.monotonic() - self.start
        print(f"published {uri}: {self.files} file(s), {_size(self.total)} in {seconds:.1f} s", file=sys.stderr)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    value, units = n / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]}"


def _local_files(local: Path) -> dict[str, Path]:
    """The files to publish from LOCAL (a folder, or one file), by their path in the tree."""
    if local.is_file():
        return {validate_key(local.name, f"{local}: file name"): local}
    if not local.exists():
        raise NotFoundError(f"{local}: no such file or folder")
    files = folder_files(local)
    if not files:
        raise SlimYoloError(f"{local}: the folder holds no file to publish")
    return files


def _check_new_tree(store: Store, key: str) -> None:
    """Refuse a KEY that holds a complete tree, lies inside one, or holds trees below it."""
    located = store.tree_of(key)
    if located is not None:
        prefix, _ = located
        if prefix == key:
            raise SlimYoloError(f"KEY: {store.uri_of(key)} already holds a complete tree; trees are immutable, "
                                "put under a new key (a new version)")
        raise SlimYoloError(f"KEY: {key} lies inside the complete tree {store.uri_of(prefix)}; trees are "
                            "immutable, put under a key outside it")
    below = store.list_trees(key)
    if below:
        more = f" and {len(below) - 3} more" if len(below) > 3 else ""
        raise SlimYoloError(f"KEY: {store.uri_of(key)} holds the complete tree(s) {', '.join(below[:3])}{more}; "
                            "a tree cannot hold other trees, put under another key")


def _put(args: argparse.Namespace) -> int:
    key = _key(args.key, "KEY")
    try:
        files = _local_files(args.local)
        store = _open()
        _check_new_tree(store, key)
        progress = _Uploads(key, len(files), sum(p.stat().st_size for p in files.values()))
        store.put_files(key, files, progress)
        progress.finish(store.uri_of(key))
    except OSError as exc:
        raise SlimYoloError(f"{exc.filename or args.local}: {exc.strerror or exc}") from None
    if args.local.is_dir():
        print(key)
    else:
        print(f"{key}/{next(iter(files))}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    prefix = _key(args.prefix, "PREFIX") if args.prefix else ""
    store = _open()
    trees = store.list_trees(prefix)
    if trees:
        for tree in trees:
            if not args.long:
                print(tree)
                continue
            files = store.tree_files(tree)
            print(f"{tree}  ({len(files)} file(s), {_size(sum(a.size_bytes for a in files.values()))})")
            for rel, artifact in files.items():
                print(f"{artifact.size_bytes:>15,}  {tree}/{rel}")
        return 0
    located = store.tree_of(prefix) if prefix else None
    if located is None:
        if prefix:
            raise NotFoundError(f"PREFIX: no complete tree at or under {store.uri_of(prefix)}")
        return 0  # an empty store
    tree, rel = located
    files = store.tree_files(tree)
    named = {rel: files[rel]} if rel in files else {f"{rel}/{r}": a for r, a in subtree(files, rel).items()}
    if not named:
        raise NotFoundError(f"PREFIX: the tree {store.uri_of(tree)} has no file or folder {rel!r}")
    for name, artifact in named.items():
        print(f"{artifact.size_bytes:>15,}  {tree}/{name}" if args.long else f"{tree}/{name}")
    return 0


def _destination(local: str, key: str) -> Path:
    """Where ``store get KEY LOCAL`` writes: LOCAL, or LOCAL/<last segment of KEY> when LOCAL is an
    existing folder or ends with a slash ("into", as cp does; the download creates a missing folder)."""
    path = Path(local)
    if local.endswith(("/", os.sep)) or path.is_dir():
        return path / key.rsplit("/", 1)[-1]
    return path


def _get(args: argparse.Namespace) -> int:
    key = _key(args.key, "KEY")
    store = _open()
    located = store.tree_of(key)
    if located is None:
        raise NotFoundError(f"KEY: {store.uri_of(key)} is not a complete tree nor in one "
                            "(`slimyolo store ls` lists the trees)")
    tree, rel = located
    files = store.tree_files(tree)
    local = _destination(str(args.local), key)
    made = None if local.parent.exists() else local.parent  # "into" a folder the download creates
    try:
        if rel in files:
            if local.exists():
                raise SlimYoloError(f"{local} already exists; give a new file or a folder to download {key} into")
            store.fetch(files[rel], local, f"KEY {key}")
            done = files[rel].size_bytes
        else:
            wanted = subtree(files, rel)
            if not wanted:
                raise NotFoundError(f"KEY: the tree {store.uri_of(tree)} has no file or folder {rel!r}")
            store.get_files(wanted, local, store.uri_of(key))
            done = sum(a.size_bytes for a in wanted.values())
    except OSError as exc:
        raise SlimYoloError(f"{exc.filename or local}: {exc.strerror or exc}") from None
    finally:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()  # a failed download leaves nothing behind
    print(f"downloaded {store.uri_of(key)} ({_size(done)}, sha256 verified)", file=sys.stderr)
    print(local)
    return 0
