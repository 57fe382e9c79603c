"""Augmentation and the training data set: determinism, box geometry, bad images."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from slimyolo.data.augment import AugmentConfig, augment_hsv, flip, letterbox_sample, random_affine
from slimyolo.data.dataset import read_data_file
from slimyolo.data.loader import YoloDataset
from slimyolo.data.synth import write_synthetic


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return read_data_file(write_synthetic(tmp_path_factory.mktemp("aug") / "d", classes=2, train=12, val=2,
                                          size=96, seed=0))


def _white_box_image(size=128, box=(30, 40, 70, 100)):
    img = np.zeros((size, size, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img, np.array([[0, x1, y1, x2, y2]], np.float32)


def _pixels_box(img):
    ys, xs = np.nonzero(img[:, :, 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_affine_moves_boxes_with_pixels(seed):
    img, boxes = _white_box_image()
    cfg = AugmentConfig(degrees=0, translate=0.1, scale=0.3, shear=0)
    out, new = random_affine(img, boxes, np.random.default_rng(seed), cfg)
    assert out.shape == img.shape and len(new) == 1
    np.testing.assert_allclose(new[0, 1:], _pixels_box(out), atol=1.5)


def test_affine_with_border_cuts_mosaic_canvas_to_size():
    img, boxes = _white_box_image(256, (100, 100, 160, 140))
    out, new = random_affine(img, boxes, np.random.default_rng(0), AugmentConfig(scale=0.0, translate=0.0),
                             border=64)
    assert out.shape == (128, 128, 3)
    np.testing.assert_allclose(new[0, 1:], [36, 36, 96, 76], atol=1e-3)  # centred crop of the canvas


def test_flip_moves_boxes_with_pixels():
    img, boxes = _white_box_image()
    out, new = flip(img, boxes, np.random.default_rng(0), AugmentConfig(fliplr=1.0, flipud=1.0))
    np.testing.assert_allclose(new[0, 1:], _pixels_box(out))


def test_hsv_changes_colours_not_shape():
    img = np.full((8, 8, 3), (40, 120, 200), np.uint8)
    before = img.copy()
    augment_hsv(img, np.random.default_rng(1), 0.015, 0.7, 0.4)
    assert img.shape == before.shape and not np.array_equal(img, before)


def test_letterbox_sample_matches_shared_letterbox():
    img = np.zeros((50, 100, 3), np.uint8)
    canvas, boxes = letterbox_sample(img, np.array([[1, 0.5, 0.5, 1.0, 1.0]], np.float32), 64)
    assert canvas.shape == (64, 64, 3)
    np.testing.assert_allclose(boxes, [[1, 0, 16, 64, 48]])  # the whole image, centred vertically


def test_samples_are_deterministic_per_seed_epoch_index(spec):
    ds = YoloDataset(spec.train, spec.classes, 64, AugmentConfig(), seed=3)
    a_img, a_t, _ = ds[5]
    b_img, b_t, _ = ds[5]
    assert torch.equal(a_img, b_img) and torch.equal(a_t, b_t)
    ds.set_epoch(1)
    c_img, _, _ = ds[5]
    assert not torch.equal(a_img, c_img)
    other = YoloDataset(spec.train, spec.classes, 64, AugmentConfig(), seed=4)
    assert not torch.equal(a_img, other[5][0])
    for i in range(len(ds)):
        img, targets, failed = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and not failed
        assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 4:] > 0).all()


def test_collate_numbers_images(spec):
    ds = YoloDataset(spec.train, spec.classes, 64, None)
    imgs, targets, failed = YoloDataset.collate([ds[0], ds[1], ds[2]])
    assert imgs.shape == (3, 3, 64, 64) and not failed
    counts = [len(ds.labels[i]) for i in range(3)]
    assert targets[:, 0].tolist() == [float(i) for i, n in enumerate(counts) for _ in range(n)]


def test_unreadable_image_is_replaced_and_reported(spec, tmp_path, caplog):
    broken = tmp_path / "images" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    ds = YoloDataset([broken, *spec.train[:3]], spec.classes, 64, AugmentConfig(mosaic=1.0))
    with caplog.at_level(logging.WARNING):
        samples = [ds[i] for i in range(4)]
    failed = [p for _, _, f in samples for p in f]
    assert failed == [str(broken)]  # reported once, by the sample that met it
    assert "broken.jpg: cannot decode image" in caplog.text
    assert all(s[0].shape == (3, 64, 64) for s in samples)
    # Without augmentation the broken image's slot shows the next readable image.
    plain = YoloDataset([broken, *spec.train[:3]], spec.classes, 64, None)
    assert torch.equal(plain[0][0], plain[1][0])


def test_mosaic_keeps_objects(spec):
    ds = YoloDataset(spec.train, spec.classes, 96, AugmentConfig(mosaic=1.0, scale=0.0, translate=0.0))
    total = sum(len(ds[i][1]) for i in range(len(ds)))
    assert total > 0
    img = ds[0][0].numpy().transpose(1, 2, 0)
    # A mosaic has grey padding (114) or image content, never black borders from the warp.
    assert (cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) > 0).mean() > 0.99
