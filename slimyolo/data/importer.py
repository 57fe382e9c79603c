"""``slimyolo data import``: a user's annotated photos (Pascal VOC XML, COCO JSON, YOLO txt) → a darknet data set.

The data set written is the layout :mod:`slimyolo.data.dataset` reads::

    DIR/<name>.data        classes, train, valid, names (relative paths: the folder moves as a whole)
    DIR/<name>.names       one class name a line
    DIR/train.txt          images/<file> a line, sorted (empty when every image is for validation)
    DIR/valid.txt          images/<file> a line, sorted (empty when every image is for training)
    DIR/images/<file>      the source images, byte for byte (never re-encoded), under their own file names
    DIR/labels/<stem>.txt  ``class cx cy w h`` a line, normalised to [0, 1], 6 decimals (empty: no objects)

``DIR`` must be new or empty. The folder is built under a temporary name beside it and renamed into
place when complete, so a failed import leaves nothing that looks like a data set. The same source
and options give byte-identical files.

**Box convention.** Boxes are converted to continuous pixel coordinates, 0-based, where pixel ``i``
covers ``[i, i+1)``:

- Pascal VOC corners are 1-based and inclusive (the box covers pixels ``xmin..xmax``), so the box is
  ``[xmin - 1, xmax] × [ymin - 1, ymax]`` (width ``xmax - xmin + 1``; py-faster-rcnn's reading of VOC,
  half a pixel from darknet's ``voc_label.py``, which takes ``[xmin - 1, xmax - 1]``);
- COCO ``bbox`` is ``[x, y, w, h]``, 0-based: the box is ``[x, x + w] × [y, y + h]``;
- YOLO labels are already normalised: the box is ``(cx ± w/2)·W``, ``(cy ± h/2)·H``.

A VOC box ``xmin=1, xmax=W`` is thus the whole width, and the same box exported to COCO as
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` gives the same label line.

**Images.** Every image is read and decoded once, with the inference service's limits
(:func:`slimyolo.serving.images.header_size`: a JPEG, PNG or BMP whose header gives its size before
decoding; at most ``SLIMYOLO_MAX_IMAGE_PIXELS`` pixels, 50 M by default): a hostile file is refused
from its header, never decoded. The decoded image's size is the truth (it is what training sees).

**Nothing aborts but a source with no usable image.** Every problem is reported with its file and
counted by reason (:class:`ImportReport`), and the rest is imported:

=================  ========  ==================================================================
reason             action    what
=================  ========  ==================================================================
missing_image      skipped   the annotation names an image that is not there
bad_image          skipped   not an image, a header that gives no size, too many pixels, damaged data
bad_annotation     skipped   a malformed XML file, JSON entry or YOLO source entry (that entry only)
unsafe_path        skipped   a path that is absolute or leads outside the source (store imports)
duplicate_image    skipped   an image annotated twice (the first annotation in path order is kept)
renamed            renamed   an image whose file name (or stem) another image already took
missing_size       repaired  a VOC XML without a usable <size>: the decoded image's size is used
size_mismatch      repaired  the annotation's size disagrees with the image's: the image's is used
clipped            repaired  a box outside the image, clipped to it
degenerate         dropped   a box of zero area (after clipping), or inverted
unknown_class      dropped   a class not in ``--names`` (or a COCO category id not in ``categories``)
difficult          dropped   a VOC ``difficult`` object, with ``--skip-difficult``
iscrowd            dropped   a COCO ``iscrowd`` box
bad_box            dropped   a box or label line that is not numbers, or a class out of range
=================  ========  ==================================================================

**Formats** (``SRC``):

- ``voc``: a folder. The VOCdevkit layout (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``),
  or the XML files in ``annotations/`` (or ``Annotations/``, ``xml/``, or ``SRC`` itself) with the
  images in ``images/`` (or ``JPEGImages/``, or beside the XML files); ``--images`` says where the
  images are. An image is the XML's ``<filename>`` in the image folder (else beside the XML; else
  the XML's stem with an image suffix). Class names: sorted. In a VOCdevkit with
  ``ImageSets/Main/{train,val,trainval,test}.txt``, the images those lists name are imported, and
  unless a validation fraction is given the devkit's split is kept: ``test.txt`` (else
  ``val.txt``) is the validation list and every other listed image is for training.
- ``coco``: an ``instances`` JSON file; images in ``--images``, else in an ``images/`` folder beside
  the JSON, else beside it. ``file_name`` is relative to that folder. Classes: the categories in
  id order (ids need not be dense).
- ``yolo``: a darknet ``.data`` file or an ultralytics ``data.yaml`` (``path``, ``train``, ``val``,
  ``names`` as a list or a ``{id: name}`` mapping), or a folder holding exactly one of them. Label
  files by darknet's rule (``images/`` → ``labels/``). The source's split is kept unless a
  validation fraction is given.

**Split.** Given a validation fraction F (0.2 when neither given nor a source split), the output
file names are sorted, permuted by ``numpy.random.default_rng(seed)``, and the first
``round(F · n)`` (half up) are the validation images.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slimyolo.data.dataset import IMAGE_SUFFIXES, _check_label, label_path, read_data_file
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.fsutil import atomic_dir
from slimyolo.serving.config import ServingConfig
from slimyolo.serving.images import header_size

FORMATS = ("voc", "coco", "yolo")
DEFAULT_VAL_FRACTION = 0.2
MAX_PIXELS = ServingConfig.max_image_pixels  # the inference service's default SLIMYOLO_MAX_IMAGE_PIXELS
MAX_ANNOTATION_BYTES = 16 * 1024 * 1024  # one VOC XML (a COCO JSON may be larger: it holds the whole set)
_EPS = 1e-6  # pixels: a box this far outside the image is at its border (float noise), not clipped

ACTIONS = {
    "missing_image": "skipped", "bad_image": "skipped", "bad_annotation": "skipped", "unsafe_path": "skipped",
    "duplicate_image": "skipped", "renamed": "renamed", "missing_size": "repaired", "size_mismatch": "repaired",
    "clipped": "repaired", "degenerate": "dropped", "unknown_class": "dropped", "difficult": "dropped",
    "iscrowd": "dropped", "bad_box": "dropped",
}


@dataclass(frozen=True)
class Issue:
    """One dropped, skipped, renamed or repaired item."""

    file: str  # the annotation or image file (relative to the source folder where it lies inside)
    reason: str  # a key of ACTIONS
    detail: str

    @property
    def action(self) -> str:
        return ACTIONS[self.reason]

    def __str__(self) -> str:
        return f"{self.file}: {self.detail} ({self.action}: {self.reason})"


@dataclass
class ImportReport:
    """What an import did: images per split, boxes per class, and every item dropped or repaired."""

    format: str
    source: str
    out: str = ""
    data_file: str = ""
    names: list[str] = field(default_factory=list)
    train: int = 0
    valid: int = 0
    split: str = ""  # how the split was made ("fraction 0.2, seed 0" or "the source's own")
    boxes: dict[str, int] = field(default_factory=dict)  # per class name, in class order
    background: int = 0  # images without a box
    issues: list[Issue] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Issues by reason."""
        return dict(sorted(Counter(i.reason for i in self.issues).items()))

    def by_action(self) -> dict[str, int]:
        return dict(sorted(Counter(i.action for i in self.issues).items()))

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source, "out": self.out, "data_file": self.data_file,
                "classes": len(self.names), "names": self.names, "images": {"train": self.train, "valid": self.valid},
                "split": self.split, "boxes": self.boxes, "background_images": self.background,
                "issues": [{**asdict(i), "action": i.action} for i in self.issues],
                "counts": self.counts(), "actions": self.by_action()}

    def summary(self) -> list[str]:
        """The human summary, a line each (the issues themselves are :attr:`issues`)."""
        total = sum(self.boxes.values())
        per_class = ", ".join(f"{n} {c}" for n, c in self.boxes.items())
        lines = [f"imported {self.train + self.valid} images ({self.format}, {self.source}) into {self.data_file}",
                 f"  {self.train} training and {self.valid} validation images ({self.split}); "
                 f"{self.background} without objects",
                 f"  {len(self.names)} classes, {total} boxes: {per_class or 'none'}"]
        if self.issues:
            counts = ", ".join(f"{reason} {n}" for reason, n in self.counts().items())
            actions = ", ".join(f"{n} {a}" for a, n in self.by_action().items())
            lines.append(f"  {len(self.issues)} problems ({actions}): {counts}")
        else:
            lines.append("  no problems")
        return lines


