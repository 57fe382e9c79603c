"""``slimyolo detect``: run an IR over image/video/camera sources, alone or as a k×k mosaic.

Writes annotated images (image sources) or videos (video and live sources) and one JSON line
per frame with its detections, and reports live FPS through ``progress``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slimyolo.errors import SlimYoloError
from slimyolo.infer.engine import Detections, Engine
from slimyolo.infer.mosaic import MosaicDetector
from slimyolo.infer.sources import Frame, Source, SourceReader, open_sources
from slimyolo.progress import FrameRate, Progress


def class_color(c: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class."""
    hue = (c * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def annotate(image: np.ndarray, dets: Detections, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """A copy of ``image`` with boxes and ``name score`` labels drawn."""
    out = image.copy()
    for box, score, c in zip(dets.boxes, dets.scores, dets.classes, strict=True):
        x1, y1, x2, y2 = box.round().astype(int).tolist()
        color = class_color(int(c))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        label = f"{names[int(c)] if int(c) < len(names) else int(c)} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(out, (x1, max(y1 - th - 4, 0)), (x1 + tw + 2, max(y1, th + 4)), color, -1)
        cv2.putText(out, label, (x1 + 1, max(y1 - 3, th + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


@dataclass
class DetectSummary:
    frames: int
    detections: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Outputs:
    """Annotated images/videos and the JSON-lines file under ``out``."""

    def __init__(self, out: Path | None, sources: list[Source], names: tuple[str, ...], show: bool) -> None:
        self.out, self.sources, self.names, self.show = out, sources, names, show
        self.writers: dict[int, cv2.VideoWriter] = {}
        self.jsonl = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.jsonl = (out / "detections.jsonl").open("w", encoding="utf-8")

    def write(self, frame: Frame, dets: Detections) -> None:
        src = self.sources[frame.source]
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"source": frame.source, "source_name": src.name, "frame": frame.index,
                                         "name": frame.name, "detections": dets.to_list(self.names)}) + "\n")
        if self.out is None and not self.show:
            return
        drawn = annotate(frame.image, dets, self.names)
        if self.show:
            cv2.imshow(f"slimyolo: {src.spec}", drawn)
            cv2.waitKey(1)
        if self.out is None:
            return
        if src.is_video or src.live:
            writer = self.writers.get(frame.source)
            if writer is None:
                h, w = drawn.shape[:2]
                writer = cv2.VideoWriter(str(self.out / f"{frame.source}-{src.name}.mp4"),
                                         cv2.VideoWriter_fourcc(*"mp4v"), src.fps or 25.0, (w, h))
                self.writers[frame.source] = writer
            writer.write(drawn)
        else:
            folder = self.out / f"{frame.source}-{src.name}"
            folder.mkdir(exist_ok=True)
            cv2.imwrite(str(folder / f"{frame.name}.jpg"), drawn)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        if self.jsonl is not None:
            self.jsonl.close()


def _check_show() -> None:
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and "NONE" in gui[0]:
        raise SlimYoloError("--show needs an OpenCV build with a GUI backend (this one is headless); "
                            "use --out to write annotated frames instead")


def run_detect(model: str | Path, sources: list[str], out: Path | None = None, mosaic: int = 0,
               show: bool = False, progress: Progress | None = None,
               **engine_args: Any) -> DetectSummary:
    """Detect over ``sources``; ``mosaic=k`` multiplexes up to k² sources through one k×k frame."""
    if not sources:
        raise SlimYoloError("give at least one --source")
    if show:
        _check_show()
    opened = open_sources(sources)
    readers: list[SourceReader] = []
    try:
        if mosaic:
            detector = MosaicDetector.open(model, mosaic, **engine_args)
            names = detector.engine.meta.names
            readers = [SourceReader(s) for s in opened]
            pairs: Iterator[list[tuple[Frame, Detections]]] = detector.run(readers)
        else:
            engine = Engine(model, **engine_args)
            names = engine.meta.names
            pairs = ([pair] for src in opened for pair in _single(engine, src))
        outputs = _Outputs(out, opened, names, show)
        frames = boxes = 0
        start = last = time.monotonic()
        try:
            for batch in pairs:
                for frame, dets in batch:
                    outputs.write(frame, dets)
                    frames += 1
                    boxes += len(dets)
                now = time.monotonic()
                if progress and now - last >= 0.5:
                    progress(FrameRate(frames, frames / (now - start)))
                    last = now
        finally:
            outputs.close()
        return DetectSummary(frames, boxes, time.monotonic() - start)
    finally:
        for reader in readers:
            reader.stop()
        for src in opened:
            src.close()


def _single(engine: Engine, source: Source) -> Iterator[tuple[Frame, Detections]]:
    """One source through the pipelined engine, frames paired with their detections."""
    frames: list[Frame] = []

    def images() -> Iterator[np.ndarray]:
        for frame in source:
            frames.append(frame)
            yield frame.image

    for dets in engine.detect_stream(images()):
        yield frames.pop(0), dets
