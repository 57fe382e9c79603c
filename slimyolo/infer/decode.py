"""YOLO decode (NumPy) and NMS (OpenCV): one implementation for evaluation, inference and serving.

The raw heads of every runtime (PyTorch, Keras, OpenVINO, ONNX Runtime) are decoded here, so
the same detections come out whatever ran the network. Everything is vectorised over the
grid and the anchors; class scores are computed only for cells whose objectness passes the
threshold, which keeps the per-frame cost small when the network itself is fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from slimyolo.darknet.graph import Head

# Most candidates that go into NMS, highest scores first (ultralytics' ``max_nms``): a weak or
# freshly pruned model at a low threshold scores nearly every box, and the work per image must
# stay bounded whatever thresholds a request sends.
MAX_NMS = 30000


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return gx, gy


def decode_head(raw: np.ndarray, head: Head) -> np.ndarray:
    """Raw head (N, A·(5+C), H, W) → (N, A·H·W, 5+C): cx, cy, w, h in input pixels, obj, class probs.

    Darknet's formulas: ``xy = (σ(t)·s − (s−1)/2 + grid)·stride``, ``wh = exp(t)·anchor``; with
    ``new_coords`` the head is already logistic and ``wh = (2t)²·anchor``.
    """
    n, ch, h, w = raw.shape
    a = len(head.anchors)
    no = 5 + head.classes
    if ch != a * no:
        raise ValueError(f"head of layer {head.layer} has {ch} channels, expected {a}*(5+{head.classes})={a * no}")
    p = raw.reshape(n, a, no, h, w).astype(np.float32, copy=False)
    anchors = np.asarray(head.anchors, dtype=np.float32).reshape(1, a, 2, 1, 1)
    gx, gy = _grid(h, w)
    s = head.scale_x_y
    if head.new_coords:
        xy, wh, rest = p[:, :, 0:2], (2.0 * p[:, :, 2:4]) ** 2 * anchors, p[:, :, 4:]
    else:
        xy, rest = sigmoid(p[:, :, 0:2]), sigmoid(p[:, :, 4:])
        with np.errstate(over="ignore"):
            wh = np.exp(p[:, :, 2:4]) * anchors
    xy = xy * s - 0.5 * (s - 1.0)
    cx = (xy[:, :, 0] + gx) * head.stride
    cy = (xy[:, :, 1] + gy) * head.stride
    out = np.concatenate([cx[:, :, None], cy[:, :, None], wh, rest], axis=2)  # (N, A, no, H, W)
    return out.transpose(0, 1, 3, 4, 2).reshape(n, a * h * w, no)


def decode(raws: Sequence[np.ndarray], heads: Sequence[Head]) -> np.ndarray:
    """All heads of a batch → (N, boxes, 5+C)."""
    if len(raws) != len(heads):
        raise ValueError(f"got {len(raws)} head outputs for {len(heads)} yolo heads")
    return np.concatenate([decode_head(r, h) for r, h in zip(raws, heads, strict=True)], axis=1)


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    out[..., 0] = b[..., 0] - b[..., 2] / 2
    out[..., 1] = b[..., 1] - b[..., 3] / 2
    out[..., 2] = b[..., 0] + b[..., 2] / 2
    out[..., 3] = b[..., 1] + b[..., 3] / 2
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a (M, 4) and b (K, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float, max_det: int = 300,
        classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS, per class when ``classes`` is given; the indices kept, highest score first.

    OpenCV's compiled ``NMSBoxesBatched`` does the work: the same greedy rule as the textbook
    loop (a box survives when its IoU with every kept box is at most ``iou_thres``; equal scores
    keep their input order; any score, zero included, takes part), but in C++. OpenCV has no
    early stop at ``max_det``, and its cost grows with candidates × boxes kept, so the
    candidates go in by chunks of the highest scores: ``max_det`` of them first, then as many as
    should give the boxes still wanted at the rate kept so far (a quarter more). Each chunk runs
    together with the boxes kept so far (they outrank the chunk, so they stay kept and suppress
    exactly what they would in one run); it stops once ``max_det`` boxes are kept.
    """
    n = len(scores)
    if not n or max_det < 1:
        return np.zeros(0, np.int64)
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():  # a box of infinite size (an exp() overflow of a barely trained head) is no detection,
        idx = np.flatnonzero(finite)  # and one infinity would turn the class offset below into NaN for every box
        return idx[nms(boxes[idx], scores[idx], iou_thres, max_det, None if classes is None else classes[idx])]
    order = np.argsort(-scores, kind="stable")
    rects = boxes[order].astype(np.float64)
    rects[:, 2:] -= rects[:, :2]  # x, y, w, h as OpenCV's Rect2d
    # OpenCV separates classes by an offset of (largest coordinate + 1) per class id, which only
    # works for coordinates >= 0; boxes may reach past the image's top-left corner.
    rects[:, :2] -= min(float(rects[:, :2].min()), 0.0)
    # OpenCV sorts by score again and drops scores <= 0: it gets ranks instead (n … 1, exact in float32).
    ranked = np.arange(n, 0, -1, dtype=np.float32)
    ids = np.zeros(n, np.int32) if classes is None else classes[order].astype(np.int32)
    keep = np.zeros(0, np.int64)  # positions in ``order``
    start, chunk = 0, max_det
    while start < n and len(keep) < max_det:
        stop = min(start + chunk, n)
        candidates = np.concatenate([keep, np.arange(start, stop)])
        kept = cv2.dnn.NMSBoxesBatched(rects[candidates], ranked[candidates], ids[candidates], 0.0, iou_thres)
        keep = candidates[np.asarray(kept, np.int64).reshape(-1)]  # never empty: the first box stays
        start, chunk = stop, int(1.25 * (max_det - len(keep)) * stop / len(keep)) + 1
    return order[keep[:max_det]]