class NothingImported(SlimYoloError):
    """Nothing usable in the source; ``report`` says why, item by item."""

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ImportOptions:
    val_fraction: float | None = None  # None: the source's own split if it has one, else DEFAULT_VAL_FRACTION
    seed: int = 0
    names: tuple[str, ...] = ()  # the class order; empty: the format's (sorted VOC names, COCO category ids)
    skip_difficult: bool = False
    images: Path | None = None  # where the images are (default: found beside the annotations)
    name: str = ""  # the .data/.names file stem; "": the output folder's name
    max_pixels: int = MAX_PIXELS
    # A source that arrived in a request (a store tree): every path it names must stay inside this
    # folder, absolute paths are refused, and reports name files relative to it.
    root: Path | None = None

    def check(self) -> None:
        if self.val_fraction is not None and not (isinstance(self.val_fraction, int | float)
                                                  and 0.0 <= self.val_fraction <= 1.0):
            raise SlimYoloError(f"the validation fraction must be in [0, 1], got {self.val_fraction!r}")
        if len(set(self.names)) != len(self.names) or not all(_good_name(n) for n in self.names):
            raise SlimYoloError(f"--names must be distinct, non-empty class names, got {list(self.names)!r}")


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class _Box:
    cls: str
    x0: float
    y0: float
    x1: float
    y1: float
    where: str  # "object 2", "line 3", "annotations[12]"


