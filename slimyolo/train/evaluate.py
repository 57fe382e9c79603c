"""Evaluation: precision, recall, mAP@0.5 and F1, computed as ultralytics/yolov3's test.py does.

Three layers, so every runtime gets the same numbers from the same code:

- :func:`evaluate_detections` works on plain arrays (detections and ground truth per image);
- :func:`evaluate_predictor` runs any ``predict`` function (PyTorch, OpenVINO, ONNX Runtime)
  over a data set split: letterbox (:mod:`slimyolo.data.letterbox`), raw heads, decode + NMS
  (:mod:`slimyolo.infer.decode`, multi-label at conf 0.001), then :func:`evaluate_detections`;
- :func:`evaluate` wraps a :class:`~slimyolo.darknet.model.Darknet` as such a predictor.

Both can also write the detections they scored in the COCO results format (``save_json``, boxes
in the original image's pixels) and the split's ground truth as COCO JSON (``save_gt_json``), so
pycocotools can check the numbers (:mod:`slimyolo.data.coco_format`).

The metric follows ultralytics/yolov3: detections of an image are matched greedily in score
order, each to its highest-IoU ground-truth box of the same class, a match counting when the
IoU exceeds 0.5 and the box is not already taken; AP is the all-point interpolated area under
the precision envelope (sentinels (0, 1) … (min(r_max + 1e-3, 1), 0)); P and R are read off the
curves at score 0.1 (ultralytics' ``pr_score``: at conf 0.001 the last point says little);
F1 = 2PR/(P+R). Class means are over the classes that have ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from slimyolo.darknet.graph import Head
from slimyolo.data.coco_format import CocoGroundTruth, check_writable, image_ids, result_records, write_coco_results
from slimyolo.data.dataset import DataSpec, LabelReport, load_image, read_data_file, read_labels
from slimyolo.data.letterbox import letterbox, unletterbox_boxes
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import box_iou, detect
from slimyolo.progress import Count, Progress
from slimyolo.train.options import EvalOptions

if TYPE_CHECKING:
    from slimyolo.darknet.model import Darknet

log = logging.getLogger(__name__)

IOU_MATCH = 0.5  # mAP@0.5
PR_SCORE = 0.1  # the score at which P and R are reported (ultralytics' pr_score)


@dataclass
class EvalResult:
    """Mean and per-class metrics. ``per_class`` has one dict per class of the data set;
    a class without ground truth has ``None`` metrics and does not count in the means."""

    precision: float
    recall: float
    map50: float
    f1: float
    per_class: list[dict[str, Any]]
    images: int = 0
    targets: int = 0
    skipped_images: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "map50": self.map50, "f1": self.f1,
                "per_class": self.per_class, "images": self.images, "targets": self.targets,
                "skipped_images": len(self.skipped_images)}


def match_detections(det: np.ndarray, tgt: np.ndarray, iou_thres: float = IOU_MATCH) -> np.ndarray:
    """Which detections (M, 6), sorted by score, are true positives against targets (K, 5)."""
    correct = np.zeros(len(det), bool)
    if not len(det) or not len(tgt):
        return correct
    taken: set[int] = set()
    for cls in np.unique(tgt[:, 0]):
        ti = np.nonzero(tgt[:, 0] == cls)[0]
        pi = np.nonzero(det[:, 5] == cls)[0]
        if not len(pi):
            continue
        iou = box_iou(det[pi, :4], tgt[ti, 1:5])
        best, arg = iou.max(axis=1), iou.argmax(axis=1)
        for j in np.nonzero(best > iou_thres)[0]:
            d = int(ti[arg[j]])
            if d not in taken:
                taken.add(d)
                correct[pi[j]] = True
                if len(taken) == len(tgt):
                    return correct
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: the area under the monotone precision envelope."""
    mrec = np.concatenate(([0.0], recall, [min(recall[-1] + 1e-3, 1.0)]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_detections(detections: Sequence[np.ndarray], targets: Sequence[np.ndarray], num_classes: int,
                        names: Sequence[str] | None = None) -> EvalResult:
    """Metrics of detections against ground truth, image by image.

    ``detections[i]`` is (M, 6) ``x1, y1, x2, y2, score, class``; ``targets[i]`` is (K, 5)
    ``class, x1, y1, x2, y2``, in the same pixel space.
    """
    if len(detections) != len(targets):
        raise SlimYoloError(f"got detections for {len(detections)} images but targets for {len(targets)}")
    tps, confs, pcls, tcls = [], [], [], []
    for det, tgt in zip(detections, targets, strict=True):
        det = np.asarray(det, np.float32).reshape(-1, 6)
        tgt = np.asarray(tgt, np.float32).reshape(-1, 5)
        det = det[np.argsort(-det[:, 4], kind="stable")]
        tps.append(match_detections(det, tgt))
        confs.append(det[:, 4])
        pcls.append(det[:, 5])
        tcls.append(tgt[:, 0])
    tp, conf, pred_cls, target_cls = (np.concatenate(x) if x else np.zeros(0) for x in (tps, confs, pcls, tcls))
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order].astype(np.float64), conf[order], pred_cls[order]
    names = list(names) if names is not None else [str(c) for c in range(num_classes)]
    per_class: list[dict[str, Any]] = []
    for c in range(num_classes):
        n_gt = int((target_cls == c).sum())
        row: dict[str, Any] = {"class": c, "name": names[c], "targets": n_gt,
                               "precision": None, "recall": None, "ap50": None, "f1": None}
        if n_gt:
            sel = pred_cls == c
            p = r = ap = 0.0
            if sel.any():
                tpc = np.cumsum(tp[sel])
                fpc = np.cumsum(1 - tp[sel])
                recall = tpc / n_gt
                precision = tpc / (tpc + fpc)
                r = float(np.interp(-PR_SCORE, -conf[sel], recall))
                p = float(np.interp(-PR_SCORE, -conf[sel], precision))
                ap = compute_ap(recall, precision)
            row.update(precision=p, recall=r, ap50=ap, f1=2 * p * r / (p + r + 1e-16))
        per_class.append(row)
    scored = [row for row in per_class if row["targets"]]

    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in scored])) if scored else 0.0

    return EvalResult(mean("precision"), mean("recall"), mean("ap50"), mean("f1"), per_class,
                      images=len(targets), targets=len(target_cls))


