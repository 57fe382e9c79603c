"""YOLO decode and NMS against a cell-by-cell reference and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimyolo.darknet.graph import Head
from slimyolo.infer.decode import box_iou, decode_head, detect, nms, postprocess


def _reference(raw: np.ndarray, head: Head) -> list[list[float]]:
    """Darknet's yolo_layer box formula written out one cell at a time."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    _, _, h, w = raw.shape
    no = 5 + head.classes
    s = head.scale_x_y
    rows = []
    for a, (aw, ah) in enumerate(head.anchors):
        for y in range(h):
            for x in range(w):
                t = raw[0, a * no:(a + 1) * no, y, x]
                if head.new_coords:
                    bx, by = t[0] * s - (s - 1) / 2, t[1] * s - (s - 1) / 2
                    bw, bh = (2 * t[2]) ** 2 * aw, (2 * t[3]) ** 2 * ah
                    rest = list(t[4:])
                else:
                    bx, by = sig(t[0]) * s - (s - 1) / 2, sig(t[1]) * s - (s - 1) / 2
                    bw, bh = math.exp(t[2]) * aw, math.exp(t[3]) * ah
                    rest = [sig(v) for v in t[4:]]
                rows.append([(bx + x) * head.stride, (by + y) * head.stride, bw, bh, *rest])
    return rows


@pytest.mark.parametrize("new_coords", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1.2])
def test_decode_matches_cell_by_cell_reference(new_coords, scale):
    rng = np.random.default_rng(0)
    head = Head(layer=5, stride=16, anchors=((10, 14), (23, 27), (37, 58)), classes=2, scale_x_y=scale,
                new_coords=new_coords)
    raw = rng.normal(size=(1, 3 * 7, 4, 5)).astype(np.float32)
    if new_coords:
        raw = 1 / (1 + np.exp(-raw))
    np.testing.assert_allclose(decode_head(raw, head)[0], np.array(_reference(raw, head)), rtol=1e-5, atol=1e-4)


def test_decode_rejects_wrong_channel_count():
    head = Head(layer=3, stride=8, anchors=((1, 1),), classes=2)
    with pytest.raises(ValueError, match="expected 1\\*\\(5\\+2\\)=7"):
        decode_head(np.zeros((1, 8, 2, 2), np.float32), head)


def test_nms_hand_cases():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]  # 3 beats 0 (IoU .95), 0 would suppress 1
    assert nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]
    assert nms(boxes, scores, 0.5, max_det=1).tolist() == [3]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_nms_drops_boxes_of_infinite_size_and_keeps_the_others_as_without_them():
    """A barely trained head can overflow exp() into an infinite box: without the check one infinity turned the
    class offset into NaN for every box (and a RuntimeWarning in the evaluation)."""
    boxes = np.array([[0, 0, 10, 10], [-np.inf, 0, np.inf, 5], [1, 1, 11, 11], [20, 20, 30, 30],
                      [np.nan, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.99, 0.8, 0.7, 0.95], np.float32)
    classes = np.array([0, 0, 1, 0, 1])
    with np.errstate(invalid="raise"):
        assert nms(boxes, scores, 0.5, classes=classes).tolist() == [0, 2, 3]
        assert nms(boxes, scores, 0.5).tolist() == [0, 3]
        assert nms(boxes[1:2], scores[1:2], 0.5).tolist() == []


def test_postprocess_is_per_class_and_scores_are_obj_times_cls():
    # Two overlapping boxes of different classes survive; same class would be merged.
    pred = np.array([[[50, 50, 20, 20, 0.9, 0.8, 0.1],
                      [51, 51, 20, 20, 0.8, 0.1, 0.9],
                      [52, 50, 20, 20, 0.7, 0.9, 0.0],
                      [200, 200, 10, 10, 0.001, 1.0, 0.0]]], np.float32)
    (det,) = postprocess(pred, conf_thres=0.05, iou_thres=0.5)
    assert det[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(det[:, 4], [0.72, 0.72], rtol=1e-6)
    np.testing.assert_allclose(det[0, :4], [40, 40, 60, 60])
    (multi,) = postprocess(pred, conf_thres=0.05, iou_thres=0.5, multi_label=True)
    assert sorted(multi[:, 5].tolist()) == [0, 1]
    (agn,) = postprocess(pred, conf_thres=0.05, iou_thres=0.5, agnostic=True)
    assert len(agn) == 1
    (none,) = postprocess(pred, conf_thres=0.95)
    assert none.shape == (0, 6)


def test_detect_finds_a_planted_box():
    head = Head(layer=1, stride=32, anchors=((64, 64),), classes=3)
    raw = np.full((2, 8, 4, 4), -10.0, np.float32)
    raw[1, 0:2, 2, 1] = 0.0          # centre of cell (x=1, y=2)
    raw[1, 2:4, 2, 1] = math.log(1.5)  # 96x96 box
    raw[1, 4, 2, 1] = 5.0            # objectness
    raw[1, 5 + 2, 2, 1] = 5.0        # class 2
    empty, det = detect([raw], [head], conf_thres=0.5)
    assert empty.shape == (0, 6)
    np.testing.assert_allclose(det[0, :4], [48 - 48, 80 - 48, 48 + 48, 80 + 48], atol=1e-4)
    assert det[0, 5] == 2


def _greedy(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """The textbook greedy NMS, one box at a time, per class (the reference for OpenCV's)."""
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        same = [k for k in keep if classes[k] == classes[i]]
        if not same or box_iou(boxes[i:i + 1], boxes[same]).max() <= iou:
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("max_det", [5, 300, 5000])
def test_nms_matches_the_greedy_loop_per_class_across_chunks(max_det):
    rng = np.random.default_rng(1)
    n = 1500  # two OpenCV chunks; boxes reach past the top-left corner (negative coordinates)
    xy = rng.uniform(-40, 400, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 80, (n, 2))], axis=1).astype(np.float32)
    scores = np.round(rng.random(n), 2).astype(np.float32)  # many equal scores: ties keep input order
    classes = rng.integers(0, 3, n)
    expected = _greedy(boxes, scores, classes, 0.45)
    assert len(expected) > 300
    assert nms(boxes, scores, 0.45, max_det, classes).tolist() == expected[:max_det]
    agnostic = _greedy(boxes, scores, np.zeros(n, int), 0.45)
    assert nms(boxes, scores, 0.45, max_det).tolist() == agnostic[:max_det]


def test_postprocess_caps_the_candidates_before_nms():
    # 50 disjoint boxes: NMS keeps them all, unless only the best max_nms of them go in.
    k = np.arange(50, dtype=np.float32)
    pred = np.stack([k * 40 + 10, np.full(50, 10.0), np.full(50, 8.0), np.full(50, 8.0), 0.5 + k / 100,
                     np.ones(50), np.zeros(50)], axis=1)[None].astype(np.float32)
    assert len(postprocess(pred, conf_thres=0.1)[0]) == 50
    (det,) = postprocess(pred, conf_thres=0.1, max_nms=7)
    np.testing.assert_allclose(det[:, 4], 0.5 + np.arange(49, 42, -1) / 100, rtol=1e-6)
