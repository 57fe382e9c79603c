"""Video streams: frames of many streams share one k×k mosaic inference; each call stays in order.

:class:`StreamMultiplexer` (one per loaded model version) collects frames from every stream
that sends to it — several gRPC calls, several stream ids in one call — and runs them together:
when a frame arrives, it waits at most ``window`` seconds for others, then up to k² pending
frames (oldest first) are tiled into one mosaic (:class:`~slimyolo.infer.mosaic.MosaicDetector`:
the smallest k×k that holds them; a lone frame runs on the native-size engine) and one inference
serves them all. Nothing ever waits for a particular stream, so a slow or finished client
cannot stall the others: it only misses the mosaics it has no frame for. Frames are taken as a
free inference request appears, so under load each mosaic fills up while the previous one runs.

Each frame's boxes are split out of the shared result by the thread that asked for them (the
mosaic's YOLO decode runs once, the per-tile NMS at each frame's own thresholds), so the
multiplexer's own thread only composes and submits.

:func:`pipelined` runs one call: it reads frames on a thread of its own while earlier frames are
in flight (at most ``max_in_flight``, which pushes back on that client only), and yields the
results in the order the frames came.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar

import numpy as np

from slimyolo.data.letterbox import Letterbox
from slimyolo.errors import UnavailableError
from slimyolo.infer.decode import decode
from slimyolo.infer.engine import Detections, Engine
from slimyolo.infer.mosaic import MosaicDetector, MosaicLayout
from slimyolo.serving.images import DetectOptions, detections_from_heads

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Batch:
    """One inference: a lone frame on the native engine, or a mosaic of several."""

    def __init__(self, future: Future, engine: Engine, layout: MosaicLayout | None,
                 placements: Sequence[Letterbox | None]) -> None:
        self.future, self.engine, self.layout, self.placements = future, engine, layout, list(placements)
        self.frames = sum(p is not None for p in self.placements)
        self._decoded: np.ndarray | None = None
        self._lock = threading.Lock()

    def detections(self, tile: int, options: DetectOptions) -> Detections:
        raws = self.future.result()
        heads = self.engine.meta.heads
        if self.layout is None:
            return detections_from_heads(raws, heads, self.placements[0], options)
        with self._lock:  # the mosaic is decoded once, by the first frame's thread
            if self._decoded is None:
                self._decoded = decode(raws, heads)[0]
        only = [lb if t == tile else None for t, lb in enumerate(self.placements)]
        det = self.layout.split(self._decoded, only, options.conf_thres, options.iou_thres, options.max_det)[tile]
        assert det is not None  # the tile holds this frame
        return det


class PendingFrame:
    """A frame handed to the multiplexer; :meth:`result` waits for its boxes."""

    def __init__(self, image: np.ndarray, options: DetectOptions) -> None:
        self.image: np.ndarray | None = image
        self.options = options
        self._placed = threading.Event()
        self._batch: _Batch | None = None
        self._tile = 0
        self._error: BaseException | None = None

    def _place(self, batch: _Batch | None, tile: int = 0, error: BaseException | None = None) -> None:
        self._batch, self._tile, self._error, self.image = batch, tile, error, None
        self._placed.set()

    def result(self) -> tuple[Detections, int]:
        """(boxes in the frame's pixels, how many frames shared its inference)."""
        self._placed.wait()
        if self._error is not None:
            raise self._error
        assert self._batch is not None
        return self._batch.detections(self._tile, self.options), self._batch.frames


class StreamMultiplexer:
    """Runs the frames of all streams of one model version, sharing mosaics (see the module docstring).

    ``mosaics`` maps k to a detector compiled at k× the model's input size (none: every frame
    runs alone, e.g. for an IR that letterboxes inside and so cannot be tiled).
    """

    def __init__(self, engine: Engine, mosaics: Mapping[int, MosaicDetector], window: float,
                 name: str = "model") -> None:
        self.engine, self.mosaics, self.window = engine, dict(sorted(mosaics.items())), window
        self.max_frames = max((k * k for k in self.mosaics), default=1)
        slots = max([engine.num_requests, *(m.engine.num_requests for m in self.mosaics.values())])
        self._slots = threading.Semaphore(slots)
        self._pending: collections.deque[tuple[float, PendingFrame]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"mux-{name}", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, options: DetectOptions) -> PendingFrame:
        """Queue a BGR frame; the returned frame's ``result()`` gives its boxes."""
        frame = PendingFrame(image, options)
        with self._cond:
            if self._closed:
                raise UnavailableError("the model version is being unloaded; send the frame again")
            self._pending.append((time.monotonic(), frame))
            self._cond.notify()
        return frame

    def close(self) -> None:
        """Run what is queued, then stop the multiplexer's thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[PendingFrame] | None:
        """Wait for a frame, then for the window to pass or the mosaic to fill; None once closed and empty."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = self._pending[0][0] + self.window
            while len(self._pending) < self.max_frames and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        self._slots.acquire()  # a free inference request; meanwhile more frames may arrive
        with self._cond:
            return [self._pending.popleft()[1] for _ in range(min(len(self._pending), self.max_frames))]

    def _run(self) -> None:
        while (frames := self._take()) is not None:
            try:
                batch = self._submit(frames)
            except BaseException as exc:  # handed to the waiting callers, never lost in this thread
                self._slots.release()
                for frame in frames:
                    frame._place(None, error=exc)
                continue
            batch.future.add_done_callback(lambda _: self._slots.release())
            for tile, frame in enumerate(frames):
                frame._place(batch, tile)

    def _submit(self, frames: list[PendingFrame]) -> _Batch:
        images = [f.image for f in frames]
        if len(frames) == 1 or not self.mosaics:
            tensor, lb = self.engine.prepare(images[0])
            return _Batch(self.engine.submit(tensor), self.engine, None, [lb])
        k = next(k for k in self.mosaics if k * k >= len(frames))
        mosaic = self.mosaics[k]
        future, placements = mosaic.submit(images)
        return _Batch(future, mosaic.engine, mosaic.layout, placements)


class Started(Protocol[R]):
    def result(self) -> R:
        """Wait for the item's outcome (and release what it holds)."""
        ...


class _Failed(Generic[R]):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self) -> R:
        raise self.error


