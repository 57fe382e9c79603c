"""The k×k mosaic: k² streams letterboxed into the tiles of one frame, one inference for all.

Four 416×416 streams become one 832×832 frame, so one inference serves four cameras (the
network is fully convolutional; :class:`~slimyolo.infer.engine.Engine` reshapes the IR to the
mosaic size). Every decoded box is assigned to the tile holding its centre, clipped to that
tile, NMS-ed only against boxes of the same tile and mapped back through that tile's
letterbox into its own source's pixels — no box can leak into a neighbour's stream.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.data.letterbox import Letterbox, letterbox, unletterbox_boxes
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import decode, postprocess, xywh_to_xyxy
from slimyolo.infer.engine import Detections, Engine, read_ir_meta
from slimyolo.infer.sources import Frame, SourceReader


class MosaicLayout:
    """Geometry of a k×k mosaic of ``tile_h``×``tile_w`` tiles."""

    def __init__(self, k: int, tile_h: int, tile_w: int, pad_value: int = 114) -> None:
        self.k, self.tile_h, self.tile_w, self.pad_value = k, tile_h, tile_w, pad_value

    @property
    def size(self) -> tuple[int, int]:
        return self.k * self.tile_h, self.k * self.tile_w

    @property
    def tiles(self) -> int:
        return self.k * self.k

    def origin(self, tile: int) -> tuple[int, int]:
        """(x, y) of the tile's top-left corner; tiles are numbered row by row."""
        return (tile % self.k) * self.tile_w, (tile // self.k) * self.tile_h

    def compose(self, images: Sequence[np.ndarray | None]) -> tuple[np.ndarray, list[Letterbox | None]]:
        """Letterbox each image into its tile; ``None`` leaves the tile grey (no stream)."""
        if len(images) > self.tiles:
            raise SlimYoloError(f"{len(images)} streams do not fit a {self.k}x{self.k} mosaic")
        h, w = self.size
        canvas = np.full((h, w, 3), self.pad_value, np.uint8)
        placements: list[Letterbox | None] = []
        for t, image in enumerate(images):
            if image is None:
                placements.append(None)
                continue
            tile, lb = letterbox(image, self.tile_h, self.tile_w, self.pad_value)
            x, y = self.origin(t)
            canvas[y:y + self.tile_h, x:x + self.tile_w] = tile
            placements.append(lb)
        return canvas, placements

    def split(self, decoded: np.ndarray, placements: Sequence[Letterbox | None], conf_thres: float,
              iou_thres: float, max_det: int = 300) -> list[Detections | None]:
        """Decoded boxes (K, 5+C) of the mosaic → detections per tile in its source's pixels."""
        xyxy = xywh_to_xyxy(decoded[:, :4])
        col = np.clip((decoded[:, 0] // self.tile_w).astype(np.int64), 0, self.k - 1)
        row = np.clip((decoded[:, 1] // self.tile_h).astype(np.int64), 0, self.k - 1)
        tile_of = row * self.k + col
        out: list[Detections | None] = []
        for t, lb in enumerate(placements):
            if lb is None:
                out.append(None)
                continue
            x0, y0 = self.origin(t)
            sel = decoded[tile_of == t]
            box = xyxy[tile_of == t]
            box[:, [0, 2]] = box[:, [0, 2]].clip(x0, x0 + self.tile_w) - x0
            box[:, [1, 3]] = box[:, [1, 3]].clip(y0, y0 + self.tile_h) - y0
            local = sel.copy()
            local[:, 0], local[:, 1] = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
            local[:, 2], local[:, 3] = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
            (det,) = postprocess(local[None], conf_thres, iou_thres, max_det=max_det)
            det[:, :4] = unletterbox_boxes(det[:, :4], lb)
            out.append(Detections.from_array(det))
        return out


class MosaicDetector:
    """Runs k² images per inference through an engine compiled at the mosaic size."""

    def __init__(self, engine: Engine, k: int) -> None:
        th, tw = engine.meta.input.height, engine.meta.input.width
        self.layout = MosaicLayout(k, th, tw, engine.meta.input.pad_value)
        if engine.input_size != self.layout.size:
            raise SlimYoloError(f"the engine runs at {engine.input_size}, the {k}x{k} mosaic of {th}x{tw} tiles "
                                f"needs {self.layout.size}: create it with input_size={self.layout.size}")
        self.engine = engine

    @classmethod
    def open(cls, model: str | Path, k: int, **engine_args: Any) -> MosaicDetector:
        """An engine for ``model`` reshaped to the k×k mosaic of its native input size."""
        import openvino as ov

        core = ov.Core()
        meta = read_ir_meta(model, core)
        return cls(Engine(model, input_size=(k * meta.input.height, k * meta.input.width), core=core,
                          **engine_args), k)

    def submit(self, images: Sequence[np.ndarray | None]) -> tuple[Future, list[Letterbox | None]]:
        canvas, placements = self.layout.compose(images)
        tensor, _ = self.engine.prepare(canvas)  # the canvas already has the input size: identity letterbox
        return self.engine.submit(tensor), placements

    def collect(self, future: Future, placements: list[Letterbox | None]) -> list[Detections | None]:
        decoded = decode(future.result(), self.engine.meta.heads)[0]
        e = self.engine
        return self.layout.split(decoded, placements, e.conf_thres, e.iou_thres, e.max_det)

    def detect(self, images: Sequence[np.ndarray | None]) -> list[Detections | None]:
        """One mosaic inference; detections per image (``None`` where no image was given)."""
        return self.collect(*self.submit(images))

    def run(self, readers: Sequence[SourceReader], max_wait: float = 0.05
            ) -> Iterator[list[tuple[Frame, Detections]]]:
        """Ticks over live readers until all have ended; each tick yields (frame, detections) pairs.

        A tick waits at most ``max_wait`` for the sources that have no frame ready: a slower
        stream misses a tick (its tile stays grey) instead of holding the others back, and an
        ended stream simply stops contributing. Ticks are pipelined like ``detect_stream``.
        """
        if len(readers) > self.layout.tiles:
            raise SlimYoloError(f"{len(readers)} sources do not fit a {self.layout.k}x{self.layout.k} mosaic")
        pending: collections.deque = collections.deque()
        while True:
            frames = self._gather(readers, max_wait)
            if frames is None:
                break
            if not any(frames):
                continue
            future, placements = self.submit([f.image if f else None for f in frames])
            pending.append((future, placements, frames))
            if len(pending) >= self.engine.num_requests:
                yield self._pairs(*pending.popleft())
        while pending:
            yield self._pairs(*pending.popleft())

    def _pairs(self, future: Future, placements: list, frames: list[Frame | None]
               ) -> list[tuple[Frame, Detections]]:
        dets = self.collect(future, placements)
        return [(f, d) for f, d in zip(frames, dets, strict=True) if f is not None and d is not None]

    @staticmethod
    def _gather(readers: Sequence[SourceReader], max_wait: float) -> list[Frame | None] | None:
        deadline = time.monotonic() + max_wait
        frames: list[Frame | None] = [None] * len(readers)
        while True:
            for i, reader in enumerate(readers):
                if frames[i] is None and not reader.ended:
                    frames[i] = reader.get()
            if all(r.ended for r in readers) and not any(frames):
                return None
            waiting = [i for i, r in enumerate(readers) if frames[i] is None and not r.ended]
            if not waiting or time.monotonic() >= deadline:
                return frames
            time.sleep(0.002)