@dataclass
class _Sample:
    key: str  # processing order (a path relative to the source)
    image: Path
    shown: str  # the file reports name (the annotation, or the image)
    boxes: list[_Box]
    size: tuple[int, int] | None = None  # the size the annotation declares (width, height)
    split: str | None = None  # the source's own split ("train"/"valid"), if it has one
    needs_size: bool = False  # a VOC XML without a usable <size>


class _Context:
    """The issues found so far, and where paths may lead."""

    def __init__(self, base: Path, options: ImportOptions) -> None:
        self.base = base.resolve()
        self.options = options
        self.root = options.root.resolve() if options.root is not None else None
        self.issues: list[Issue] = []

    def show(self, path: Path) -> str:
        """``path`` as reports show it: relative to the source folder (or the root) when inside."""
        p = Path(os.path.abspath(path))
        for base in (self.base, self.root):
            if base is not None and p.is_relative_to(base):
                return p.relative_to(base).as_posix() or "."
        return "(outside the source)" if self.root is not None else str(path)

    def issue(self, file: str | Path, reason: str, detail: str) -> None:
        self.issues.append(Issue(file if isinstance(file, str) else self.show(file), reason, detail))

    def inside(self, path: Path) -> bool:
        return self.root is None or path.resolve().is_relative_to(self.root)

    def locate(self, entry: str, bases: Sequence[Path], shown: str) -> Path | None:
        """The file ``entry`` names under the first of ``bases`` holding it; None (reported) when unsafe."""
        if self.root is not None and (entry.startswith(("/", "\\", "~")) or Path(entry).is_absolute()
                                      or ".." in re.split(r"[/\\]", entry)):
            self.issue(shown, "unsafe_path", f"names {entry!r}: an absolute path or one with '..' is not accepted")
            return None
        candidates = [Path(entry).expanduser() if Path(entry).expanduser().is_absolute() else base / entry
                      for base in bases]
        for candidate in candidates:
            if candidate.is_file():
                if not self.inside(candidate):
                    self.issue(shown, "unsafe_path", f"names {entry!r}, which leads outside the source")
                    return None
                return candidate
        return candidates[0] if candidates else Path(entry)


def _good_name(name: str) -> bool:
    return isinstance(name, str) and bool(name.strip()) and name == name.strip() and not any(c in name for c in "\r\n")


