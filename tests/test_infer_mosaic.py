"""Mosaic geometry: each box goes back to its own stream, clipped to its tile, NMS-ed per tile."""

from __future__ import annotations

import numpy as np
import pytest

from slimyolo.data.letterbox import letterbox
from slimyolo.errors import SlimYoloError
from slimyolo.infer.mosaic import MosaicLayout
from slimyolo.vocab import parse_grid


def _decoded(rows: list[tuple[float, float, float, float, float, int]], classes: int = 2) -> np.ndarray:
    """Decoded boxes (cx, cy, w, h, obj, class probs) in mosaic pixels."""
    out = np.zeros((len(rows), 5 + classes), np.float32)
    for i, (cx, cy, w, h, obj, c) in enumerate(rows):
        out[i, :5] = cx, cy, w, h, obj
        out[i, 5 + c] = 1.0
    return out


def test_compose_places_each_stream_in_its_tile():
    layout = MosaicLayout(2, 64, 96)
    images = [np.full((40 + 10 * i, 80, 3), 50 * (i + 1), np.uint8) for i in range(3)]
    canvas, placements = layout.compose([*images, None])
    assert canvas.shape == (128, 192, 3)
    for t, image in enumerate(images):
        x, y = layout.origin(t)
        tile, lb = letterbox(image, 64, 96)
        assert np.array_equal(canvas[y:y + 64, x:x + 96], tile)
        assert placements[t] == lb
    assert placements[3] is None and (canvas[64:, 96:] == 114).all()


def test_split_maps_boxes_back_and_never_across_tiles():
    layout = MosaicLayout(2, 100, 100)
    images = [np.zeros((200, 200, 3), np.uint8)] * 4  # scale 0.5 into each tile, no padding
    _, placements = layout.compose(images)
    decoded = _decoded([
        (50, 50, 20, 20, 0.9, 0),     # tile 0, centre
        (150, 50, 20, 20, 0.8, 1),    # tile 1
        (95, 150, 30, 20, 0.9, 0),    # tile 2, crosses into tile 3: clipped at x=100
        (105, 150, 30, 20, 0.9, 0),   # tile 3, same object seen across the border: kept (other tile)
        (160, 160, 20, 20, 0.1, 0),   # tile 3, below the threshold
    ])
    dets = layout.split(decoded, placements, conf_thres=0.25, iou_thres=0.45)
    assert [len(d) for d in dets] == [1, 1, 1, 1]
    np.testing.assert_allclose(dets[0].boxes, [[80, 80, 120, 120]])          # (40..60)·2
    np.testing.assert_allclose(dets[1].boxes, [[80, 80, 120, 120]])          # minus tile origin x=100
    assert dets[1].classes.tolist() == [1]
    np.testing.assert_allclose(dets[2].boxes, [[160, 80, 200, 120]])         # clipped to its tile
    np.testing.assert_allclose(dets[3].boxes, [[0, 80, 40, 120]])
    for d in dets:
        assert (d.boxes >= 0).all() and (d.boxes <= 200).all()


def test_split_skips_empty_tiles_and_unletterboxes_padding():
    layout = MosaicLayout(2, 100, 100)
    wide = np.zeros((50, 200, 3), np.uint8)  # scale 0.5 to 100x25, 37 px of padding above
    _, placements = layout.compose([None, wide])
    dets = layout.split(_decoded([(150, 50, 40, 20, 0.9, 1)]), placements, 0.25, 0.45)
    assert dets[0] is None
    np.testing.assert_allclose(dets[1].boxes, [[60, (40 - 37) * 2, 140, (60 - 37) * 2]])


def test_grid_parsing():
    assert parse_grid("2x2") == 2 and parse_grid("3X3") == 3
    with pytest.raises(SlimYoloError, match="must be square"):
        parse_grid("2x3")
    with pytest.raises(SlimYoloError, match="expected KxK"):
        parse_grid("four")
    with pytest.raises(SlimYoloError, match="do not fit a 2x2 mosaic"):
        MosaicLayout(2, 32, 32).compose([np.zeros((8, 8, 3), np.uint8)] * 5)
