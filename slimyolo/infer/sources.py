"""Frame sources through OpenCV: image files, folders, video files, cameras, RTSP/HTTP URLs.

A source is opened eagerly so that a missing file or an unreadable video fails at once with
the path in the message, not after the other streams have started. Each source can run a
reader thread (:class:`SourceReader`) so that a slow camera, a stream at another frame rate
or a stream that ends never stalls the others.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from slimyolo.errors import NotFoundError, SlimYoloError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
URL_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


@dataclass(frozen=True)
class Frame:
    source: int  # index of the source among those opened together
    index: int  # frame number within its source
    image: np.ndarray  # BGR uint8
    name: str  # file name for images, "frame-N" otherwise


class Source:
    """One input; iterate it for frames. ``live`` sources (cameras, URLs) drop stale frames."""

    def __init__(self, spec: str, index: int = 0) -> None:
        self.spec, self.index = spec, index
        self.live = spec.isdigit() or spec.startswith(URL_PREFIXES)
        self._images: list[Path] | None = None
        self._cap: cv2.VideoCapture | None = None
        self.fps = 0.0
        path = Path(spec)
        if self.live:
            self._cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
            if not self._cap.isOpened():
                raise SlimYoloError(f"source {spec}: cannot open the camera or stream")
        elif path.is_dir():
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self._images:
                raise SlimYoloError(f"source {spec}: the folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        elif not path.exists():
            raise NotFoundError(f"source {spec}: no such file or folder")
        elif path.suffix.lower() in IMAGE_EXTS:
            self._images = [path]
        else:
            self._cap = cv2.VideoCapture(str(path))
            ok = self._cap.isOpened()
            if ok:
                ok, _ = self._cap.read()
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            if not ok:
                self._cap.release()
                raise SlimYoloError(f"source {spec}: not a readable video or image")
        if self._cap is not None:
            self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    @property
    def name(self) -> str:
        return Path(self.spec).stem if not self.live else f"stream{self.index}"

    @property
    def is_video(self) -> bool:
        return self._cap is not None

    def __iter__(self) -> Iterator[Frame]:
        if self._images is not None:
            for n, path in enumerate(self._images):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise SlimYoloError(f"source {self.spec}: {path} is not a readable image")
                yield Frame(self.index, n, image, path.stem)
            return
        assert self._cap is not None
        n = 0
        while True:
            ok, image = self._cap.read()
            if not ok:
                break
            yield Frame(self.index, n, image, f"frame-{n:06d}")
            n += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


def open_sources(specs: list[str]) -> list[Source]:
    """Open every source or none (the ones already opened are closed on an error)."""
    opened: list[Source] = []
    try:
        for i, spec in enumerate(specs):
            opened.append(Source(spec, i))
    except Exception:
        for src in opened:
            src.close()
        raise
    return opened


_END = object()


class SourceReader:
    """Reads a source in a thread into a small buffer.

    Files are read completely (the reader waits for room, so no frame is lost); live sources
    keep only the newest frame, so a consumer slower than the camera sees current frames.
    Errors in the thread are re-raised in the consumer.
    """

    def __init__(self, source: Source, buffer: int = 2) -> None:
        self.source = source
        self._q: queue.Queue = queue.Queue(maxsize=buffer)
        self._stop = threading.Event()
        self.ended = False
        self._thread = threading.Thread(target=self._run, name=f"source-{source.index}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set():
                    return
                if self.source.live:
                    self._put_latest(frame)
                else:
                    self._put(frame)
        except Exception as exc:  # handed to the consumer
            self._put(exc)
        finally:
            self._put(_END)

    def _put(self, item: object) -> None:
        """Wait for room (files lose no frame), unless the reader is being stopped."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _put_latest(self, frame: Frame) -> None:
        """Replace a stale frame (live sources: the consumer wants the newest)."""
        while True:
            try:
                self._q.put_nowait(frame)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._q.get_nowait()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None if none arrived within ``timeout`` or the source ended."""
        if self.ended:
            return None
        try:
            item = self._q.get(timeout=timeout) if timeout else self._q.get_nowait()
        except queue.Empty:
            return None
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, Exception):
            self.ended = True
            raise item
        return item

    def stop(self) -> None:
        self._stop.set()
        self.source.close()
