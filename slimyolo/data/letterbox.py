"""Letterbox resizing and its inverse: one convention for training, evaluation and inference.

The image is scaled by ``r = min(H/h, W/w)`` (aspect ratio kept), centred, and padded with
grey 114 to the network size (the convention of the ultralytics trainers the original pruning
projects used). Boxes predicted on the letterboxed image map back with :func:`unletterbox_boxes`.
Needs only NumPy and OpenCV (the inference image has no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed into the network input: scale, then offset (pad_x, pad_y)."""

    ratio: float
    pad_x: float
    pad_y: float
    orig_h: int
    orig_w: int


def letterbox(img: np.ndarray, height: int, width: int, pad_value: int = PAD_VALUE,
              scaleup: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize ``img`` (H, W, C) into a ``height``×``width`` canvas; returns the canvas and the placement."""
    h, w = img.shape[:2]
    r = min(height / h, width / w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = round(w * r), round(h * r)
    pad_x, pad_y = (width - new_w) / 2, (height - new_h) / 2
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    bottom, right = height - new_h - top, width - new_w - left
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                             value=(pad_value,) * (img.shape[2] if img.ndim == 3 else 1))
    return out, Letterbox(r, float(left), float(top), h, w)


def unletterbox_boxes(boxes: np.ndarray, lb: Letterbox, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes from network-input pixels back to the original image's pixels."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.ratio
    if clip:
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.orig_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.orig_h)
    return out
