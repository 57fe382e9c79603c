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


def placement(orig_h: int, orig_w: int, height: int, width: int, scaleup: bool = True) -> Letterbox:
    """Where an ``orig_h``×``orig_w`` image lands in a ``height``×``width`` letterbox.

    The offsets are whole pixels, ``floor`` of half the slack on the top/left (what the IR's
    built-in letterbox computes too), so boxes map back exactly whichever side letterboxed.
    """
    r = min(height / orig_h, width / orig_w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = round(orig_w * r), round(orig_h * r)
    return Letterbox(r, float((width - new_w) // 2), float((height - new_h) // 2), orig_h, orig_w)


def letterbox(img: np.ndarray, height: int, width: int, pad_value: int = PAD_VALUE,
              scaleup: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize ``img`` (H, W, C) into a ``height``×``width`` canvas; returns the canvas and the placement."""
    h, w = img.shape[:2]
    lb = placement(h, w, height, width, scaleup)
    new_w, new_h = round(w * lb.ratio), round(h * lb.ratio)
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(lb.pad_y), int(lb.pad_x)
    bottom, right = height - new_h - top, width - new_w - left
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                             value=(pad_value,) * (img.shape[2] if img.ndim == 3 else 1))
    return out, lb


def unletterbox_boxes(boxes: np.ndarray, lb: Letterbox, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes from network-input pixels back to the original image's pixels."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.ratio
    if clip:
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.orig_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.orig_h)
    return out
