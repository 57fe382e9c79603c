"""COCO-format JSON of a darknet data set's ground truth and of a model's detections.

What ultralytics' ``test.py --save-json`` writes and pycocotools scores, so a user can check
``slimyolo eval``'s mAP@0.5 with the reference implementation:

- results: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, the
  box in the original image's pixels (top-left corner, width, height), ``category_id`` the class
  index in the data set's names;
- ground truth: ``{"images", "annotations", "categories"}`` built from the label files, with the
  same image ids and category ids.

An image's id is its file's stem: as an ``int`` (``000123`` → 123) when the stems of all the images
of the split are all digits, else the stem itself, a string, for every image (pycocotools sorts the
ids, so one file cannot mix the two). Two images of one split with the same id are an error (their
detections could not be told apart). Needs NumPy and OpenCV only (no torch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.data.dataset import DataSpec, LabelReport, load_image, read_data_file, read_labels
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_write_text

log = logging.getLogger(__name__)

ImageId = int | str


def image_ids(paths: Sequence[str | Path]) -> list[ImageId]:
    """The COCO image ids of the images of a split: their stems, all as ``int`` when every stem is all
    (ASCII) digits, else all as strings; two paths with one id are an error naming both."""
    stems = [Path(p).stem for p in paths]
    numeric = all(s.isascii() and s.isdigit() for s in stems)
    seen: dict[ImageId, Path] = {}
    ids: list[ImageId] = []
    for p, stem in zip(paths, stems, strict=True):
        i = int(stem) if numeric else stem
        if i in seen:
            raise SlimYoloError(f"{seen[i]} and {p} have the same COCO image id {i!r} (the file's stem, as a "
                                "number when every stem of the split is all digits); rename one to write COCO JSON "
                                "of this split")
        seen[i] = Path(p)
        ids.append(i)
    return ids


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail early, naming ``path``, when a file cannot be written there (a folder, or under a file or a
    folder without write permission); missing parent folders are fine (the writer creates them)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SlimYoloError(f"{what} {path}: is a folder; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SlimYoloError(f"{what} {path}: cannot be written, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SlimYoloError(f"{what} {path}: cannot be written, no write permission in {parent}")
    return path


def _write_json(path: str | Path, doc: Any, what: str) -> Path:
    path = check_writable(path, what)
    try:
        atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
    except OSError as exc:
        raise SlimYoloError(f"{what} {path}: cannot write: {exc.strerror or exc}") from None
    return path


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) corner boxes → COCO's (N, 4) ``x, y, w, h``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def result_records(img_id: ImageId, det: np.ndarray) -> list[dict[str, Any]]:
    """COCO result records of one image's (M, 6) detections ``x1, y1, x2, y2, score, class`` in the
    original image's pixels; bbox rounded to 3 decimals, score to 5."""
    det = np.asarray(det, np.float64).reshape(-1, 6)
    xywh = xyxy_to_xywh(det[:, :4])
    return [{"image_id": img_id, "category_id": int(d[5]), "bbox": [round(float(v), 3) for v in b],
             "score": round(float(d[4]), 5)} for d, b in zip(det, xywh, strict=True)]


def write_coco_results(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write detection records (:func:`result_records`) atomically as a COCO results JSON list."""
    return _write_json(path, list(records), "COCO results file")


def label_boxes(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 5) normalised ``class cx cy w h`` labels → (K, 4) COCO ``x, y, w, h`` pixel boxes, clipped to the image."""
    labels = np.asarray(labels, np.float64).reshape(-1, 5)
    x1 = ((labels[:, 1] - labels[:, 3] / 2) * width).clip(0, width)
    y1 = ((labels[:, 2] - labels[:, 4] / 2) * height).clip(0, height)
    x2 = ((labels[:, 1] + labels[:, 3] / 2) * width).clip(0, width)
    y2 = ((labels[:, 2] + labels[:, 4] / 2) * height).clip(0, height)
    return xyxy_to_xywh(np.stack([x1, y1, x2, y2], axis=1))


class CocoGroundTruth:
    """Builds a COCO ground-truth document image by image (what :func:`write_coco_ground_truth` and
    ``evaluate(..., save_gt_json=...)`` write)."""

    def __init__(self, names: Sequence[str], root: Path | None = None) -> None:
        self.root = root
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories = [{"id": i, "name": n} for i, n in enumerate(names)]

    def add(self, img_id: ImageId, path: str | Path, height: int, width: int, labels: np.ndarray) -> None:
        """One image of ``height`` x ``width`` pixels and its (K, 5) normalised labels."""
        path = Path(path)
        name = path.relative_to(self.root).as_posix() if self.root and path.is_relative_to(self.root) else str(path)
        self.images.append({"id": img_id, "file_name": name, "height": int(height), "width": int(width)})
        labels = np.asarray(labels).reshape(-1, 5)
        for cls, box in zip(labels[:, 0], label_boxes(labels, height, width), strict=True):
            self.annotations.append({"id": len(self.annotations) + 1,  # pycocotools: ids from 1 (0 means unmatched)
                                     "image_id": img_id, "category_id": int(cls),
                                     "bbox": [round(float(v), 3) for v in box],
                                     "area": round(float(box[2] * box[3]), 3), "iscrowd": 0})

    def to_dict(self) -> dict[str, Any]:
        return {"info": {"description": "slimyolo ground truth from darknet label files"}, "licenses": [],
                "images": self.images, "annotations": self.annotations, "categories": self.categories}

    def write(self, path: str | Path) -> Path:
        return _write_json(path, self.to_dict(), "COCO ground-truth file")


def coco_ground_truth(data: DataSpec | str | Path, split: str = "valid",
                      max_images: int | None = None) -> tuple[CocoGroundTruth, list[str]]:
    """The COCO ground truth of a split (the first ``max_images`` images, as ``evaluate`` takes them),
    and the unreadable images skipped (as ``evaluate`` skips them)."""
    spec = data if isinstance(data, DataSpec) else read_data_file(data)
    images = spec.split(split)[:max_images] if max_images else spec.split(split)
    gt = CocoGroundTruth(spec.names, spec.path.parent)
    report = LabelReport()
    skipped = []
    for img_id, path in zip(image_ids(images), images, strict=True):
        try:
            h, w = load_image(path).shape[:2]
        except SlimYoloError as exc:
            log.warning("%s; image skipped", exc)
            skipped.append(str(path))
            continue
        gt.add(img_id, path, h, w, read_labels(path, spec.classes, report))
    if report.bad_lines:
        log.warning("%s: %s", spec.path, report.summary())
    return gt, skipped


def write_coco_ground_truth(path: str | Path, data: DataSpec | str | Path, split: str = "valid",
                            max_images: int | None = None) -> Path:
    """Write the COCO ground-truth JSON of a split (see :func:`coco_ground_truth`) atomically."""
    check_writable(path, "COCO ground-truth file")
    return coco_ground_truth(data, split, max_images)[0].write(path)