def _number(element: ET.Element | None, tag: str) -> float | None:
    text = element.findtext(tag) if element is not None else None
    try:
        value = float(text.strip()) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_voc(src: Path, ctx: _Context) -> list[_Sample]:
    if not src.is_dir():
        raise NotFoundError(f"{src}: not a folder (a VOC source is the folder holding the XML files and images)")
    devkit = (src / "Annotations").is_dir()
    xml_dir = next((src / d for d in ("Annotations", "annotations", "xml", "xmls") if (src / d).is_dir()), src)
    image_dir = ctx.options.images or next(
        (src / d for d in ("JPEGImages", "images", "Images", "imgs") if (src / d).is_dir()), xml_dir)
    if ctx.options.images is not None and not image_dir.is_dir():
        raise NotFoundError(f"{image_dir}: no such image folder (--images)")
    xmls = sorted(p for p in xml_dir.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    listed, valid_stems = _voc_image_sets(src / "ImageSets" / "Main") if devkit else (None, set())
    if listed is not None:
        xmls = [p for p in xmls if p.stem in listed]
    samples = []
    for xml in xmls:
        sample = _read_voc_xml(xml, image_dir, ctx)
        if sample is not None:
            if listed is not None:
                sample.split = "valid" if xml.stem in valid_stems else "train"
            samples.append(sample)
    if not xmls:
        raise NotFoundError(f"{src}: no VOC XML files (looked in {ctx.show(xml_dir)})")
    return samples


def _voc_image_sets(main: Path) -> tuple[set[str] | None, set[str]]:
    """(stems the devkit's ImageSets/Main lists name, or None without lists; the validation stems)."""
    lists = {}
    for name in ("train", "val", "trainval", "test"):
        path = main / f"{name}.txt"
        if path.is_file():
            lists[name] = {line.split()[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                           if line.strip()}
    if not lists:
        return None, set()
    valid = lists.get("test", lists.get("val", set()))
    return set().union(*lists.values()), valid


def _read_voc_xml(xml: Path, image_dir: Path, ctx: _Context) -> _Sample | None:
    shown = ctx.show(xml)
    try:
        if xml.stat().st_size > MAX_ANNOTATION_BYTES:
            raise SlimYoloError(f"larger than {MAX_ANNOTATION_BYTES:,} bytes")
        root = ET.fromstring(xml.read_bytes())
        if root.tag != "annotation":
            raise SlimYoloError(f"the root element is <{root.tag}>, not <annotation>")
    except (ET.ParseError, OSError, SlimYoloError, ValueError) as exc:
        ctx.issue(shown, "bad_annotation", f"not a VOC annotation: {exc}")
        return None
    filename = (root.findtext("filename") or "").strip()
    image = ctx.locate(filename, [image_dir, xml.parent], shown) if filename else None
    if filename and image is None:
        return None  # unsafe, reported
    if image is None or not image.is_file():
        by_stem = [image_dir / f"{xml.stem}{s}" for s in IMAGE_SUFFIXES] + \
                  [image_dir / f"{xml.stem}{s.upper()}" for s in IMAGE_SUFFIXES]
        found = next((p for p in by_stem if p.is_file() and ctx.inside(p)), None)
        if found is None:
            what = f"its image {filename!r}" if filename else "no <filename>, and no image named by its stem"
            ctx.issue(shown, "missing_image", f"{what} is not in {ctx.show(image_dir)}")
            return None
        image = found
    size_el = root.find("size")
    width, height = _number(size_el, "width"), _number(size_el, "height")
    size = (int(width), int(height)) if width and height and width >= 1 and height >= 1 else None
    boxes = []
    for n, obj in enumerate(root.iter("object"), 1):
        where = f"object {n}"
        name = (obj.findtext("name") or "").strip()
        if not _good_name(name):
            ctx.issue(shown, "bad_box", f"{where}: no class <name>")
            continue
        difficult = (obj.findtext("difficult") or "0").strip()
        if ctx.options.skip_difficult and difficult not in ("", "0"):
            ctx.issue(shown, "difficult", f"{where} ({name}) is difficult")
            continue
        bb = obj.find("bndbox")
        corners = [_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in corners):
            ctx.issue(shown, "bad_box", f"{where} ({name}): <bndbox> needs numeric xmin, ymin, xmax, ymax")
            continue
        xmin, ymin, xmax, ymax = corners
        boxes.append(_Box(name, xmin - 1, ymin - 1, xmax, ymax, where))  # type: ignore[operator]
    return _Sample(ctx.show(xml), image, shown, boxes, size, needs_size=size is None)


def _read_coco(src: Path, ctx: _Context) -> tuple[list[_Sample], list[str]]:
    if src.is_dir():
        found = sorted(src.glob("*.json"))
        if len(found) != 1:
            raise SlimYoloError(f"{ctx.show(src)}: a COCO source is an instances JSON file (the folder holds "
                                f"{len(found)} .json files)")
        src = found[0]
    shown = ctx.show(src)
    try:
        doc = json.loads(src.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"{shown}: no such COCO JSON file") from None
    except (OSError, ValueError) as exc:
        raise SlimYoloError(f"{shown}: not a COCO JSON file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise SlimYoloError(f"{shown}: not a COCO instances file (no 'images' list)")
    image_dir = ctx.options.images or (src.parent / "images" if (src.parent / "images").is_dir() else src.parent)
    if ctx.options.images is not None and not image_dir.is_dir():
        raise NotFoundError(f"{image_dir}: no such image folder (--images)")
    categories: dict[int, str] = {}
    for n, cat in enumerate(doc.get("categories") or []):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and _good_name(str(cat.get("name", "")))):
            ctx.issue(shown, "bad_annotation", f"categories[{n}]: needs an integer id and a name")
            continue
        if cat["id"] in categories:
            raise SlimYoloError(f"{shown}: categories[{n}]: id {cat['id']} appears twice")
        categories[cat["id"]] = str(cat["name"])
    order = [categories[i] for i in sorted(categories)]
    if len(set(order)) != len(order):
        twice = sorted(n for n, c in Counter(order).items() if c > 1)
        raise SlimYoloError(f"{shown}: category name {twice[0]!r} has several ids; rename one (class names must "
                            "be distinct)")
    images: dict[int, _Sample] = {}
    for n, entry in enumerate(doc["images"]):
        where = f"{shown}: images[{n}]"
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int)
                and isinstance(entry.get("file_name"), str) and entry["file_name"].strip()):
            ctx.issue(where, "bad_annotation", "needs an integer id and a file_name")
            continue
        if entry["id"] in images:
            ctx.issue(where, "bad_annotation", f"image id {entry['id']} appears twice; this entry skipped")
            continue
        name = entry["file_name"]
        image = ctx.locate(name, [image_dir], name)
        if image is None:
            continue  # unsafe, reported
        w, h = entry.get("width"), entry.get("height")
        size = (w, h) if isinstance(w, int) and isinstance(h, int) and w >= 1 and h >= 1 else None
        images[entry["id"]] = _Sample(name, image, name, [], size)
    for n, ann in enumerate(doc.get("annotations") or []):
        where = f"annotations[{n}]"
        if not (isinstance(ann, dict) and isinstance(ann.get("image_id"), int)):
            ctx.issue(shown, "bad_annotation", f"{where}: needs an integer image_id")
            continue
        sample = images.get(ann["image_id"])
        if sample is None:
            ctx.issue(shown, "bad_annotation", f"{where}: image_id {ann['image_id']} is not in 'images'")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                                   and math.isfinite(v) for v in bbox)):
            ctx.issue(sample.shown, "bad_box", f"{where}: bbox must be four numbers [x, y, w, h], got {bbox!r}")
            continue
        if ann.get("iscrowd"):
            ctx.issue(sample.shown, "iscrowd", f"{where}: an iscrowd box")
            continue
        cat = ann.get("category_id")
        if cat not in categories:
            ctx.issue(sample.shown, "unknown_class", f"{where}: category_id {cat!r} is not in 'categories'")
            continue
        x, y, w, h = (float(v) for v in bbox)
        sample.boxes.append(_Box(categories[cat], x, y, x + w, y + h, where))
    return list(images.values()), order


