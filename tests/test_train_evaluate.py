"""Evaluation: hand-made cases with known AP, and the whole predictor path against an oracle."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from slimyolo.darknet.graph import Head
from slimyolo.progress import Count
from slimyolo.train.evaluate import compute_ap, evaluate_detections, evaluate_predictor

A = [0, 10, 10, 50, 50]  # class 0 target
B = [0, 60, 60, 100, 100]  # class 0 target
C = [1, 10, 60, 50, 100]  # class 1 target


def det(box, score, cls):
    return [*box[1:], score, cls]


def test_perfect():
    r = evaluate_detections([np.array([det(A, 0.9, 0), det(B, 0.8, 0), det(C, 0.7, 1)])], [np.array([A, B, C])], 2)
    assert (r.map50, r.precision, r.recall, r.f1) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert [row["ap50"] for row in r.per_class] == [1.0, 1.0] and r.targets == 3


def test_empty_detections_and_empty_data():
    r = evaluate_detections([np.zeros((0, 6))], [np.array([A, C])], 2)
    assert (r.map50, r.precision, r.recall, r.f1) == (0.0, 0.0, 0.0, 0.0)
    r = evaluate_detections([], [], 2)
    assert r.map50 == 0.0 and r.images == 0


def test_half_found():
    r = evaluate_detections([np.array([det(A, 0.9, 0)])], [np.array([A, B])], 1)
    assert r.map50 == pytest.approx(0.5) and r.recall == pytest.approx(0.5) and r.precision == 1.0


def test_duplicates_are_false_positives():
    shifted = [0, 11, 11, 50, 50]
    r = evaluate_detections([np.array([det(A, 0.9, 0), det(shifted, 0.8, 0)])], [np.array([A])], 1)
    # The first detection takes the target; the duplicate is a false positive ranked below it,
    # so AP stays 1 (all-point envelope) while precision at score 0.1 is 1/2.
    assert r.map50 == pytest.approx(1.0) and r.precision == pytest.approx(0.5) and r.recall == 1.0
    # Ranked above the true positive, a false positive does lower AP: 1 target, P = 1/2 at R = 1.
    r = evaluate_detections([np.array([det([0, 200, 200, 240, 240], 0.95, 0), det(A, 0.9, 0)])], [np.array([A])], 1)
    assert r.map50 == pytest.approx(0.5)


def test_wrong_class_scores_nothing():
    r = evaluate_detections([np.array([det(A, 0.9, 1)])], [np.array([A])], 2)
    assert r.map50 == 0.0
    assert r.per_class[1]["targets"] == 0 and r.per_class[1]["ap50"] is None  # no ground truth: not averaged


def test_known_ranking_ap():
    # 3 targets; ranked detections TP, FP, TP, FP → P/R points (1, 1/3), (2/3, 2/3): AP = 1/3 + 2/9.
    far = [0, 300, 300, 340, 340]
    dets = np.array([det(A, 0.9, 0), det(far, 0.8, 0), det(B, 0.7, 0), det(far, 0.6, 0)])
    r = evaluate_detections([dets], [np.array([A, B, [0, 120, 120, 160, 160]])], 1)
    assert r.map50 == pytest.approx(1 / 3 + 2 / 9)
    assert r.recall == pytest.approx(2 / 3) and r.precision == pytest.approx(0.5)  # read at score 0.1


def test_iou_threshold_is_strictly_above_half():
    # Same height, shifted right: IoU = overlap / (2·40 − overlap) in width.
    def shifted(dx):
        return [0, 10 + dx, 10, 50 + dx, 50]

    assert evaluate_detections([np.array([det(shifted(12), 0.9, 0)])], [np.array([A])], 1).map50 == 1.0  # IoU .54
    assert evaluate_detections([np.array([det(shifted(14), 0.9, 0)])], [np.array([A])], 1).map50 == 0.0  # IoU .48


def test_detections_in_images_without_targets_are_false_positives():
    r = evaluate_detections([np.array([det(A, 0.9, 0)]), np.array([det(A, 0.95, 0)])],
                            [np.array([A]), np.zeros((0, 5))], 1)
    assert r.map50 == pytest.approx(0.5)


def test_compute_ap_all_point():
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def test_as_dict_is_json():
    r = evaluate_detections([np.array([det(A, 0.9, 0)])], [np.array([A])], 2, names=["a", "b"])
    doc = json.loads(json.dumps(r.as_dict()))
    assert {"precision", "recall", "map50", "f1", "per_class"} <= set(doc)
    assert doc["per_class"][0] == {"class": 0, "name": "a", "targets": 1, "precision": 1.0, "recall": 1.0,
                                   "ap50": 1.0, "f1": pytest.approx(1.0)}


STRIDE, ANCHOR = 32, (40.0, 40.0)
HEAD = Head(layer=1, stride=STRIDE, anchors=(ANCHOR,), classes=2)


def _oracle(batch: np.ndarray) -> list[np.ndarray]:
    """Find the red (class 0) and green (class 1) rectangles in a letterboxed RGB batch and
    write them into a raw head exactly as a perfect network would."""
    n, _, h, w = batch.shape
    raw = np.full((n, 7, h // STRIDE, w // STRIDE), -12.0, np.float32)
    for i, img in enumerate(batch):
        for cls, channel in ((0, 0), (1, 1)):
            others = [c for c in range(3) if c != channel]
            mask = ((img[channel] > 0.8) & (img[others].max(0) < 0.2)).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for x, y, bw, bh, _ in stats[1:count]:
                cx, cy = x + bw / 2, y + bh / 2
                gx, gy = int(cx // STRIDE), int(cy // STRIDE)
                fx, fy = np.clip([cx / STRIDE - gx, cy / STRIDE - gy], 1e-4, 1 - 1e-4)
                raw[i, 0, gy, gx] = np.log(fx / (1 - fx))
                raw[i, 1, gy, gx] = np.log(fy / (1 - fy))
                raw[i, 2, gy, gx] = np.log(bw / ANCHOR[0])
                raw[i, 3, gy, gx] = np.log(bh / ANCHOR[1])
                raw[i, 4, gy, gx] = 12.0
                raw[i, 5 + cls, gy, gx] = 12.0
    return [raw]


def test_predictor_path_with_an_oracle(tmp_path):
    """Letterbox, label mapping, decode, NMS and matching agree: a perfect predictor scores 1."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for k, (h, w) in enumerate([(300, 500), (480, 320), (256, 256), (200, 640), (333, 333)]):
        img = np.zeros((h, w, 3), np.uint8)
        labels = []
        for j, cls in enumerate((0, 1, 0)):
            bw, bh = rng.integers(w // 10, w // 5), rng.integers(h // 10, h // 5)
            x1 = int((0.1 + 0.3 * j) * w)
            y1 = int(rng.uniform(0.1, 0.6) * h)
            img[y1:y1 + bh, x1:x1 + bw] = (0, 0, 255) if cls == 0 else (0, 255, 0)  # BGR red / green
            labels.append(f"{cls} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}\n")
        cv2.imwrite(str(tmp_path / "images" / f"{k}.png"), img)
        (tmp_path / "labels" / f"{k}.txt").write_text("".join(labels))
        lines.append(f"images/{k}.png\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    (tmp_path / "t.data").write_text("classes=2\ntrain=list.txt\nvalid=list.txt\n")
    progress = []
    result = evaluate_predictor(_oracle, [HEAD], tmp_path / "t.data", (256, 320), batch_size=2,
                                progress=progress.append)
    assert result.images == 5 and result.targets == 15
    assert result.map50 == pytest.approx(1.0) and result.precision == pytest.approx(1.0)
    assert progress == [Count("eval", 2, 5), Count("eval", 4, 5), Count("eval", 5, 5)]
    # A corrupt image is skipped with its name recorded, the others still count.
    (tmp_path / "images" / "2.png").write_bytes(b"broken")
    result = evaluate_predictor(_oracle, [HEAD], tmp_path / "t.data", 256)
    assert result.images == 4 and result.skipped_images == [str(tmp_path / "images" / "2.png")]
    assert result.map50 == pytest.approx(1.0)
