"""The synthetic data set: the built-in darknet-layout data for the demo, tests and benchmarks.

Each class is a shape with its own colour family and texture (circle, square, triangle,
star, cross, ring, hexagon, diamond). Objects appear at many scales (from ~6% to ~50% of the
short side), rotated, stretched, cut by the image border and partly hidden by each other, on
varied backgrounds (gradients, low-frequency noise) with clutter (lines, outlines, blobs that
belong to no class), sensor noise, blur and JPEG compression. A small YOLO learns it on a CPU
in minutes but does not reach a perfect score: small objects, occlusion and look-alike clutter
keep mAP@0.5 below 1.

Labels are the bounding boxes of each object's *visible* pixels (computed from the drawn
masks); an object hidden for more than 65% of its area by later objects is not labelled.
Everything comes from ``numpy.random.default_rng((seed, split, index))``, so the same
arguments give byte-identical files, and the first N images do not depend on how many
follow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import atomic_dir
from slimyolo.progress import Count, Progress

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "diamond")
MIN_VISIBLE = 0.35  # fraction of an object's area that must stay visible for it to be labelled
JPEG_QUALITY = 90


def _polygon(n: int, radius_ratio: float = 1.0, phase: float = 0.0) -> np.ndarray:
    """Unit polygon (n vertices, alternating radius ``radius_ratio`` for stars), in [-1, 1]²."""
    k = np.arange(n)
    angle = phase + 2 * np.pi * k / n
    r = np.where(k % 2 == 1, radius_ratio, 1.0)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)


_UNIT = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64),
    "triangle": _polygon(3, phase=-np.pi / 2),
    "star": _polygon(10, 0.45, -np.pi / 2),
    "cross": np.array([[-0.33, -1], [0.33, -1], [0.33, -0.33], [1, -0.33], [1, 0.33], [0.33, 0.33],
                       [0.33, 1], [-0.33, 1], [-0.33, 0.33], [-1, 0.33], [-1, -0.33], [-0.33, -0.33]]),
    "hexagon": _polygon(6),
    "diamond": np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], np.float64),
}


def _shape_mask(shape: str, hw: tuple[int, int], cx: float, cy: float, rx: float, ry: float,
                angle: float) -> np.ndarray:
    """uint8 mask (0/255) of one shape with half-sizes rx, ry, rotated by ``angle`` radians."""
    mask = np.zeros(hw, np.uint8)
    if shape in ("circle", "ring"):
        cv2.ellipse(mask, (round(cx * 16), round(cy * 16)), (round(rx * 16), round(ry * 16)),
                    np.degrees(angle), 0, 360, 255, -1, cv2.LINE_AA, 4)
        if shape == "ring":
            cv2.ellipse(mask, (round(cx * 16), round(cy * 16)), (round(rx * 8), round(ry * 8)),
                        np.degrees(angle), 0, 360, 0, -1, cv2.LINE_AA, 4)
        return mask
    pts = _UNIT[shape] * np.array([rx, ry])
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return mask


def _texture(kind: int, hw: tuple[int, int], colour: np.ndarray, period: float, angle: float,
             rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 fill of a class texture in two tones of ``colour``."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    p = max(period, 3.0)
    if kind == 0:  # solid
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes
        t = ((u // p) % 2).astype(np.float32)
    elif kind == 2:  # checker
        t = (((u // p) + (v // p)) % 2).astype(np.float32)
    elif kind == 3:  # dots
        du, dv = (u % p) - p / 2, (v % p) - p / 2
        t = (du * du + dv * dv < (p / 3) ** 2).astype(np.float32)
    elif kind == 4:  # gradient
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 5:  # fine diagonal stripes
        t = (((u + v) // (p / 2)) % 2).astype(np.float32)
    elif kind == 6:  # concentric bands around the object's centre are drawn as radial stripes
        t = ((np.hypot(u - u.mean(), v - v.mean()) // p) % 2).astype(np.float32)
    else:  # speckle
        t = (rng.random((max(h // 4, 1), max(w // 4, 1))) > 0.5).astype(np.float32)
        t = cv2.resize(t, (w, h), interpolation=cv2.INTER_NEAREST)
    dark = colour * 0.5
    return colour[None, None, :] * (1 - t[..., None]) + dark[None, None, :] * t[..., None]


def _class_colour(cls: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """BGR colour near the class's hue (hues spread evenly over the classes)."""
    hue = (180.0 * cls / classes + rng.uniform(-8, 8)) % 180
    hsv = np.array([[[hue, rng.uniform(140, 255), rng.uniform(140, 255)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = hw
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if rng.random() < 0.5:  # linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    else:  # low-frequency noise
        cells = int(rng.integers(2, 7))
        t = cv2.resize(rng.random((cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
    return c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Lines, outlines and blobs of no class, drawn in place under the objects."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(2, 10))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(4, w // 4)), int(rng.integers(4, h // 4)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, float(rng.uniform(90, 360)), colour,
                        int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            centre = rng.uniform([0, 0], [w, h])
            radius = rng.uniform(3, min(h, w) / 10)
            pts = centre + rng.normal(0, radius, (7, 2))
            hull = cv2.convexHull(np.round(pts).astype(np.int32))
            cv2.fillPoly(img, [hull], colour, cv2.LINE_AA)


def render_image(classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One BGR uint8 image (long side ``size``) and its labels (K, 5): class, cx, cy, w, h normalised."""
    short = int(round(size * rng.uniform(0.6, 1.0) / 2) * 2)
    h, w = (short, size) if rng.random() < 0.7 else (size, short)
    img = _background((h, w), rng).astype(np.float32)
    _clutter(img, rng)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(0, classes))
        r = min(h, w) * float(np.exp(rng.uniform(np.log(0.06), np.log(0.5)))) / 2
        aspect = rng.uniform(0.75, 1.33)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = _shape_mask(SHAPES[cls], (h, w), cx, cy, r * aspect, r / aspect, rng.uniform(-0.5, 0.5))
        if not mask.any():
            continue
        colour = _class_colour(cls, classes, rng)
        fill = _texture(cls, (h, w), colour, r / 3, rng.uniform(0, np.pi), rng)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        img = img * (1 - alpha) + fill * alpha
        objects.append((cls, mask > 127))
    labels = []
    hidden = np.zeros((h, w), bool)
    for cls, mask in reversed(objects):  # later objects are on top
        visible = mask & ~hidden
        hidden |= mask
        area, seen = int(mask.sum()), int(visible.sum())
        if not area or seen < MIN_VISIBLE * area:
            continue
        ys, xs = np.nonzero(visible)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append([cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)  # exposure
    img += rng.normal(0, rng.uniform(0, 10), img.shape)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return out, np.asarray(labels[::-1], np.float32).reshape(-1, 5)


def write_synthetic(out: str | Path, classes: int = 2, train: int = 300, val: int = 100, size: int = 320,
                    seed: int = 0, progress: Progress | None = None) -> Path:
    """Write the synthetic data set into the new folder ``out``; returns its ``.data`` file.

    ``out`` holds ``synth.data``, ``synth.names``, ``train.txt``, ``valid.txt``,
    ``images/{train,valid}/NNNNNN.jpg`` and ``labels/{train,valid}/NNNNNN.txt``. The folder
    appears whole or not at all (it is built under a temporary name); it must not exist yet.
    ``progress`` gets a :class:`~slimyolo.progress.Count` of stage ``synth`` every 50 images.
    """
    out = Path(out)
    if not 1 <= classes <= len(SHAPES):
        raise SlimYoloError(f"--classes must be 1..{len(SHAPES)} (one shape each: {', '.join(SHAPES)}), "
                            f"got {classes}")
    if train < 1 or val < 0:
        raise SlimYoloError(f"need at least 1 training image and 0 or more validation images, got {train}/{val}")
    if size < 32:
        raise SlimYoloError(f"--size must be at least 32, got {size}")
    if out.exists():
        raise SlimYoloError(f"{out}: already exists; choose a new folder for the data set")
    total, done = train + val, 0
    with atomic_dir(out) as tmp:
        for split_id, (split, count) in enumerate((("train", train), ("valid", val))):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            rel = []
            for i in range(count):
                img, labels = render_image(classes, size, np.random.default_rng((seed, split_id, i)))
                name = f"{i:06d}"
                ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                assert ok, "OpenCV failed to encode a JPEG"
                (tmp / "images" / split / f"{name}.jpg").write_bytes(data.tobytes())
                (tmp / "labels" / split / f"{name}.txt").write_text(
                    "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels))
                rel.append(f"images/{split}/{name}.jpg")
                done += 1
                if progress is not None and (done % 50 == 0 or done == total):
                    progress(Count("synth", done, total))
            (tmp / f"{split}.txt").write_text("".join(f"{r}\n" for r in rel))
        (tmp / "synth.names").write_text("".join(f"{n}\n" for n in SHAPES[:classes]))
        (tmp / "synth.data").write_text(f"classes = {classes}\ntrain = train.txt\nvalid = valid.txt\n"
                                        f"names = synth.names\n")
    return out / "synth.data"
