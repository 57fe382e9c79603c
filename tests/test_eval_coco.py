"""COCO JSON out of ``slimyolo eval``: pycocotools scores the detections ``eval`` scored and agrees.

``--save-json`` writes the results list (boxes in the original images' pixels), ``--save-gt-json``
(and :func:`slimyolo.data.coco_format.write_coco_ground_truth`) the ground truth from the label files.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from slimyolo.darknet.graph import Head
from slimyolo.data.coco_format import image_ids, write_coco_ground_truth
from slimyolo.errors import SlimYoloError
from slimyolo.train.evaluate import evaluate_predictor

MAX_DET = 300  # detections evaluate keeps per image (slimyolo.infer.decode's max_det)


def coco_map50(gt_json: Path, dt_json: Path) -> tuple[float, float]:
    """pycocotools' AP@0.5 and AP@[.5:.95] (all areas, up to MAX_DET detections an image)."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        gt = COCO(str(gt_json))
        e = COCOeval(gt, gt.loadRes(str(dt_json)), "bbox")
        e.params.maxDets = [1, 10, MAX_DET]
        e.evaluate()
        e.accumulate()
        e.summarize()
    # stats[0] reads maxDets 100, which is no longer in params.maxDets: take AP@[.5:.95] from the table
    precision = e.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall points x classes, all areas
    return float(e.stats[1]), float(precision[precision > -1].mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tests/conftest.py's mini detector trained 30 epochs on 128 synthetic images (about 12 s on
    one core): mAP@0.5 about 0.55 on 32 validation images, far enough from 0 and 1 for a comparison
    to mean something (trained_mini stops near 0.17)."""
    import torch
    from conftest import MINI_CFG

    from slimyolo.data.augment import AugmentConfig
    from slimyolo.data.synth import write_synthetic
    from slimyolo.train.config import TrainConfig
    from slimyolo.train.trainer import train

    root = tmp_path_factory.mktemp("coco-trained")
    data = write_synthetic(root / "synth", classes=2, train=128, val=32, size=96, seed=0)
    (root / "mini.cfg").write_text(MINI_CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(data=str(data), cfg=str(root / "mini.cfg"), out=str(root / "run"), img_size=96,
                                   epochs=30, batch_size=8, optimizer="adam", lr0=0.005, threads=1,
                                   eval_interval=1000, augment=AugmentConfig(mosaic=0.0)))
    finally:
        torch.set_num_threads(threads)
    return result.best, data


def test_pycocotools_agrees_with_eval(trained, run_cli, tmp_path):
    weights, data = trained
    dt_json, gt_json = tmp_path / "out" / "dt.json", tmp_path / "gt.json"
    code, out, err = run_cli("eval", "--weights", weights, "--data", data, "--json", "--save-json", dt_json,
                             "--save-gt-json", gt_json)
    assert code == 0, err
    metrics = json.loads(out)  # stdout stays one JSON document; the "wrote ..." lines go to stderr
    assert str(dt_json) in err and str(gt_json) in err
    assert 0.2 < metrics["map50"] < 0.9, metrics  # a trained model, neither hopeless nor perfect

    coco50, _ = coco_map50(gt_json, dt_json)
    print(f"eval mAP@0.5 {metrics['map50']:.4f}, pycocotools AP@0.5 {coco50:.4f}")
    # 101-point (COCO) against all-point (ultralytics) interpolation, and COCO's matching: close, not equal.
    assert coco50 == pytest.approx(metrics["map50"], abs=0.02)

    results, gt = json.loads(dt_json.read_text()), json.loads(gt_json.read_text())
    assert len(gt["images"]) == metrics["images"] == 32 and len(gt["annotations"]) == metrics["targets"]
    assert {c["id"]: c["name"] for c in gt["categories"]} == {0: "circle", 1: "square"}
    assert all(isinstance(r["image_id"], int) for r in results)  # the synthetic set's stems are all digits
    assert {r["image_id"] for r in results} <= {i["id"] for i in gt["images"]} == set(range(32))
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() <= MAX_DET and min(r["score"] for r in results) >= 0.001
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    for r in results:  # inside the 96 x 96 originals
        x, y, w, h = r["bbox"]
        assert min(x, y, w, h) >= 0 and x + w <= 96.001 and y + h <= 96.001
    # The library writes the same ground truth without a model.
    assert json.loads(write_coco_ground_truth(tmp_path / "gt2.json", data).read_text()) == gt


STRIDE, ANCHOR = 32, (40.0, 40.0)
HEAD = Head(layer=1, stride=STRIDE, anchors=(ANCHOR,), classes=2)


def _oracle(batch: np.ndarray) -> list[np.ndarray]:
    """A perfect network: finds the red (class 0) and green (class 1) rectangles of a letterboxed
    RGB batch and writes them into a raw head."""
    n, _, h, w = batch.shape
    raw = np.full((n, 7, h // STRIDE, w // STRIDE), -12.0, np.float32)
    for i, img in enumerate(batch):
        for cls in (0, 1):
            others = [c for c in range(3) if c != cls]
            mask = ((img[cls] > 0.5) & (img[others].max(0) < 0.5)).astype(np.uint8)
            count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for x, y, bw, bh, _ in stats[1:count]:
                cx, cy = x + bw / 2, y + bh / 2
                gx, gy = int(cx // STRIDE), int(cy // STRIDE)
                fx, fy = np.clip([cx / STRIDE - gx, cy / STRIDE - gy], 1e-4, 1 - 1e-4)
                raw[i, :5, gy, gx] = [np.log(fx / (1 - fx)), np.log(fy / (1 - fy)), np.log(bw / ANCHOR[0]),
                                      np.log(bh / ANCHOR[1]), 12.0]
                raw[i, 5 + cls, gy, gx] = 12.0
    return [raw]


def _rectangles(root: Path, names: list[str], sizes: list[tuple[int, int]]) -> Path:
    """Black images of the given (h, w) with three red/green rectangles each, their labels, a .data file."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in zip(names, sizes, strict=True):
        img = np.zeros((h, w, 3), np.uint8)
        labels = []
        for j, cls in enumerate((0, 1, 0)):
            bw, bh = rng.integers(w // 10, w // 5), rng.integers(h // 10, h // 5)
            x1, y1 = int((0.1 + 0.3 * j) * w), int(rng.uniform(0.1, 0.6) * h)
            img[y1:y1 + bh, x1:x1 + bw] = (0, 0, 255) if cls == 0 else (0, 255, 0)  # BGR red / green
            labels.append(f"{cls} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}\n")
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
        (root / "labels" / f"{name}.txt").write_text("".join(labels))
    (root / "list.txt").write_text("".join(f"images/{n}.png\n" for n in names))
    (root / "t.data").write_text("classes=2\ntrain=list.txt\nvalid=list.txt\n")
    return root / "t.data"


def test_boxes_are_in_original_pixels(tmp_path):
    """Non-square images through a non-square letterbox: a perfect predictor's results, written by
    evaluate, score 1 in pycocotools against the ground truth from the labels, box for box."""
    names = ["0007", "cat-3", "12", "IMG_0042", "000"]
    sizes = [(300, 500), (480, 320), (200, 640), (333, 333), (250, 260)]
    data = _rectangles(tmp_path / "set", names, sizes)
    dt_json, gt_json = tmp_path / "dt.json", tmp_path / "gt.json"
    result = evaluate_predictor(_oracle, [HEAD], data, (256, 320), batch_size=2, save_json=dt_json,
                                save_gt_json=gt_json)
    assert result.map50 == pytest.approx(1.0) and result.targets == 15

    results, gt = json.loads(dt_json.read_text()), json.loads(gt_json.read_text())
    ids = ["0007", "cat-3", "12", "IMG_0042", "000"]  # strings all: pycocotools cannot sort a mix of int and str
    assert [i["id"] for i in gt["images"]] == ids
    assert [(i["height"], i["width"]) for i in gt["images"]] == sizes
    assert [i["file_name"] for i in gt["images"]] == [f"images/{n}.png" for n in names]
    assert {r["image_id"] for r in results} == set(ids)
    assert len(results) == 15  # one detection per rectangle
    assert json.loads(write_coco_ground_truth(tmp_path / "gt2.json", data).read_text()) == gt

    # Each detection lies on its label's box in the original image, to about a pixel of the network
    # input (1 / ratio original pixels; the ratio is at most 1.28 here, at least 0.5).
    by_image: dict = {}
    for a in gt["annotations"]:
        by_image.setdefault((a["image_id"], a["category_id"]), []).append(np.array(a["bbox"]))
    for r in results:
        truth = by_image[(r["image_id"], r["category_id"])]
        err = min(np.abs(np.array(r["bbox"]) - t).max() for t in truth)
        assert err <= 2.5, (r, truth)
    ap50, ap = coco_map50(gt_json, dt_json)
    assert ap50 == pytest.approx(1.0) and ap > 0.9


def test_image_ids():
    assert image_ids(["a/b/000123.jpg", "7.png", "c/0.png"]) == [123, 7, 0]  # every stem all digits: ints
    assert image_ids(["a/000123.jpg", "x/cat-3.jpg"]) == ["000123", "cat-3"]  # else strings, every one
    assert image_ids(["12a.png"]) == ["12a"] and image_ids(["٣.png"]) == ["٣"]  # ASCII digits only


def test_same_id_twice_fails_before_predicting(tmp_path):
    data = _rectangles(tmp_path / "set", ["7", "007"], [(64, 64), (64, 64)])

    def predict(batch):
        raise AssertionError("evaluate ran")

    with pytest.raises(SlimYoloError, match=r"7\.png and .*007\.png have the same COCO image id 7"):
        evaluate_predictor(predict, [HEAD], data, 64, save_json=tmp_path / "dt.json")
    assert not (tmp_path / "dt.json").exists()
    # Without COCO output the stems do not matter.
    with pytest.raises(AssertionError, match="evaluate ran"):
        evaluate_predictor(predict, [HEAD], data, 64)


def test_unwritable_save_json_fails_first(run_cli, tmp_path):
    """The path is checked before the model loads: no weights are needed to see the error."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    for path in (tmp_path / "a-file" / "dt.json", tmp_path / "a-folder"):
        code, out, err = run_cli("eval", "--weights", tmp_path / "missing.pt", "--data", tmp_path, "--json",
                                 "--save-json", path)
        assert code == 2 and out == "" and f"--save-json {path}" in err, err
    code, _, err = run_cli("eval", "--weights", tmp_path / "missing.pt", "--data", tmp_path,
                           "--save-gt-json", tmp_path / "a-file" / "gt.json")
    assert code == 2 and "--save-gt-json" in err and "is not a folder" in err, err