def _read_yolo(src: Path, ctx: _Context) -> tuple[list[_Sample], list[str]]:
    if src.is_dir():
        found = sorted(src.glob("*.data")) or sorted(p for p in src.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        if len(found) != 1:
            raise SlimYoloError(f"{ctx.show(src)}: a YOLO source is a darknet .data file or an ultralytics data.yaml "
                                f"(the folder holds {len(found)} of them)")
        src = found[0]
    if not src.is_file():
        raise NotFoundError(f"{src}: no such file")
    if src.suffix in (".yaml", ".yml"):
        names, splits = _read_ultralytics(src, ctx)
    else:
        spec = read_data_file(src, root=ctx.root)
        names, splits = spec.names, {"train": spec.train, "valid": spec.valid}
    samples = []
    for split, images in splits.items():
        for image in images:
            samples.append(_read_yolo_labels(image, names, split, ctx))
    return [s for s in samples if s is not None], list(names)


def _read_ultralytics(path: Path, ctx: _Context) -> tuple[list[str], dict[str, list[Path]]]:
    from slimyolo.fsutil import read_yaml

    shown = ctx.show(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise SlimYoloError(f"{shown}: not an ultralytics data.yaml (expected a mapping)")
    raw = doc.get("names")
    if isinstance(raw, dict):
        if sorted(raw) != list(range(len(raw))):
            raise SlimYoloError(f"{shown}: 'names' must map the ids 0..{len(raw) - 1}, got ids {sorted(raw)!r}")
        raw = [raw[i] for i in range(len(raw))]
    if not isinstance(raw, list) or not raw or not all(_good_name(str(n)) for n in raw):
        raise SlimYoloError(f"{shown}: 'names' must be a list of class names or a mapping {{id: name}}")
    names = [str(n) for n in raw]
    if len(set(names)) != len(names):
        raise SlimYoloError(f"{shown}: 'names' lists a class twice")
    base = path.parent
    if doc.get("path"):
        entry = str(doc["path"])
        if ctx.root is not None and (Path(entry).is_absolute() or ".." in Path(entry).parts):
            raise SlimYoloError(f"{shown}: 'path' {entry!r} must be a relative path inside the source")
        base = base / Path(entry).expanduser()
    splits: dict[str, list[Path]] = {"train": [], "valid": []}
    for key, split in (("train", "train"), ("val", "valid"), ("test", "valid")):
        if key == "test" and doc.get("val"):
            continue  # a test list is the validation list only when there is no val
        value = doc.get(key)
        for entry in ([value] if isinstance(value, str) else value or []):
            target = ctx.locate(str(entry), [base], f"{shown}: '{key}'")
            if target is None:
                continue
            if target.is_dir():
                if not ctx.inside(target):
                    ctx.issue(f"{shown}: '{key}'", "unsafe_path", f"{entry!r} leads outside the source")
                    continue
                splits[split] += [p for p in _images_under(target) if ctx.inside(p)]
            elif target.suffix.lower() in IMAGE_SUFFIXES or not target.is_file():
                splits[split].append(target)
            else:
                lines = target.read_text(encoding="utf-8", errors="replace").splitlines()
                for n, line in enumerate(lines, 1):
                    s = line.strip()
                    if s and not s.startswith("#"):
                        image = ctx.locate(s, [target.parent, base], f"{ctx.show(target)}:{n}")
                        if image is not None:
                            splits[split].append(image)
    return names, splits


def _read_yolo_labels(image: Path, names: Sequence[str], split: str, ctx: _Context) -> _Sample | None:
    labels = label_path(image)
    shown = ctx.show(labels)
    sample = _Sample(ctx.show(image), image, ctx.show(image), [], split=split)
    if not ctx.inside(labels):
        ctx.issue(sample.shown, "unsafe_path", "its label file would lie outside the source")
        return None
    try:
        text = labels.read_text(encoding="utf-8")
    except FileNotFoundError:
        return sample  # an image without objects
    except (OSError, UnicodeDecodeError) as exc:
        ctx.issue(shown, "bad_annotation", f"cannot read the label file: {exc}")
        return None
    for n, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        problem = _check_label(parts, len(names))
        if problem:
            ctx.issue(shown, "bad_box", f"line {n}: {problem}")
            continue
        cls, cx, cy, w, h = (float(v) for v in parts)
        # kept normalised until the image's size is known (_resolve_yolo)
        sample.boxes.append(_Box(names[int(cls)], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, f"line {n}"))
    sample.shown = shown if sample.boxes else sample.shown
    return sample


# ---------------------------------------------------------------------------------------------- checking


def check_image(data: bytes, shown: str, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an encoded image, decoded once under the inference service's limits; SlimYoloError
    naming ``shown`` otherwise (a hostile header is refused before the decoder sees it)."""
    width, height = header_size(data, shown)
    if width * height > max_pixels:
        raise SlimYoloError(f"{shown}: its header declares {width}x{height}, {width * height:,} pixels, more than "
                            f"the {max_pixels:,} accepted (the inference service's SLIMYOLO_MAX_IMAGE_PIXELS)")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise SlimYoloError(f"{shown}: not a decodable image: its {width}x{height} data is damaged "
                            f"({len(data):,} bytes)")
    return decoded.shape[1], decoded.shape[0]


@dataclass
class _Entry:
    name: str  # the output file name
    shown: str  # the annotation file, for reports
    width: int
    height: int
    boxes: list[_Box]
    split: str | None


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def _output_name(image: Path, taken: set[str]) -> tuple[str, bool]:
    """A file name for ``image`` in ``images/`` whose stem no other image has (case-insensitively)."""
    stem, suffix = image.stem, image.suffix
    clean = _UNSAFE_NAME.sub("_", stem).strip() or "image"
    if clean.startswith("#"):
        clean = "_" + clean[1:]
    name, k = clean, 1
    while name.casefold() in taken:
        name, k = f"{clean}-{k}", k + 1
    taken.add(name.casefold())
    return name + suffix.lower() if suffix.lower() in IMAGE_SUFFIXES else name + suffix, name != stem


def _process(samples: Iterable[_Sample], ctx: _Context, images_out: Path, normalised: bool) -> list[_Entry]:
    """Check each image (decoding it once), copy its bytes, and fit its boxes to it."""
    entries, seen, taken = [], set(), set()
    for sample in sorted(samples, key=lambda s: s.key):
        image = sample.image
        if not image.is_file():
            ctx.issue(sample.shown, "missing_image", f"its image {ctx.show(image)} is not there")
            continue
        real = image.resolve()
        if real in seen:
            ctx.issue(sample.shown, "duplicate_image", f"{ctx.show(image)} is annotated twice; this one is skipped")
            continue
        seen.add(real)
        try:
            data = image.read_bytes()
            width, height = check_image(data, ctx.show(image), ctx.options.max_pixels)
        except OSError as exc:
            ctx.issue(ctx.show(image), "bad_image", f"cannot read: {exc.strerror or exc}")
            continue
        except SlimYoloError as exc:
            ctx.issue(ctx.show(image), "bad_image", str(exc).removeprefix(f"{ctx.show(image)}: "))
            continue
        if sample.needs_size:
            ctx.issue(sample.shown, "missing_size", f"no usable <size>; the image's {width}x{height} is used")
        elif sample.size is not None and sample.size != (width, height):
            rotated = " (its EXIF orientation turns it: the boxes may be drawn on the unturned image)" \
                if sample.size == (height, width) else ""
            ctx.issue(sample.shown, "size_mismatch", f"declares {sample.size[0]}x{sample.size[1]} but the image is "
                                                     f"{width}x{height}; the image's size is used{rotated}")
        boxes = []
        for box in sample.boxes:
            if normalised:
                box = _Box(box.cls, box.x0 * width, box.y0 * height, box.x1 * width, box.y1 * height, box.where)
            fitted = _fit(box, width, height, sample.shown, ctx)
            if fitted is not None:
                boxes.append(fitted)
        name, renamed = _output_name(image, taken)
        if renamed:
            ctx.issue(sample.shown, "renamed", f"{ctx.show(image)} is written as images/{name} (another image took "
                                               "its name)")
        (images_out / name).write_bytes(data)
        entries.append(_Entry(name, sample.shown, width, height, boxes, sample.split))
    return entries


def _fit(box: _Box, width: int, height: int, shown: str, ctx: _Context) -> _Box | None:
    """The box clipped to the image (reported), or None (reported) when nothing of it is left."""
    corners = (box.x0, box.y0, box.x1, box.y1)
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        ctx.issue(shown, "degenerate", f"{box.where} ({box.cls}): empty or inverted box {_fmt(corners)}")
        return None
    x0, x1 = min(max(box.x0, 0.0), width), min(max(box.x1, 0.0), width)
    y0, y1 = min(max(box.y0, 0.0), height), min(max(box.y1, 0.0), height)
    if round((x1 - x0) / width, 6) <= 0 or round((y1 - y0) / height, 6) <= 0:
        ctx.issue(shown, "degenerate", f"{box.where} ({box.cls}): nothing of box {_fmt(corners)} lies in the "
                                       f"{width}x{height} image")
        return None
    if max(abs(x0 - box.x0), abs(x1 - box.x1), abs(y0 - box.y0), abs(y1 - box.y1)) > _EPS:
        ctx.issue(shown, "clipped", f"{box.where} ({box.cls}): box {_fmt(corners)} clipped to the {width}x{height} "
                                    f"image: {_fmt((x0, y0, x1, y1))}")
    return _Box(box.cls, x0, y0, x1, y1, box.where)


def _fmt(corners: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in corners) + "]"


# ---------------------------------------------------------------------------------------------- writing


def _split(entries: list[_Entry], options: ImportOptions) -> tuple[set[str], str]:
    """(the validation images' names, how the split was made)."""
    if options.val_fraction is None and entries and all(e.split is not None for e in entries):
        return {e.name for e in entries if e.split == "valid"}, "the source's own split"
    fraction = DEFAULT_VAL_FRACTION if options.val_fraction is None else float(options.val_fraction)
    names = sorted(e.name for e in entries)
    count = min(len(names), math.floor(fraction * len(names) + 0.5))
    order = np.random.default_rng(options.seed).permutation(len(names))
    return {names[i] for i in order[:count]}, f"validation fraction {fraction:g}, seed {options.seed}"


def import_dataset(fmt: str, source: str | Path, out: str | Path, options: ImportOptions | None = None,
                   ) -> ImportReport:
    """Import ``source`` (``fmt``: voc, coco or yolo) into the new (or empty) folder ``out``; see the module.

    Returns the report; raises :class:`NothingImported` (a SlimYoloError, with the report) when no image is usable.
    """
    options = options or ImportOptions()
    options.check()
    if fmt not in FORMATS:
        raise SlimYoloError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    src, out = Path(source).expanduser(), Path(out)
    if not src.exists():
        raise NotFoundError(f"{source}: no such file or folder")
    if options.root is not None and not src.resolve().is_relative_to(options.root.resolve()):
        raise SlimYoloError(f"{source}: leads outside the source's folder")
    name = options.name or re.sub(r"[^A-Za-z0-9._-]", "_", out.resolve().name).strip(".") or "data"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimYoloError(f"{out}: already exists and is not an empty folder; choose a new folder for the data set")
    ctx = _Context(src if src.is_dir() else src.parent, options)
    report = ImportReport(fmt, ctx.show(src) if options.root is not None else str(source))
    order: list[str] = []
    if fmt == "voc":
        samples = _read_voc(src, ctx)
    elif fmt == "coco":
        samples, order = _read_coco(src, ctx)
    else:
        samples, order = _read_yolo(src, ctx)
    existed = out.exists()
    if existed:
        out.rmdir()
    try:
        with atomic_dir(out) as tmp:
            (tmp / "images").mkdir()
            (tmp / "labels").mkdir()
            entries = _process(samples, ctx, tmp / "images", normalised=fmt == "yolo")
            report.issues = ctx.issues
            if not entries:
                raise NothingImported(f"{report.source}: no usable image to import ({len(ctx.issues)} problems"
                                   + (f"; the first: {ctx.issues[0]}" if ctx.issues else "") + ")", report)
            names = list(options.names) or order or sorted({b.cls for e in entries for b in e.boxes})
            if not names:
                raise NothingImported(f"{report.source}: no class names (no object in any annotation); give --names",
                                   report)
            _write(tmp, name, names, entries, options, ctx, report)
    except BaseException:
        if existed and not out.exists():
            out.mkdir()
        raise
    report.issues = ctx.issues
    report.out, report.data_file = str(out), str(out / f"{name}.data")
    return report


def _write(tmp: Path, name: str, names: list[str], entries: list[_Entry], options: ImportOptions, ctx: _Context,
           report: ImportReport) -> None:
    index = {n: i for i, n in enumerate(names)}
    boxes = dict.fromkeys(names, 0)
    for entry in entries:
        lines = []
        for box in entry.boxes:
            if box.cls not in index:
                ctx.issue(entry.shown, "unknown_class", f"{box.where}: class {box.cls!r} is not in --names")
                continue
            boxes[box.cls] += 1
            w, h = entry.width, entry.height
            lines.append(f"{index[box.cls]} {(box.x0 + box.x1) / 2 / w:.6f} {(box.y0 + box.y1) / 2 / h:.6f} "
                         f"{(box.x1 - box.x0) / w:.6f} {(box.y1 - box.y0) / h:.6f}\n")
        report.background += not lines
        (tmp / "labels" / f"{Path(entry.name).stem}.txt").write_text("".join(lines), encoding="utf-8")
    valid, how = _split(entries, options)
    train_list = sorted(e.name for e in entries if e.name not in valid)
    valid_list = sorted(valid)
    (tmp / "train.txt").write_text("".join(f"images/{n}\n" for n in train_list), encoding="utf-8")
    (tmp / "valid.txt").write_text("".join(f"images/{n}\n" for n in valid_list), encoding="utf-8")
    (tmp / f"{name}.names").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (tmp / f"{name}.data").write_text(f"classes = {len(names)}\ntrain = train.txt\nvalid = valid.txt\n"
                                      f"names = {name}.names\n", encoding="utf-8")
    report.names, report.boxes, report.split = names, boxes, how
    report.train, report.valid = len(train_list), len(valid_list)
