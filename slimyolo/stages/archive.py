"""A data set's tar archive: made reproducibly (:func:`pack`), extracted safely (:func:`extract`; gzip, bzip2
and xz allowed), with the standard library only.

A data set archive comes from a request, so it is hostile until proven otherwise. Its members
are written one by one by this module, never by ``TarFile.extract``: the rules are the same on
every Python the project supports (``tarfile``'s ``filter=`` exists from 3.11.4 only, and Debian
12's Python is 3.11.2), and the folder that comes out holds only plain folders and files, so no
later path lookup in it can be led elsewhere by a link. The rules:

- a member's name is relative and has no ``..`` segment (``./`` is dropped);
- folders and regular files are written (mode 0644/0755 under the umask, owned by this
  process: no set-id bits, no owner, no times from the archive);
- a symbolic or hard link becomes a copy of the regular file it names, which must be an
  earlier member of the archive; links to folders, absolute links and links that lead out
  of the archive are refused;
- devices, FIFOs, sparse files and anything else are refused, and so is a name given twice;
- at most ``max_members`` members and ``max_bytes`` bytes written in all (a decompression
  bomb stops at the limit, before its bytes are written).

It imports nothing outside the standard library and ``slimyolo.errors``, so a test can run it
under the oldest Python the project declares without the project's dependencies.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path

from slimyolo.errors import SlimYoloError

DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_BYTES = 32 << 30  # 32 GiB


def pack(folder: Path, archive: Path) -> None:
    """A gzip tar of the data set folder's contents (what a DataRef's ``archive`` carries).

    Reproducible: the same files give the same bytes (no times, owners or gzip timestamp), so
    the stages' specs, which name the archive by its sha256, are the same when a run continues.
    """
    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:  # JPEGs do not compress; be quick
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name, filter=plain)


class ArchiveError(SlimYoloError):
    """An archive that breaks a rule of :func:`extract` (the message names the member)."""


def _member_path(name: str, where: str) -> str:
    """``name`` normalised to a relative POSIX path with no ``..`` (``""`` for the archive's root)."""
    if "\x00" in name or name.startswith("/"):
        raise ArchiveError(f"{where}: member {name!r} is an absolute path; members must be relative to the data set")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{where}: member {name!r} leads out of the data set's folder ('..')")
    return "/".join(parts)


def _link_target(member: tarfile.TarInfo, name: str, where: str) -> str:
    """The archive path a link member names: relative to its folder (symbolic) or to the root (hard)."""
    target = member.linkname
    if target.startswith("/"):
        raise ArchiveError(f"{where}: member {member.name!r} links to the absolute path {target!r}; links must "
                           "stay inside the data set")
    joined = posixpath.join(posixpath.dirname(name), target) if member.issym() else target
    normal = posixpath.normpath(joined)
    if normal == ".." or normal.startswith("../"):
        raise ArchiveError(f"{where}: member {member.name!r} links to {target!r}, outside the data set's folder")
    return "" if normal == "." else normal


def extract(archive: str | Path, dest: str | Path, *, max_members: int = DEFAULT_MAX_MEMBERS,
            max_bytes: int = DEFAULT_MAX_BYTES, where: str = "archive") -> int:
    """Extract ``archive`` into the new folder ``dest`` by the rules above; returns the bytes written.

    Errors are :class:`ArchiveError` (an unreadable archive too) whose message starts with
    ``where`` (the request field) and names the member at fault. ``dest`` may hold part of the
    archive after an error: the caller removes it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True)
    files: dict[str, Path] = {}  # regular files written so far, by archive path (what links may name)
    members = written = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                members += 1
                if members > max_members:
                    raise ArchiveError(f"{where}: more than {max_members} members (SLIMYOLO_ARCHIVE_MAX_MEMBERS)")
                name = _member_path(member.name, where)
                try:
                    written += _write(tar, member, name, dest, files, max_bytes - written, where)
                except OSError as exc:  # not str(exc): its file name is a server-local path
                    raise ArchiveError(f"{where}: member {member.name!r} cannot be written "
                                       f"({exc.strerror or type(exc).__name__})") from None
    except tarfile.TarError as exc:
        raise ArchiveError(f"{where}: not a readable tar archive of a data set ({exc})") from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # a truncated or corrupt compressed stream
        raise ArchiveError(f"{where}: not a readable tar archive of a data set ({type(exc).__name__})") from None
    return written


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, dest: Path, files: dict[str, Path],
           room: int, where: str) -> int:
    """Write one member (already named safely) under ``dest``; returns the bytes written."""
    if member.isdir():
        (dest / name).mkdir(parents=True, exist_ok=True)
        return 0
    if not name:
        raise ArchiveError(f"{where}: member {member.name!r} is not a file name")
    if name in files:
        raise ArchiveError(f"{where}: member {member.name!r} appears twice")
    source: Path | None = None
    if member.issym() or member.islnk():
        target = _link_target(member, name, where)
        source = files.get(target)
        if source is None:
            raise ArchiveError(f"{where}: member {member.name!r} links to {member.linkname!r}, which is not a "
                               "regular file earlier in the archive (a link must name one)")
        size = source.stat().st_size
    elif member.isreg() and not member.issparse():
        size = member.size
    else:
        raise ArchiveError(f"{where}: member {member.name!r} is not a regular file, folder or link (devices, "
                           "FIFOs and sparse files are refused)")
    if size > room:
        raise ArchiveError(f"{where}: the data set is larger than the limit on extracted bytes "
                           "(SLIMYOLO_ARCHIVE_MAX_BYTES)")
    path = dest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        if source is None:
            data = tar.extractfile(member)
            assert data is not None  # a regular member always has a data stream
            shutil.copyfileobj(data, out, 1 << 20)
        else:
            with open(source, "rb") as data:
                shutil.copyfileobj(data, out, 1 << 20)
    files[name] = path
    return size
