"""Long-running jobs: a core function run in a worker thread, followed, read and cancelled by id.

Training, sweeps and conversion take minutes to hours, longer than any RPC should. A
``Start...`` call submits the work here and returns at once with a job id; ``slimyolo.v1.Jobs``
(:mod:`slimyolo.rpc.job_service`, served next to the stage's own service) reads it, streams its
events and cancels it.

The work is a function of one argument, ``progress``, exactly the contract of the core
library's long functions: they call ``progress(event)`` with a typed event of
:mod:`slimyolo.progress` and stop when the callback raises :class:`slimyolo.errors.Cancelled`;
it returns a :class:`~slimyolo.stages.runners.StageResult` (files by role, metrics). The job
keeps the events as they are; they become JSON values only where they leave (the journal, a
protobuf ``Struct``). That is how cancellation works here: CancelJob sets a flag, and the job's
next progress report raises Cancelled inside it. A job's failure keeps its kind
(:class:`slimyolo.errors.ErrorKind`), so an object-store outage reaches the client as
UNAVAILABLE, and the client knows a retry may work.

Every state change and progress report is an event with a sequence number; a watcher that
comes late replays the retained history, then follows new events as they happen. With a
:class:`~slimyolo.rpc.journal.JobJournal` the jobs outlive the process (see there).
"""

from __future__ import annotations

import collections
import enum
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimyolo.errors import (
    Cancelled,
    ErrorKind,
    NotFoundError,
    SlimYoloError,
    UnavailableError,
    error_kind,
    error_message,
)
from slimyolo.progress import Event, Progress, StageStep, event_from_dict, event_to_dict
from slimyolo.rpc.job_metrics import JobMetrics
from slimyolo.rpc.journal import JobJournal, JournalWriter
from slimyolo.rpc.status import code_number, kind_of_number
from slimyolo.stages.runners import StageResult
from slimyolo.store import Artifact

log = logging.getLogger(__name__)


class JobState(enum.IntEnum):
    """Same numbers as the proto's JobState."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def final(self) -> bool:
        return self >= JobState.SUCCEEDED


JobFn = Callable[[Progress], StageResult | None]


@dataclass(frozen=True)
class JobEvent:
    seq: int
    time: float
    state: JobState
    progress: Event | None = None


@dataclass(frozen=True)
class JobError:
    """Why a job did not succeed: the kind of failure (the client's status) and what to tell the user."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class JobSnapshot:
    """A job as it was at one moment (what GetJob returns)."""

    id: str
    kind: str
    state: JobState
    progress: Event | None
    outcome: StageResult | None
    error: JobError | None
    create_time: float
    start_time: float | None
    end_time: float | None


class _Job:
    def __init__(self, job_id: str, kind: str, fn: JobFn | None, max_events: int,
                 spec: Mapping[str, Any] | None = None) -> None:
        self.id, self.kind, self.fn, self.spec = job_id, kind, fn, spec
        self.cond = threading.Condition()
        self.state = JobState.QUEUED
        self.progress: Event | None = None
        self.outcome: StageResult | None = None
        self.error: JobError | None = None
        self.create_time, self.start_time, self.end_time = time.time(), None, None
        self.events: collections.deque[JobEvent] = collections.deque(maxlen=max_events)
        self.seq = itertools.count()
        self.cancel_reason: JobError | None = None  # set by cancel(); read by the progress callback

    def emit(self, state: JobState, progress: Event | None = None) -> None:
        """Record an event (caller holds ``cond``) and wake the watchers."""
        self.state = state
        self.events.append(JobEvent(next(self.seq), time.time(), state, progress))
        self.cond.notify_all()

    def snapshot(self) -> JobSnapshot:
        return JobSnapshot(self.id, self.kind, self.state, self.progress, self.outcome, self.error,
                           self.create_time, self.start_time, self.end_time)

    def record(self) -> dict[str, Any]:
        """The job as a JSON document (caller holds ``cond``): what the journal stores."""
        outcome = None if self.outcome is None else {
            "artifacts": {role: {"uri": a.uri, "sha256": a.sha256, "size_bytes": a.size_bytes}
                          for role, a in self.outcome.artifacts.items()},
            "metrics": dict(self.outcome.metrics)}
        return {"id": self.id, "kind": self.kind, "spec": self.spec, "state": self.state.name,
                "events": [{"seq": e.seq, "time": e.time, "state": e.state.name,
                            "progress": None if e.progress is None else event_to_dict(e.progress)}
                           for e in self.events],
                "outcome": outcome,
                # the error as its status number: what the records of earlier servers hold, and what they read
                "error": None if self.error is None else {"code": code_number(self.error.kind),
                                                          "message": self.error.message},
                "create_time": self.create_time, "start_time": self.start_time, "end_time": self.end_time}

    def restore(self, record: Mapping[str, Any]) -> None:
        """Take state, history, result and error from a journal record (caller holds ``cond``)."""
        self.state = JobState[record["state"]]
        self.events.clear()
        for e in record["events"]:
            self.events.append(JobEvent(int(e["seq"]), float(e["time"]), JobState[e["state"]],
                                        None if e["progress"] is None else event_from_dict(e["progress"])))
        self.progress = next((e.progress for e in reversed(self.events) if e.progress is not None), None)
        self.seq = itertools.count(self.events[-1].seq + 1 if self.events else 0)
        outcome = record.get("outcome")
        self.outcome = None if outcome is None else StageResult(
            {role: Artifact(**a) for role, a in outcome["artifacts"].items()}, outcome["metrics"])
        error = record.get("error")
        self.error = None if error is None else JobError(kind_of_number(int(error["code"])), error["message"])
        self.create_time, self.start_time, self.end_time = (record["create_time"], record["start_time"],
                                                            record["end_time"])
        self.cond.notify_all()


def _jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A job's metrics as plain JSON values (NumPy/torch scalars and arrays become numbers and lists)."""

    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"metric value {value!r} ({type(value).__name__}) is not JSON-serialisable")

    if not isinstance(metrics, Mapping):
        raise TypeError(f"a job's metrics are a dict, got {type(metrics).__name__}")
    return json.loads(json.dumps(dict(metrics), default=default))


