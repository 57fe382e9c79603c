"""Training augmentation as the ultralytics trainers of the original projects do it.

Mosaic (four images around a random centre), random affine (rotation, scale, shear,
translation), HSV jitter, flips, and the shared letterbox for non-mosaic samples. Every
function takes a ``numpy.random.Generator``: the training data set derives one from
``(seed, epoch, index)``, so a sample is the same whatever the number of loader workers,
and a resumed run sees exactly the samples the uninterrupted run would have seen.

Boxes here are (K, 5) float32 ``class, x1, y1, x2, y2`` in pixels of the image at hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from slimyolo.data.letterbox import PAD_VALUE, letterbox
from slimyolo.params import Declared, param


@dataclass(frozen=True, kw_only=True)
class AugmentConfig(Declared):
    """Probabilities and ranges; the defaults are the ultralytics (yolov5 'scratch') values. Declared with
    :func:`~slimyolo.params.param`, so a training config's ``augment`` section is read and checked by the same
    engine as every other setting (``'augment.mosaic' must be at most 1``)."""

    mosaic: float = param("float", 1.0, low=0, high=1, help="probability of a mosaic sample")
    degrees: float = param("float", 0.0, low=0, high=180, help="rotation, ± degrees")
    translate: float = param("float", 0.1, low=0, high=1, help="translation, ± fraction of the image size")
    scale: float = param("float", 0.5, low=0, high=1, high_open=True, help="scale gain, ± (1 would allow a "
                         "zero-sized image)")
    shear: float = param("float", 0.0, low=0, high=90, high_open=True, help="shear, ± degrees")
    hsv_h: float = param("float", 0.015, low=0, high=1, help="hue gain (fraction)")
    hsv_s: float = param("float", 0.7, low=0, high=1, help="saturation gain (fraction)")
    hsv_v: float = param("float", 0.4, low=0, high=1, help="value gain (fraction)")
    fliplr: float = param("float", 0.5, low=0, high=1, help="probability of a left-right flip")
    flipud: float = param("float", 0.0, low=0, high=1, help="probability of an up-down flip")


def resize_long_side(img: np.ndarray, size: int) -> np.ndarray:
    """Scale ``img`` so that its long side is ``size`` (the mosaic tiles)."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    if r == 1:
        return img
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (max(1, round(w * r)), max(1, round(h * r))), interpolation=interp)


def normalised_to_pixels(labels: np.ndarray, w: float, h: float, scale: float = 1.0, pad_x: float = 0.0,
                         pad_y: float = 0.0) -> np.ndarray:
    """(K, 5) ``class, cx, cy, w, h`` normalised → ``class, x1, y1, x2, y2`` pixels (scaled, then shifted)."""
    out = np.empty_like(labels, dtype=np.float32)
    out[:, 0] = labels[:, 0]
    out[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * w * scale + pad_x
    out[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * h * scale + pad_y
    out[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * w * scale + pad_x
    out[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * h * scale + pad_y
    return out


def pixels_to_normalised(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Inverse of :func:`normalised_to_pixels` without scale/offset."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0] = boxes[:, 0]
    out[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2 / w
    out[:, 2] = (boxes[:, 2] + boxes[:, 4]) / 2 / h
    out[:, 3] = (boxes[:, 3] - boxes[:, 1]) / w
    out[:, 4] = (boxes[:, 4] - boxes[:, 2]) / h
    return out


def letterbox_sample(img: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox (the shared convention) an image and its normalised labels to ``size``×``size``."""
    canvas, lb = letterbox(img, size, size)
    return canvas, normalised_to_pixels(labels, lb.orig_w, lb.orig_h, lb.ratio, lb.pad_x, lb.pad_y)


def mosaic(load: Callable[[int], tuple[np.ndarray, np.ndarray]], indices: list[int], size: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four images (``load(i)`` → image with long side ``size``, normalised labels) on a 2s×2s canvas.

    The tiles meet at a random centre in [s/2, 3s/2]²; the caller then applies
    :func:`random_affine` with ``border=size // 2`` to cut the result back to s×s.
    """
    s = size
    yc, xc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
    boxes = []
    for k, index in enumerate(indices):
        img, labels = load(index)
        h, w = img.shape[:2]
        if k == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        boxes.append(normalised_to_pixels(labels, w, h, 1.0, x1a - x1b, y1a - y1b))
    out = np.concatenate(boxes, 0) if boxes else np.zeros((0, 5), np.float32)
    out[:, 1:] = out[:, 1:].clip(0, 2 * s)
    return canvas, out


def random_affine(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                  border: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, scale, shear and translate; the output is the input size minus ``2·border``."""
    height, width = img.shape[0] - 2 * border, img.shape[1] - 2 * border
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    rot = np.eye(3)
    gain = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    rot[:2] = cv2.getRotationMatrix2D((0, 0), rng.uniform(-cfg.degrees, cfg.degrees), gain)
    shear = np.eye(3)
    shear[0, 1] = math.tan(rng.uniform(-cfg.shear, cfg.shear) * math.pi / 180)
    shear[1, 0] = math.tan(rng.uniform(-cfg.shear, cfg.shear) * math.pi / 180)
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * width
    move[1, 2] = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * height
    m = move @ shear @ rot @ centre
    if border or not np.allclose(m, np.eye(3)):
        img = cv2.warpAffine(img, m[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    if not len(boxes):
        return img, boxes
    corners = np.ones((len(boxes) * 4, 3))
    corners[:, :2] = boxes[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = (corners @ m.T)[:, :2].reshape(len(boxes), 8)
    new = np.stack([xy[:, 0::2].min(1), xy[:, 1::2].min(1), xy[:, 0::2].max(1), xy[:, 1::2].max(1)], 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    keep = box_candidates(boxes[:, 1:5] * gain, new)
    out = np.concatenate([boxes[keep, :1], new[keep]], 1).astype(np.float32)
    return img, out


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1) -> np.ndarray:
    """Boxes still worth training on after a transform: > 2 px, > 10% of their area kept, aspect < 20."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> None:
    """HSV jitter in place through lookup tables (OpenCV hue is 0..179)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    merged = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(merged, cv2.COLOR_HSV2BGR, dst=img)


def flip(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
         ) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if rng.random() < cfg.fliplr:
        img = np.ascontiguousarray(img[:, ::-1])
        boxes = boxes.copy()
        boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
    if rng.random() < cfg.flipud:
        img = np.ascontiguousarray(img[::-1])
        boxes = boxes.copy()
        boxes[:, [2, 4]] = h - boxes[:, [4, 2]]
    return img, boxes
