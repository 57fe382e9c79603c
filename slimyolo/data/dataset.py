"""Darknet-layout data sets: the ``.data`` file, image lists, label files, images.

A data set is described by a darknet ``.data`` file::

    classes = 2
    train   = train.txt        # a list file (one image path a line) or a folder of images
    valid   = valid.txt
    names   = synth.names      # one class name a line

Relative paths in the ``.data`` file, and relative image paths in the list files, are
resolved against the folder of the ``.data`` file first (so a data set folder can be moved
as a whole), then against the list file's folder and the working directory (darknet's own
rule, for data sets laid out for the darknet binary). Each image has one label file, found
by darknet's rule: ``.../images/...`` (or ``.../JPEGImages/...``) becomes ``.../labels/...``
and the extension becomes ``.txt``; each line is ``class cx cy w h`` normalised to [0, 1].

This module needs NumPy and OpenCV only (no torch): the conversion engineer reads calibration
images with it inside the converter image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from slimyolo.errors import NotFoundError, SlimYoloError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DataSpec:
    """What a ``.data`` file says, with every image path resolved."""

    path: Path  # the .data file
    classes: int
    names: list[str]
    train: list[Path]
    valid: list[Path]

    def split(self, name: str) -> list[Path]:
        """The image list of ``name`` ("train" or "valid"/"val"/"test"); empty is an error."""
        key = {"val": "valid", "test": "valid"}.get(name, name)
        if key not in ("train", "valid"):
            raise SlimYoloError(f"unknown split {name!r}: expected 'train' or 'valid'")
        images = self.train if key == "train" else self.valid
        if not images:
            raise SlimYoloError(f"{self.path}: the '{key}' split lists no images")
        return images


@dataclass
class LabelReport:
    """Problems found while reading label files, for the end-of-scan summary."""

    bad_lines: list[str] = field(default_factory=list)  # "file:line: reason"
    missing: int = 0  # images without a label file (treated as background images)

    def summary(self) -> str:
        return f"{len(self.bad_lines)} malformed label lines skipped, {self.missing} images without a label file"


def _find_single_data_file(folder: Path, scope: _Scope) -> Path:
    found = sorted(folder.glob("*.data"))
    if len(found) != 1:
        what = "no .data file" if not found else f"{len(found)} .data files ({', '.join(p.name for p in found)})"
        raise SlimYoloError(f"{scope.show(folder)}: a data set folder must hold exactly one .data file; found {what}")
    return found[0]


@dataclass(frozen=True)
class _Scope:
    """Where a data set's paths may lead: anywhere (a user's own files), or only inside ``root``.

    A data set that arrived in a request or an archive (``root`` set) names its files by
    relative paths that stay inside its folder once symbolic links are resolved; the working
    directory is never searched; every image its lists name must exist (so that any later
    reader of the same ``.data`` file, without ``root``, finds the same files); and errors show
    paths relative to ``root``, never the server's own paths.
    """

    root: Path | None = None

    def show(self, path: Path) -> str:
        """``path`` as an error shows it: relative to ``root`` when there is one."""
        if self.root is None:
            return str(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else "(outside)"

    def resolve(self, entry: str, where: str, *bases: Path) -> Path:
        """The first existing candidate of ``entry`` under ``bases`` (then the working directory, for a user's own
        data set), else the candidate under the first base."""
        if self.root is None:
            return _resolve(entry, *bases, Path.cwd())
        if entry.startswith("~") or Path(entry).is_absolute():
            raise SlimYoloError(f"{where} names {entry!r}, an absolute path; a data set names its files relative to "
                                "its folder")
        candidates = [(base / entry).resolve() for base in bases]
        if not all(c.is_relative_to(self.root) for c in candidates):
            raise SlimYoloError(f"{where} names {entry!r}, which leads outside the data set's folder")
        return next((c for c in candidates if c.exists()), candidates[0])

    def check_image(self, image: Path, where: str, entry: str) -> None:
        """An image of a checked data set exists, and its label file lies in the data set too."""
        if self.root is None:
            return
        if not image.is_relative_to(self.root):
            raise SlimYoloError(f"{where}: {entry!r} leads outside the data set's folder")
        if not image.is_file():
            raise NotFoundError(f"{where} names {entry!r}, which is not a file of the data set")
        if not label_path(image).resolve().is_relative_to(self.root):
            raise SlimYoloError(f"{where}: the label file of {entry!r} would lie outside the data set's folder "
                                "(darknet's rule: the last images/ folder of its path becomes labels/)")


def _resolve(entry: str, *bases: Path) -> Path:
    """The first existing candidate of a relative ``entry`` under ``bases`` (else under the first base)."""
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        candidate = base / p
        if candidate.exists():
            return candidate.resolve()
    return (bases[0] / p).resolve()


def _list_images(entry: str, key: str, data_path: Path, line: int, scope: _Scope) -> list[Path]:
    base = data_path.parent
    where = f"{scope.show(data_path)}:{line}: '{key}'"
    target = scope.resolve(entry, where, base)
    if target.is_dir():
        images = sorted(p.resolve() for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images:
            scope.check_image(image, where, scope.show(image))
        return images
    if not target.is_file():
        raise NotFoundError(f"{where} names {entry!r}, which does not exist ({scope.show(target)})")
    if target.suffix.lower() in IMAGE_SUFFIXES:
        scope.check_image(target, where, entry)
        return [target]
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimYoloError(f"{scope.show(target)}: cannot read the image list of '{key}': "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    images = []
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if s and not s.startswith("#"):
            at = f"{scope.show(target)}:{n}: an image of '{key}'"
            images.append(scope.resolve(s, at, base, target.parent))
            scope.check_image(images[-1], at, s)
    return images


def read_data_file(path: str | Path, root: str | Path | None = None) -> DataSpec:
    """Read a darknet ``.data`` file (or a folder holding exactly one) into a :class:`DataSpec`.

    ``names`` must list as many names as ``classes`` says (when both are given; either one
    alone is enough). ``valid`` may be absent (training without evaluation); ``train`` may
    not. Errors name the file and line.

    ``root``: the data set arrived in a request or an archive, and must stay inside this
    folder (see :class:`_Scope`); a user's own data set (the CLI) may name any path.
    """
    scope = _Scope(Path(root).resolve() if root is not None else None)
    path = Path(path).expanduser()
    if path.is_dir():
        path = _find_single_data_file(path, scope)
    if scope.root is not None and not path.resolve().is_relative_to(scope.root):
        raise SlimYoloError(f"{path.name}: the .data file leads outside the data set's folder")
    if not path.is_file():
        raise NotFoundError(f"{scope.show(path)}: no such data file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimYoloError(f"{scope.show(path)}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    path = path.resolve()
    shown = scope.show(path)
    entries: dict[str, tuple[str, int]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise SlimYoloError(f"{shown}:{n}: expected 'key = value', got {raw.strip()!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        entries[key] = (value, n)

    names: list[str] = []
    if "names" in entries:
        value, n = entries["names"]
        names_path = scope.resolve(value, f"{shown}:{n}: 'names'", path.parent)
        try:
            names = [s.strip() for s in names_path.read_text(encoding="utf-8").splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise SlimYoloError(f"{shown}:{n}: cannot read the names file {scope.show(names_path)}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
    if "classes" in entries:
        value, n = entries["classes"]
        try:
            classes = int(value)
        except ValueError:
            raise SlimYoloError(f"{shown}:{n}: 'classes' must be an integer, got {value!r}") from None
        if classes < 1:
            raise SlimYoloError(f"{shown}:{n}: 'classes' must be at least 1, got {classes}")
        if names and len(names) != classes:
            raise SlimYoloError(f"{shown}:{entries['names'][1]}: the names file lists {len(names)} names "
                                f"but classes = {classes} (line {n})")
    elif names:
        classes = len(names)
    else:
        raise SlimYoloError(f"{shown}: needs 'classes' or 'names'")
    if not names:
        names = [str(i) for i in range(classes)]

    if "train" not in entries:
        raise SlimYoloError(f"{shown}: missing 'train' (an image list file or a folder of images)")
    train = _list_images(entries["train"][0], "train", path, entries["train"][1], scope)
    valid_entry = entries.get("valid") or entries.get("val") or entries.get("test")
    valid = _list_images(valid_entry[0], "valid", path, valid_entry[1], scope) if valid_entry else []
    return DataSpec(path=path, classes=classes, names=names, train=train, valid=valid)


def label_path(image: str | Path) -> Path:
    """Darknet's rule: the last ``/images/`` (or ``/JPEGImages/``) becomes ``/labels/``, extension ``.txt``."""
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(image: str | Path, classes: int, report: LabelReport | None = None) -> np.ndarray:
    """The labels of ``image`` as a (K, 5) float32 array ``class, cx, cy, w, h`` (normalised).

    A malformed line (not five numbers, a class outside 0..classes-1, a centre outside
    [0, 1], a width or height outside (0, 1]) is skipped with a warning naming the file and
    line, and recorded in ``report``; the image's other labels are kept. A missing label
    file means an image without objects.
    """
    path = label_path(image)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if report is not None:
            report.missing += 1
        return np.zeros((0, 5), np.float32)
    except (OSError, UnicodeDecodeError) as exc:
        _bad(report, f"{path}: cannot read the label file ({exc}); the image is used without objects")
        return np.zeros((0, 5), np.float32)
    rows = []
    for n, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        problem = _check_label(parts, classes)
        if problem:
            _bad(report, f"{path}:{n}: {problem}; line skipped")
            continue
        rows.append([float(v) for v in parts])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _check_label(parts: list[str], classes: int) -> str | None:
    if len(parts) != 5:
        return f"expected 'class cx cy w h', got {len(parts)} fields"
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return f"not a number in {' '.join(parts)!r}"
    if not all(np.isfinite(values)):
        return "NaN or infinite value"
    cls, cx, cy, w, h = values
    if cls != int(cls) or not 0 <= cls < classes:
        return f"class {parts[0]} is not an integer in 0..{classes - 1}"
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        return f"centre ({cx}, {cy}) is outside [0, 1] (labels must be normalised)"
    if not (0 < w <= 1 and 0 < h <= 1):
        return f"size ({w}, {h}) is outside (0, 1] (labels must be normalised)"
    return None


def _bad(report: LabelReport | None, message: str) -> None:
    log.warning("%s", message)
    if report is not None:
        report.bad_lines.append(message)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3); an unreadable or corrupt file is a SlimYoloError naming it."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise SlimYoloError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        raise SlimYoloError(f"{path}: cannot decode image (corrupt, empty or not an image)")
    return img