class JobManager:
    """Runs submitted job functions on ``workers`` threads, one job per thread, oldest first.

    Several jobs wait in QUEUED rather than running at once because each stage's work (training,
    conversion) already uses every core of its machine.
    """

    def __init__(self, workers: int = 1, *, registry: Any = None, max_events: int = 10_000,
                 max_finished: int = 1_000, journal: JobJournal | None = None,
                 rebuild: Callable[[str, Mapping[str, Any]], JobFn] | None = None) -> None:
        """``journal`` keeps the jobs in the store; ``rebuild(kind, spec)`` turns a journaled
        job's spec back into its function, to run it again after a restart (:meth:`recover`)."""
        if workers < 1:
            raise SlimYoloError(f"job workers must be at least 1, got {workers}")
        self.workers, self.max_events = workers, max_events
        self.journal, self._rebuild = journal, rebuild
        self._writer = JournalWriter(journal, self._records) if journal is not None else None
        self._jobs: dict[str, _Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._max_finished = max_finished
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._metrics = JobMetrics(registry) if registry is not None else None

    # -- the API ------------------------------------------------------------------------------

    def submit(self, kind: str, fn: JobFn, spec: Mapping[str, Any] | None = None) -> JobSnapshot:
        """Queue ``fn(progress)`` as a job of ``kind`` ("train", "sweep", ...) and return it (QUEUED).

        ``spec`` (a JSON document) is what the journal keeps to run the job again after a restart.
        """
        job = _Job(uuid.uuid4().hex, kind, fn, self.max_events, spec)
        self._enqueue(job)
        return job.snapshot()

    def recover(self) -> list[str]:
        """Load the journal's jobs: finished ones to answer for, unfinished ones whose owner is gone
        to run again under their id (or to fail with the reason). Returns the ids run again."""
        if self.journal is None:
            return []
        again = []
        for record in self.journal.records():
            job = _Job(record["id"], record["kind"], None, self.max_events, record.get("spec"))
            with job.cond:
                job.restore(record)
            if job.state.final:
                with self._lock:
                    self._jobs.setdefault(job.id, job)
                    self._finished.append(job.id)
                continue
            if not self.journal.owner_gone(record):
                continue  # another live replica runs it; GetJob reads its record from the store
            try:
                if self._rebuild is None or job.spec is None:
                    raise SlimYoloError("the job's spec was not kept")
                job.fn = self._rebuild(job.kind, job.spec)
            except SlimYoloError as exc:
                with job.cond:
                    job.error = JobError(ErrorKind.FAILED_PRECONDITION,
                                         f"job {job.id} stopped with its server and cannot run again: {exc}")
                    job.end_time = time.time()
                    job.emit(JobState.FAILED)
                with self._lock:
                    self._jobs[job.id] = job
                    self._finished.append(job.id)
                self._changed(job)
                continue
            with job.cond:
                job.progress = StageStep(job.kind, "recovered", {"after": "the server restarted"})
                job.emit(JobState.QUEUED, job.progress)
            self._enqueue(job, recovered=True)
            again.append(job.id)
        if again:
            log.info("running %d job(s) again that stopped with an earlier server: %s", len(again), ", ".join(again))
        return again

    def _enqueue(self, job: _Job, recovered: bool = False) -> None:
        with self._lock:
            if self._closing:
                raise UnavailableError("the server is shutting down and takes no new jobs; retry on another replica")
            self._jobs[job.id] = job
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"job-worker-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        if not recovered:
            with job.cond:
                job.emit(JobState.QUEUED)
        self._changed(job)
        if self._metrics:
            self._metrics.submitted.labels(job.kind).inc()
            self._metrics.active.labels("queued").inc()
        self._queue.put(job)

    def get(self, job_id: str) -> JobSnapshot:
        job = self._job(job_id)
        with job.cond:
            return job.snapshot()

    def list(self) -> list[JobSnapshot]:
        """Every retained job, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted((self.get(j.id) for j in jobs), key=lambda s: s.create_time, reverse=True)

    def cancel(self, job_id: str, reason: JobError | None = None) -> JobSnapshot:
        """Stop a job: at once if queued, at its next progress report if running; no-op if final."""
        job = self._job(job_id)
        reason = reason or JobError(ErrorKind.CANCELLED, f"job {job_id} was cancelled")
        with job.cond:
            if job.state == JobState.QUEUED:
                self._finish(job, JobState.CANCELLED if reason.kind is ErrorKind.CANCELLED
                             else JobState.FAILED, error=reason, was=JobState.QUEUED)
            elif job.state == JobState.RUNNING and job.cancel_reason is None:
                job.cancel_reason = reason
            return job.snapshot()

    def watch(self, job_id: str, from_seq: int = 0, *, active: Callable[[], bool] = lambda: True,
              poll_seconds: float = 0.5) -> Iterator[JobEvent]:
        """Events of the job from ``from_seq`` on: the retained ones first, then live ones.

        Ends after the event that makes the job final, or when ``active()`` turns false (the
        watcher went away), checked every ``poll_seconds``.
        """
        job = self._job(job_id)
        next_seq = max(0, from_seq)
        while True:
            with job.cond:
                while True:
                    pending = [e for e in job.events if e.seq >= next_seq]
                    if pending or job.state.final or not active():
                        break
                    job.cond.wait(poll_seconds)
                    if job.fn is None and self.journal is not None:  # run by another replica: its record
                        record = self.journal.load(job.id)
                        if record is not None:
                            job.restore(record)
            yield from pending
            if pending:
                next_seq = pending[-1].seq + 1
            elif job.state.final or not active():
                return

    def shutdown(self, deadline: float) -> None:
        """Take no new jobs; let running ones finish until shortly before ``deadline``, then stop them.

        Jobs stopped this way (and queued ones) fail with UNAVAILABLE: the client can start them
        again on another replica. Their watchers get the final event and their streams end, so
        the server's drain is not held up by them.
        """
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
        reason = JobError(ErrorKind.UNAVAILABLE, "the server shut down before the job finished; start it again")
        for job in jobs:
            if job.state == JobState.QUEUED:
                self.cancel(job.id, reason)
        margin = min(5.0, max(0.0, deadline - time.monotonic()) / 4)
        self._wait_idle(jobs, deadline - margin)
        for job in jobs:
            if not job.state.final:
                self.cancel(job.id, reason)
        self._wait_idle(jobs, deadline)
        for _ in self._threads:
            self._queue.put(None)
        if self._writer is not None:
            self._writer.flush()  # the jobs' final records, before the process ends

    # -- internals ----------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        if not job_id:
            raise SlimYoloError("id: a job id is required")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self.journal is not None:
            record = self.journal.load(job_id)
            if record is not None:  # run by another replica, or finished long ago
                job = _Job(record["id"], record["kind"], None, self.max_events, record.get("spec"))
                with job.cond:
                    job.restore(record)
        if job is None:
            raise NotFoundError(f"id: no job {job_id!r} on this server" + (
                "" if self.journal is not None else " (finished jobs are kept only for a while, and not across "
                                                    "restarts)"))
        return job

    @staticmethod
    def _wait_idle(jobs: list[_Job], deadline: float) -> None:
        for job in jobs:
            with job.cond:
                while not job.state.final and time.monotonic() < deadline:
                    job.cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
        with job.cond:
            if job.state != JobState.QUEUED:  # cancelled while queued
                return
            job.start_time = time.time()
            job.emit(JobState.RUNNING)
        self._changed(job)
        if self._metrics:
            self._metrics.active.labels("queued").dec()
            self._metrics.active.labels("running").inc()

        def progress(event: Event) -> None:
            if job.cancel_reason is not None:
                raise Cancelled(job.cancel_reason.message)
            event_to_dict(event)  # a TypeError here, in the job, for what could not travel
            with job.cond:
                job.progress = event
                job.emit(JobState.RUNNING, event)
            self._changed(job)

        try:
            outcome = job.fn(progress)
            if outcome is None:
                outcome = StageResult()
            if not isinstance(outcome, StageResult):
                raise TypeError(f"a {job.kind} job returned {type(outcome).__name__}, not a StageResult")
            bad = [role for role, a in outcome.artifacts.items() if not isinstance(a, Artifact)]
            if bad:
                raise TypeError(f"a {job.kind} job returned artifacts {bad} that are not store Artifacts")
            outcome = StageResult(dict(outcome.artifacts), _jsonable(outcome.metrics))
        except Cancelled as exc:
            reason = job.cancel_reason or JobError(ErrorKind.CANCELLED, str(exc) or "cancelled")
            state = JobState.CANCELLED if reason.kind is ErrorKind.CANCELLED else JobState.FAILED
            with job.cond:
                self._finish(job, state, error=reason, was=JobState.RUNNING)
        except BaseException as exc:
            kind = error_kind(exc)
            if kind is ErrorKind.INTERNAL:
                log.error("%s job %s failed", job.kind, job.id, exc_info=exc)
            with job.cond:
                self._finish(job, JobState.FAILED, error=JobError(kind, error_message(exc)), was=JobState.RUNNING)
        else:
            with job.cond:
                self._finish(job, JobState.SUCCEEDED, outcome=outcome, was=JobState.RUNNING)

    def _finish(self, job: _Job, state: JobState, *, was: JobState, outcome: StageResult | None = None,
                error: JobError | None = None) -> None:
        """Make the job final (caller holds ``job.cond``) and forget the oldest finished jobs."""
        job.outcome, job.error, job.end_time = outcome, error, time.time()
        job.emit(state)
        self._changed(job)
        if self._metrics:
            self._metrics.active.labels(was.name.lower()).dec()
            self._metrics.finished.labels(job.kind, state.name.lower()).inc()
            if job.start_time is not None:
                self._metrics.duration.labels(job.kind).observe(job.end_time - job.start_time)
        with self._lock:
            self._finished.append(job.id)
            while len(self._finished) > self._max_finished:
                self._jobs.pop(self._finished.popleft(), None)

    def _changed(self, job: _Job) -> None:
        """Mark a job's record for the journal's next write."""
        if self._writer is not None and job.spec is not None:
            self._writer.changed(job.id, job.state.final)

    def _records(self, ids: set[str]) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        """For the journal writer: the jobs ``ids`` and every running one of this process (their leases), each
        with the function that takes its record when it is written."""
        with self._lock:
            jobs = [self._jobs[i] for i in ids if i in self._jobs]
            jobs += [j for j in self._jobs.values() if j.id not in ids and j.state == JobState.RUNNING
                     and j.fn is not None and j.spec is not None]

        def taker(job: _Job) -> Callable[[], dict[str, Any]]:
            def take() -> dict[str, Any]:
                with job.cond:
                    return job.record()
            return take

        return [(job.id, taker(job)) for job in jobs]