_END = object()


def _finish(started: Started) -> None:
    try:
        started.result()
    except Exception as exc:
        log.debug("a frame in flight when its stream ended failed: %s", exc)


def pipelined(items: Iterable[T], start: Callable[[T], Started[R]], max_in_flight: int) -> Iterator[R]:
    """``start`` each item as it is read, on a reader thread; yield the results in item order.

    At most ``max_in_flight`` items are started and not yet yielded: the reader stops reading
    (back-pressure on the item source) until the consumer catches up. An error reading or
    starting an item is raised after the results of the items before it, and ends the iteration.
    When the consumer stops early, every item already started is still waited for, so that
    whatever it holds is released; the consumer never waits for the item source itself (a
    client that sends nothing more cannot hold up the end of its call).
    """
    results: queue.Queue = queue.Queue()
    room = threading.Semaphore(max_in_flight)
    lock = threading.Lock()
    closed = False

    def hand_over(started: Started | object) -> bool:
        """Queue for the consumer; False when it has gone (the caller then finishes ``started`` itself)."""
        with lock:
            if not closed:
                results.put(started)
            return not closed

    def read() -> None:
        try:
            for item in items:
                while not room.acquire(timeout=0.1):
                    if closed:
                        return
                try:
                    started = start(item)
                except Exception as exc:
                    hand_over(_Failed(exc))
                    return
                if not hand_over(started):
                    _finish(started)
                    return
        except Exception as exc:  # the item source failed (e.g. the client's call was cancelled)
            hand_over(_Failed(exc))
            return
        hand_over(_END)

    threading.Thread(target=read, name="stream-reader", daemon=True).start()
    try:
        while (started := results.get()) is not _END:
            room.release()
            yield started.result()
    finally:
        with lock:
            closed = True
        while not results.empty():
            left = results.get_nowait()
            if left is not _END:
                _finish(left)
