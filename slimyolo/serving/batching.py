"""Dynamic batching: concurrent requests for one model run as one inference, as Triton's dynamic batcher does.

A small model's inference costs less per frame in a batch (one pass over the weights, wider loops)
and the service pays its per-inference costs (a request started, waited for, its outputs copied)
once per batch instead of once per frame. :class:`DynamicBatcher` sits in front of an
:class:`~slimyolo.infer.engine.Engine`: callers ``submit`` one tensor each (a frame, or a client's
own batch) and get a future of their own outputs; one thread forms batches of the tensors waiting,
in arrival order, up to ``max_batch`` frames of one shape, and starts them while the engine has a
free inference request. While every request runs, new tensors queue, so the next batch takes all of
them: under load the batches grow by themselves, and a lone call waits for nobody.
``max_delay`` (``--max-queue-delay-us``) lets the first tensor of a batch wait that long for others
even when a request is free: more frames per batch for a little latency (Triton's
``max_queue_delay_microseconds``; 0 by default, as there).

Each caller's outputs are its rows of the batch's outputs: the frames of a batch do not mix
(OpenVINO's CPU plugin computes each batch row as it computes that frame alone; the tests check the
rows against the frame's own inference).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from slimyolo.infer.engine import Engine

log = logging.getLogger(__name__)


@dataclass(eq=False)  # each one is itself: taken out of the queue by identity, never compared by value
class _Waiting:
    """A submitted tensor, its future and when it arrived."""

    tensor: np.ndarray
    arrived: float
    started: Callable[[], None] | None  # called once its batch runs on an inference request
    future: Future = field(default_factory=Future)

    @property
    def frames(self) -> int:
        return int(self.tensor.shape[0])

    def fits(self, other: _Waiting) -> bool:
        """Whether ``other`` may share this tensor's batch (one shape but the batch, one element type)."""
        return other.tensor.shape[1:] == self.tensor.shape[1:] and other.tensor.dtype == self.tensor.dtype


class DynamicBatcher:
    """Batches of concurrent tensors for ``engine`` (see the module docstring); the same ``submit`` contract as
    :meth:`Engine.submit`: a future of the raw heads, in metadata order, for the tensor submitted."""

    def __init__(self, engine: Engine, max_batch: int, max_delay: float = 0.0, name: str = "") -> None:
        if max_batch < 2:
            raise ValueError(f"a dynamic batcher needs max_batch >= 2, got {max_batch}")
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._cond = threading.Condition()
        self._slots = threading.Semaphore(engine.num_requests)  # batches in flight: one per inference request
        self._closed = False
        self.batches = self.frames = 0  # formed so far (the tests and the log read them)
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name or engine.path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, tensor: np.ndarray, started: Callable[[], None] | None = None) -> Future:
        """Queue ``tensor`` (N, ...) for the next batch; a tensor of ``max_batch`` frames or more runs alone.
        ``started`` is called once the tensor's batch runs on an inference request (until then the call waits in
        the service's queue, which ``--max-queue`` bounds)."""
        if tensor.shape[0] >= self.max_batch:
            future = self.engine.submit(tensor)
            if started is not None:
                started()
            return future
        waiting = _Waiting(tensor, time.monotonic(), started)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(waiting)
            self._cond.notify()
        return waiting.future

    def close(self) -> None:
        """Run what is queued, then stop the batching thread (the engine's running requests finish on their own)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._slots.acquire()  # an inference request is (about to be) free: form the next batch now
            batch = self._next_batch()
            if batch is None:
                self._slots.release()
                return
            tensor = batch[0].tensor if len(batch) == 1 else np.concatenate([w.tensor for w in batch])
            self.batches, self.frames = self.batches + 1, self.frames + len(tensor)
            try:
                future = self.engine.submit(tensor)
            except BaseException as exc:  # surfaced to every caller of the batch, never lost in this thread
                self._slots.release()
                for waiting in batch:
                    waiting.future.set_exception(exc)
                continue
            for waiting in batch:
                if waiting.started is not None:
                    waiting.started()
            future.add_done_callback(lambda done, batch=batch: self._resolve(done, batch))

    def _next_batch(self) -> list[_Waiting] | None:
        """The oldest waiting tensor and those that fit its batch, in arrival order (None: closed and empty)."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting.popleft()
            batch, frames = [first], first.frames
            deadline = first.arrived + self.max_delay
            while True:
                for waiting in list(self._waiting):
                    if frames + waiting.frames <= self.max_batch and first.fits(waiting):
                        self._waiting.remove(waiting)
                        batch.append(waiting)
                        frames += waiting.frames
                left = deadline - time.monotonic()
                if frames >= self.max_batch or left <= 0 or self._closed:
                    return batch
                self._cond.wait(left)

    def _resolve(self, done: Future, batch: list[_Waiting]) -> None:
        """Each caller's rows of the batch's outputs (runs on the engine's collector thread)."""
        self._slots.release()
        error = done.exception()
        if error is not None:
            for waiting in batch:
                waiting.future.set_exception(error)
            return
        heads, row = done.result(), 0
        for waiting in batch:
            waiting.future.set_result([head[row:row + waiting.frames] for head in heads])
            row += waiting.frames
