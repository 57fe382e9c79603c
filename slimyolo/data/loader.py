"""The PyTorch training data set: darknet-layout images and labels through the augmentation.

Bad data never stops an epoch: malformed label lines are skipped when the data set is built
(each with a warning naming the file and line, counted in :attr:`YoloDataset.labels_report`),
and an image that cannot be decoded is replaced by the next readable one, with a warning the
first time. Each batch carries the paths that failed while it was made, so the trainer can
count them even when the loader runs in worker processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slimyolo.data.augment import (
    AugmentConfig,
    augment_hsv,
    flip,
    letterbox_sample,
    mosaic,
    pixels_to_normalised,
    random_affine,
    resize_long_side,
)
from slimyolo.data.dataset import LabelReport, load_image, read_labels
from slimyolo.errors import SlimYoloError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


class YoloDataset(Dataset):
    """Images → (uint8 RGB CHW tensor ``size``×``size``, targets (K, 6) ``0, class, cx, cy, w, h``, bad paths).

    With ``augment=None`` a sample is the letterboxed image (what evaluation sees). With an
    :class:`AugmentConfig`, sample ``i`` of epoch ``e`` is drawn from
    ``default_rng((seed, e, i))``; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, images: list[Path], classes: int, size: int, augment: AugmentConfig | None = None,
                 seed: int = 0) -> None:
        if not images:
            raise SlimYoloError("the training split lists no images")
        self.images = list(images)
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.labels_report = LabelReport()
        self.labels = [read_labels(p, classes, self.labels_report) for p in self.images]
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _read(self, index: int, failed: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` (or the next readable one) and its normalised labels."""
        n = len(self.images)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return load_image(self.images[i]), self.labels[i]
            except SlimYoloError as exc:
                self._bad.add(i)
                failed.append(str(self.images[i]))
                log.warning("%s; using another image in its place", exc)
        raise SlimYoloError(f"none of the {n} training images can be read")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        failed: list[str] = []
        s, aug = self.size, self.augment
        if aug is None:
            img, labels = self._read(index, failed)
            img, boxes = letterbox_sample(img, labels, s)
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            if rng.random() < aug.mosaic:
                others = rng.integers(0, len(self.images), 3).tolist()

                def load_tile(i: int) -> tuple[np.ndarray, np.ndarray]:
                    tile, labels = self._read(i, failed)
                    return resize_long_side(tile, s), labels

                img, boxes = mosaic(load_tile, [index, *others], s, rng)
                img, boxes = random_affine(img, boxes, rng, aug, border=s // 2)
            else:
                img, labels = self._read(index, failed)
                img, boxes = letterbox_sample(img, labels, s)
                img, boxes = random_affine(img, boxes, rng, aug)
            augment_hsv(img, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
            img, boxes = flip(img, boxes, rng, aug)
        targets = torch.zeros((len(boxes), 6))
        if len(boxes):
            targets[:, 1:] = torch.from_numpy(pixels_to_normalised(boxes, s, s))
        chw = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
        return chw, targets, failed

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> Batch:
        """Stack images; targets get their image index in column 0; failed paths are merged."""
        images, targets, failed = zip(*batch, strict=True)
        for i, t in enumerate(targets):
            t[:, 0] = i
        return torch.stack(images), torch.cat(targets, 0), [p for f in failed for p in f]
