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


def _find_single_data_file(folder: Path) -> Path:
    found = sorted(folder.glob("*.data"))
    if len(found) != 1:
        what = "no .data file" if not found else f"{len(found)} .data files ({', '.join(p.name for p in found)})"
        raise SlimYoloError(f"{folder}: a data set folder must hold exactly one .data file; found {what}")
    return found[0]


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


def _list_images(entry: str, key: str, data_path: Path, line: int) -> list[Path]:
    base = data_path.parent
    target = _resolve(entry, base, Path.cwd())
    if target.is_dir():
        return sorted(p.resolve() for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not target.is_file():
        raise NotFoundError(f"{data_path}:{line}: '{key}' names {entry!r}, which does not exist ({target})")
    if target.suffix.lower() in IMAGE_SUFFIXES:
        return [target]
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimYoloError(f"{target}: cannot read the image list of '{key}': {exc}") from None
    return [_resolve(s, base, target.parent, Path.cwd()) for s in (raw.strip() for raw in lines)
            if s and not s.startswith("#")]


def read_data_file(path: str | Path) -> DataSpec:
    """Read a darknet ``.data`` file (or a folder holding exactly one) into a :class:`DataSpec`.

    ``names`` must list as many names as ``classes`` says (when both are given; either one
    alone is enough). ``valid`` may be absent (training without evaluation); ``train`` may
    not. Errors name the file and line.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = _find_single_data_file(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such data file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlimYoloError(f"{path}: cannot read: {exc}") from None
    path = path.resolve()
    entries: dict[str, tuple[str, int]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise SlimYoloError(f"{path}:{n}: expected 'key = value', got {raw.strip()!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        entries[key] = (value, n)

    names: list[str] = []
    if "names" in entries:
        value, n = entries["names"]
        names_path = _resolve(value, path.parent, Path.cwd())
        try:
            names = [s.strip() for s in names_path.read_text(encoding="utf-8").splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise SlimYoloError(f"{path}:{n}: cannot read the names file {names_path}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
    if "classes" in entries:
        value, n = entries["classes"]
        try:
            classes = int(value)
        except ValueError:
            raise SlimYoloError(f"{path}:{n}: 'classes' must be an integer, got {value!r}") from None
        if classes < 1:
            raise SlimYoloError(f"{path}:{n}: 'classes' must be at least 1, got {classes}")
        if names and len(names) != classes:
            raise SlimYoloError(f"{path}:{entries['names'][1]}: the names file lists {len(names)} names "
                                f"but classes = {classes} (line {n})")
    elif names:
        classes = len(names)
    else:
        raise SlimYoloError(f"{path}: needs 'classes' or 'names'")
    if not names:
        names = [str(i) for i in range(classes)]

    if "train" not in entries:
        raise SlimYoloError(f"{path}: missing 'train' (an image list file or a folder of images)")
    train = _list_images(entries["train"][0], "train", path, entries["train"][1])
    valid_entry = entries.get("valid") or entries.get("val") or entries.get("test")
    valid = _list_images(valid_entry[0], "valid", path, valid_entry[1]) if valid_entry else []
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