def _as_spec(data: DataSpec | str | Path) -> DataSpec:
    return data if isinstance(data, DataSpec) else read_data_file(data)


def _hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def preprocess(img: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Any]:
    """BGR image → letterboxed float32 CHW RGB in [0, 1] (the models' input) and its placement."""
    canvas, lb = letterbox(img, height, width)
    x = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0
    return x, lb


def evaluate_predictor(predict: Callable[[np.ndarray], Sequence[np.ndarray]], heads: Sequence[Head],
                       data: DataSpec | str | Path, img_size: int | tuple[int, int],
                       batch_size: int = EvalOptions.batch_size, conf_thres: float = EvalOptions.conf_thres,
                       iou_thres: float = EvalOptions.iou_thres, split: str = "valid",
                       max_images: int | None = None, progress: Progress | None = None,
                       save_json: str | Path | None = None, save_gt_json: str | Path | None = None) -> EvalResult:
    """Evaluate any runtime on a split of a data set.

    ``predict`` maps a float32 NCHW RGB batch in [0, 1], letterboxed to ``img_size`` (int or
    (height, width)), to the raw heads (one NCHW array per head, in ``heads`` order).
    Unreadable images are skipped with a warning and listed in ``skipped_images``; malformed
    label lines are skipped with a warning. ``progress`` gets a :class:`~slimyolo.progress.Count`
    of stage ``eval`` after each batch (raise :class:`~slimyolo.errors.Cancelled` there to stop).

    ``save_json``: also write the detections scored (after ``conf_thres`` and NMS) as a COCO results
    JSON list, boxes un-letterboxed to the original image's pixels and clipped to it (see
    :mod:`slimyolo.data.coco_format`); ``save_gt_json``: also write the ground truth of the images
    scored as COCO JSON, with the same image ids. Both are written atomically after the last batch;
    a path that cannot be written, or two images with one id, fail before the first.
    """
    spec = _as_spec(data)
    h, w = _hw(img_size)
    images = spec.split(split)[:max_images] if max_images else spec.split(split)
    coco = save_json is not None or save_gt_json is not None
    ids = image_ids(images) if coco else [None] * len(images)
    if save_json is not None:
        check_writable(save_json, "COCO results file")
    if save_gt_json is not None:
        check_writable(save_gt_json, "COCO ground-truth file")
        if save_json is not None and Path(save_json).resolve() == Path(save_gt_json).resolve():
            raise SlimYoloError(f"{save_json}: the COCO results and ground-truth files must differ")
    gt = CocoGroundTruth(spec.names, spec.path.parent)
    records: list[dict[str, Any]] = []
    report = LabelReport()
    detections: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    skipped: list[str] = []
    for start in range(0, len(images), batch_size):
        batch, batch_targets, batch_coco = [], [], []
        for path, img_id in zip(images[start:start + batch_size], ids[start:start + batch_size], strict=True):
            try:
                img = load_image(path)
            except SlimYoloError as exc:
                log.warning("%s; image skipped", exc)
                skipped.append(str(path))
                continue
            x, lb = preprocess(img, h, w)
            labels = read_labels(path, spec.classes, report)
            boxes = np.empty((len(labels), 5), np.float32)
            boxes[:, 0] = labels[:, 0]
            boxes[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * lb.orig_w * lb.ratio + lb.pad_x
            boxes[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * lb.orig_h * lb.ratio + lb.pad_y
            boxes[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * lb.orig_w * lb.ratio + lb.pad_x
            boxes[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * lb.orig_h * lb.ratio + lb.pad_y
            batch.append(x)
            batch_targets.append(boxes)
            batch_coco.append((img_id, lb))
            if save_gt_json is not None:
                gt.add(img_id, path, lb.orig_h, lb.orig_w, labels)
        if batch:
            raws = predict(np.stack(batch))
            dets = detect([np.asarray(r) for r in raws], heads, conf_thres, iou_thres, multi_label=True)
            for det, (img_id, lb) in zip(dets, batch_coco, strict=True):
                det[:, [0, 2]] = det[:, [0, 2]].clip(0, w)
                det[:, [1, 3]] = det[:, [1, 3]].clip(0, h)
                detections.append(det)
                if save_json is not None:
                    orig = det.copy()
                    orig[:, :4] = unletterbox_boxes(det[:, :4], lb)
                    records.extend(result_records(img_id, orig))
            targets.extend(batch_targets)
        if progress is not None:
            progress(Count("eval", min(start + batch_size, len(images)), len(images)))
    if report.bad_lines:
        log.warning("%s: %s", spec.path, report.summary())
    result = evaluate_detections(detections, targets, spec.classes, spec.names)
    result.skipped_images = skipped
    if save_json is not None:
        write_coco_results(save_json, records)
    if save_gt_json is not None:
        gt.write(save_gt_json)
    return result


def evaluate(model: Darknet, data: DataSpec | str | Path, img_size: int | tuple[int, int] | None = None,
             batch_size: int = EvalOptions.batch_size, conf_thres: float = EvalOptions.conf_thres,
             iou_thres: float = EvalOptions.iou_thres, split: str = "valid",
             max_images: int | None = None, progress: Progress | None = None,
             save_json: str | Path | None = None, save_gt_json: str | Path | None = None) -> EvalResult:
    """Evaluate a PyTorch model (see :func:`evaluate_predictor`, also for ``save_json`` and
    ``save_gt_json``); ``img_size`` defaults to the cfg's."""
    import torch

    size = _hw(img_size) if img_size is not None else model.input_size
    param = next(model.parameters())
    was_training = model.training
    model.eval()

    @torch.no_grad()
    def predict(x: np.ndarray) -> list[np.ndarray]:
        out = model(torch.from_numpy(x).to(param.device, param.dtype))
        return [o.float().cpu().numpy() for o in out]

    try:
        return evaluate_predictor(predict, model.heads, data, size, batch_size, conf_thres, iou_thres, split,
                                  max_images, progress, save_json, save_gt_json)
    finally:
        model.train(was_training)


def evaluator(data: DataSpec | str | Path, options: EvalOptions,
              progress: Progress | None = None) -> Callable[[Darknet], EvalResult]:
    """``model -> EvalResult`` on ``data``'s validation split as ``options`` say: how ``slimyolo eval``, the eval
    stage and the prune and sweep stages score a model, every setting passed through without naming one here
    and there."""

    def score(model: Darknet) -> EvalResult:
        return evaluate(model, data, options.img_size, options.batch_size, options.conf_thres, options.iou_thres,
                        max_images=options.max_images, progress=progress)

    return score