def postprocess(decoded: np.ndarray, conf_thres: float = 0.25, iou_thres: float = 0.45,
                multi_label: bool = False, max_det: int = 300, agnostic: bool = False,
                max_nms: int = MAX_NMS) -> list[np.ndarray]:
    """Decoded boxes (N, K, 5+C) → per image (M, 6) float32: x1, y1, x2, y2, score, class.

    score = objectness × class probability. ``multi_label`` keeps every class above the
    threshold for a box (what mAP evaluation at conf 0.001 uses); otherwise the best class.
    NMS is per class unless ``agnostic``, over the ``max_nms`` best-scoring candidates.
    """
    results = []
    for pred in decoded:
        pred = pred[pred[:, 4] > conf_thres]
        if not pred.shape[0]:
            results.append(np.zeros((0, 6), np.float32))
            continue
        scores = pred[:, 5:] * pred[:, 4:5]
        if multi_label:
            i, j = np.nonzero(scores > conf_thres)
            best = scores[i, j]
        else:
            j = scores.argmax(axis=1)
            best = scores[np.arange(len(j)), j]
            i = np.nonzero(best > conf_thres)[0]
            j, best = j[i], best[i]
        if len(best) > max_nms:
            top = np.sort(np.argpartition(-best, max_nms - 1)[:max_nms])  # input order kept for ties
            i, j, best = i[top], j[top], best[top]
        if not len(best):
            results.append(np.zeros((0, 6), np.float32))
            continue
        det = np.concatenate([xywh_to_xyxy(pred[i, :4]), best[:, None], j[:, None].astype(np.float32)], axis=1)
        keep = nms(det[:, :4], det[:, 4], iou_thres, max_det, None if agnostic else j)
        results.append(det[keep].astype(np.float32))
    return results


def detect(raws: Sequence[np.ndarray], heads: Sequence[Head], conf_thres: float = 0.25, iou_thres: float = 0.45,
           multi_label: bool = False, max_det: int = 300) -> list[np.ndarray]:
    """Raw heads → detections per image in network-input pixels (see :func:`postprocess`)."""
    return postprocess(decode(raws, heads), conf_thres, iou_thres, multi_label, max_det)
