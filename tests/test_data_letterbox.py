"""Letterbox placement and its inverse."""

from __future__ import annotations

import numpy as np
import pytest

from slimyolo.data.letterbox import letterbox, unletterbox_boxes


@pytest.mark.parametrize(("h", "w", "net_h", "net_w"), [(300, 500, 416, 416), (480, 640, 256, 320),
                                                        (100, 80, 416, 416), (416, 416, 416, 416)])
def test_letterbox_places_and_inverts(h, w, net_h, net_w):
    img = np.full((h, w, 3), 200, np.uint8)
    out, lb = letterbox(img, net_h, net_w)
    assert out.shape == (net_h, net_w, 3)
    # The image occupies a centred rectangle; the rest is grey 114.
    ys, xs = np.nonzero(out[:, :, 0] == 200)
    assert abs(xs.min() - (net_w - 1 - xs.max())) <= 1 and abs(ys.min() - (net_h - 1 - ys.max())) <= 1
    assert (out[:, :, 0] != 200).sum() == (out[:, :, 0] == 114).sum()
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    np.testing.assert_allclose(unletterbox_boxes(box, lb), [[0, 0, w, h]], atol=1.0)


def test_unletterbox_clips_to_the_image():
    _, lb = letterbox(np.zeros((100, 200, 3), np.uint8), 128, 128)
    out = unletterbox_boxes(np.array([[-50, -50, 500, 500]], np.float32), lb)
    assert out.tolist() == [[0, 0, 200, 100]]
