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
:class:`~slimyolo.rpc.journal.JobJournal` the jobs outlive the process (see there): a Start...
call's ``request_id`` finds the job it started before on any replica sharing the store, and a
server that drains hands its jobs over (:meth:`JobManager.shutdown`) to another replica, which
takes them over at once under their ids.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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
from slimyolo.stages.durable import json_safe
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
    started_by: str | None = None  # the caller's name (slimyolo.security.Identity); None on an open server


class _Job:
    def __init__(self, job_id: str, kind: str, fn: JobFn | None, max_events: int,
                 spec: Mapping[str, Any] | None = None, started_by: str | None = None) -> None:
        self.id, self.kind, self.fn, self.spec, self.started_by = job_id, kind, fn, spec, started_by
        self.cond = threading.Condition()
        self.state = JobState.QUEUED
        self.progress: Event | None = None
        self.outcome: StageResult | None = None
        self.error: JobError | None = None
        self.create_time, self.start_time, self.end_time = time.time(), None, None
        self.events: collections.deque[JobEvent] = collections.deque(maxlen=max_events)
        self.seq = itertools.count()
        self.cancel_reason: JobError | None = None  # set by cancel(); read by the progress callback
        # Set when the server drains: the job stops at its next checkpoint, or at its next event after this time.
        self.hand_over_by: float | None = None
        self.handed_over = False  # released to another replica: this process neither runs nor writes it any more

    def emit(self, state: JobState, progress: Event | None = None) -> None:
        """Record an event (caller holds ``cond``) and wake the watchers."""
        self.state = state
        self.events.append(JobEvent(next(self.seq), time.time(), state, progress))
        self.cond.notify_all()

    def snapshot(self) -> JobSnapshot:
        return JobSnapshot(self.id, self.kind, self.state, self.progress, self.outcome, self.error,
                           self.create_time, self.start_time, self.end_time, self.started_by)

    def record(self) -> dict[str, Any]:
        """The job as a JSON document (caller holds ``cond``): what the journal stores."""
        outcome = None if self.outcome is None else {
            "artifacts": {role: {"uri": a.uri, "sha256": a.sha256, "size_bytes": a.size_bytes}
                          for role, a in self.outcome.artifacts.items()},
            "metrics": dict(self.outcome.metrics)}
        return {"id": self.id, "kind": self.kind, "spec": self.spec, "started_by": self.started_by,
                "state": self.state.name,
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
        self.started_by = record.get("started_by")  # records of earlier servers have none
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


class _HandedOver(Cancelled):
    """Raised by a job's progress callback once its server drains and the job reached a safe point."""


def request_job_id(request_id: str, started_by: str | None = None) -> str:
    """The id of the job a Start... call with ``request_id`` starts (for the caller ``started_by``): the same on
    every replica, so that a retried call finds the job in the store wherever it lands."""
    return hashlib.sha256(json.dumps(["request", started_by, request_id]).encode()).hexdigest()[:32]


def _same_spec(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two job specs are the same JSON document (one may have come back from the journal)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


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
        self._requests = threading.Lock()  # one job per request id, however many retries arrive at once
        self._metrics = JobMetrics(registry) if registry is not None else None
        if journal is not None:
            threading.Thread(target=self._adopt_forever, name="job-adopt", daemon=True).start()

    # -- the API ------------------------------------------------------------------------------

    def submit(self, kind: str, fn: JobFn, spec: Mapping[str, Any] | None = None, *,
               started_by: str | None = None, request_id: str = "") -> JobSnapshot:
        """Queue ``fn(progress)`` as a job of ``kind`` ("train", "sweep", ...) and return it (QUEUED).

        ``spec`` (a JSON document) is what the journal keeps to run the job again after a restart;
        ``started_by`` the name of the caller, the only one (with admins) who sees the job (``viewer``).
        ``request_id`` (a client's Start... call) makes the call idempotent: the job that caller started with it
        before, here or on a replica journaling to the same store, is returned as it is now instead of a new
        one. A journaled job's record is written before this returns, so that every replica (a retry, a
        watcher balanced to another replica) finds it at once.
        """
        if not request_id:
            job = _Job(uuid.uuid4().hex, kind, fn, self.max_events, spec, started_by)
            self._enqueue(job)
            self._written(job)
            return job.snapshot()
        job_id = request_job_id(request_id, started_by)
        with self._requests:
            try:
                job = self._job(job_id)
            except NotFoundError:
                job = _Job(job_id, kind, fn, self.max_events, spec, started_by)
                self._enqueue(job)
                self._written(job)
            else:
                if job.kind != kind or not _same_spec(job.spec, spec):
                    raise SlimYoloError(f"request_id: {request_id!r} started another job before ({job.kind} job "
                                        f"{job_id}, another spec); use a new request id for a new job")
        with job.cond:
            return job.snapshot()

    def recover(self) -> list[str]:
        """Load the journal's jobs: finished ones to answer for, unfinished ones whose owner is gone
        to run again under their id (or to fail with the reason). Returns the ids run again."""
        if self.journal is None:
            return []
        again = []
        for record in self.journal.records():
            if JobState[record["state"]].final:
                job = _Job(record["id"], record["kind"], None, self.max_events, record.get("spec"))
                with job.cond:
                    job.restore(record)
                with self._lock:
                    self._jobs.setdefault(job.id, job)
                    self._finished.append(job.id)
            elif self.journal.owner_gone(record) and self._take_over(record, "the server restarted"):
                again.append(record["id"])
            # else another live replica runs it; GetJob reads its record from the store
        if again:
            log.info("running %d job(s) again that stopped with an earlier server: %s", len(again), ", ".join(again))
        return again

    def _take_over(self, record: Mapping[str, Any], why: str) -> bool:
        """Run an unfinished job whose owner is gone (it crashed, or released the job while draining) under its
        id, if this process claims it first; a job whose spec cannot run again fails with the reason. The event
        ``recovered`` says ``why`` (a crash) unless the owner released the job (its ``handed_over`` says so)."""
        assert self.journal is not None
        job = _Job(record["id"], record["kind"], None, self.max_events, record.get("spec"))
        with job.cond:
            job.restore(record)
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
            return False
        if not self.journal.claim(record):
            return False  # another replica took it in the same moment
        if record.get("owner") is not None:  # its owner died (a job handed over says so itself: handed_over)
            with job.cond:
                job.progress = StageStep(job.kind, "recovered", {"after": why})
                job.emit(JobState.QUEUED, job.progress)
        try:
            self._enqueue(job, recovered=True)
        except UnavailableError:  # this server began to drain meanwhile: give the job back
            with job.cond:
                self.journal.offer(job.record())
            return False
        return True

    def _adopt_forever(self) -> None:
        """Take over the jobs that draining replicas handed over (their notes, looked for about once a second)
        and, once a lease period, the unfinished jobs whose owner died (its lease ran out: a replica lost,
        or replaced by a pod of another name) without waiting for a replica to start."""
        assert self.journal is not None
        scanned = time.monotonic()
        while not self._closing:
            time.sleep(self.journal.offers_seconds)
            try:
                candidates = [(job_id, True) for job_id in self.journal.offered()]
                if time.monotonic() - scanned >= self.journal.lease_seconds:
                    scanned = time.monotonic()
                    candidates += [(job_id, False) for job_id in self.journal.ids()]
                for job_id, offered in candidates:
                    with self._lock:
                        if self._closing:
                            return
                        mine = self._jobs.get(job_id)
                    if mine is not None and (mine.state.final or (mine.fn is not None and not mine.handed_over)):
                        continue  # known to be over, or running here
                    record = self.journal.load(job_id)
                    if record is None or JobState[record["state"]].final:
                        if offered:
                            self.journal.withdraw(job_id)
                    elif self.journal.owner_gone(record) and self._take_over(record, "its owner's lease ran out"):
                        log.info("took over %s job %s (%s)", record["kind"], job_id,
                                 "handed over by another replica" if offered else "its owner's lease ran out")
            except SlimYoloError as exc:  # the store is down: look again at the next round
                log.warning("could not look for jobs to take over: %s", exc)

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

    def get(self, job_id: str, viewer: str | None = None) -> JobSnapshot:
        """The job ``job_id``. With a ``viewer`` (a caller's name), only a job that caller started: any other is
        NOT_FOUND, as an unknown id is, so that nobody learns which ids exist. The same for every method here."""
        job = self._job(job_id, viewer)
        with job.cond:
            return job.snapshot()

    def list(self, viewer: str | None = None) -> list[JobSnapshot]:
        """Every retained job (``viewer``'s alone, with a viewer), newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if viewer is None or j.started_by == viewer]
        return sorted((self.get(j.id) for j in jobs), key=lambda s: s.create_time, reverse=True)

    def cancel(self, job_id: str, reason: JobError | None = None, viewer: str | None = None) -> JobSnapshot:
        """Stop a job: at once if queued, at its next progress report if running; no-op if final."""
        job = self._job(job_id, viewer)
        reason = reason or JobError(ErrorKind.CANCELLED, f"job {job_id} was cancelled")
        with job.cond:
            if job.state == JobState.QUEUED:
                self._finish(job, JobState.CANCELLED if reason.kind is ErrorKind.CANCELLED
                             else JobState.FAILED, error=reason, was=JobState.QUEUED)
            elif job.state == JobState.RUNNING and job.cancel_reason is None:
                job.cancel_reason = reason
            return job.snapshot()

    def watch(self, job_id: str, from_seq: int = 0, *, active: Callable[[], bool] = lambda: True,
              poll_seconds: float = 0.5, viewer: str | None = None) -> Iterator[JobEvent]:
        """Events of the job from ``from_seq`` on: the retained ones first, then live ones.

        Ends after the event that makes the job final, or when ``active()`` turns false (the
        watcher went away), checked every ``poll_seconds``.
        """
        job = self._job(job_id, viewer)
        next_seq = max(0, from_seq)
        while True:
            with job.cond:
                while True:
                    pending = [e for e in job.events if e.seq >= next_seq]
                    if pending or job.state.final or job.handed_over or not active():
                        break
                    job.cond.wait(poll_seconds)
                    if job.fn is None and self.journal is not None:  # run by another replica: its record
                        record = self.journal.load(job.id)
                        if record is not None:
                            job.restore(record)
            yield from pending
            if pending:
                next_seq = pending[-1].seq + 1
            elif job.handed_over:
                raise UnavailableError(f"job {job.id} was handed over to another replica (this one is shutting "
                                       f"down); watch it again from seq {next_seq}")
            elif job.state.final or not active():
                return

    def shutdown(self, deadline: float) -> None:
        """Take no new jobs; hand the journaled ones over to another replica; let the others finish until
        shortly before ``deadline``, then stop them.

        A journaled job (a stage service's) runs on until its next checkpoint (its ``checkpoint``
        event: with ``checkpoint_steps``, a step boundary) or, once only the margin before
        ``deadline`` is left, its next event (the epoch in progress is abandoned), then stops with
        the event ``handed_over`` and its record released (:meth:`JournalWriter.hand_over`); a
        queued one is released at once. Another replica takes it over at once under its id and
        resumes it from its checkpoint; its watchers here get the event, then UNAVAILABLE, and
        watch on from the next event on another replica. Other jobs stopped this way (and queued
        ones) fail with UNAVAILABLE: the client can start them again on another replica. Either
        way their watchers' streams end, so the server's drain is not held up by them.
        """
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
        reason = JobError(ErrorKind.UNAVAILABLE, "the server shut down before the job finished; start it again")
        margin = min(5.0, max(0.0, deadline - time.monotonic()) / 4)
        for job in jobs:
            if self._journaled(job):
                job.hand_over_by = deadline - margin
                self._hand_over(job, stopped=False)  # a queued one; a running one stops at its next safe point
            elif job.state == JobState.QUEUED:
                self.cancel(job.id, reason)
        self._wait_idle(jobs, deadline - margin)
        for job in jobs:
            if not job.state.final and not job.handed_over and not self._journaled(job):
                self.cancel(job.id, reason)
        self._wait_idle(jobs, deadline)
        for job in jobs:  # silent until the end: released all the same, as the process ends with it
            if self._journaled(job):
                self._hand_over(job, stopped=True)
        for _ in self._threads:
            self._queue.put(None)
        if self._writer is not None:
            self._writer.flush()  # the jobs' final records, before the process ends

    # -- internals ----------------------------------------------------------------------------

    def _job(self, job_id: str, viewer: str | None = None) -> _Job:
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
        if job is None or (viewer is not None and job.started_by != viewer):
            raise NotFoundError(f"id: no job {job_id!r} on this server" + (
                "" if self.journal is not None else " (finished jobs are kept only for a while, and not across "
                                                    "restarts)"))
        return job

    def _journaled(self, job: _Job) -> bool:
        """Whether ``job`` is one this process runs (or will) and keeps in the journal: one to hand over."""
        return self._writer is not None and job.spec is not None and job.fn is not None \
            and not job.handed_over and not job.state.final

    def _hand_over(self, job: _Job, *, stopped: bool) -> None:
        """Release a journaled job to another replica (event ``handed_over``, QUEUED): a queued one, or one whose
        run ``stopped`` (at a safe point, or at the drain's deadline)."""
        assert self._writer is not None and self.journal is not None
        with job.cond:
            if job.handed_over or job.state.final or (job.state == JobState.RUNNING and not stopped):
                return
            was, job.handed_over = job.state, True
            job.progress = StageStep(job.kind, "handed_over", {"from": self.journal.owner["host"]})
            job.emit(JobState.QUEUED, job.progress)
        if self._metrics:
            self._metrics.active.labels(was.name.lower()).dec()
            self._metrics.finished.labels(job.kind, "handed_over").inc()

        def take() -> dict[str, Any]:
            with job.cond:
                return job.record()

        try:
            self._writer.hand_over(job.id, take)
        except SlimYoloError as exc:  # the store is down: a replica takes the job over once its lease runs out
            log.warning("could not hand %s job %s over: %s", job.kind, job.id, exc)

    @staticmethod
    def _wait_idle(jobs: list[_Job], deadline: float) -> None:
        for job in jobs:
            with job.cond:
                while not job.state.final and not job.handed_over and time.monotonic() < deadline:
                    job.cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
        with job.cond:
            if job.state != JobState.QUEUED or job.handed_over:  # cancelled, or handed over, while queued
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
            if job.handed_over:  # released at the drain's deadline: another replica runs it now
                raise _HandedOver(f"job {job.id} was handed over")
            event_to_dict(event)  # a TypeError here, in the job, for what could not travel
            with job.cond:
                job.progress = event
                job.emit(JobState.RUNNING, event)
            self._changed(job)
            if job.hand_over_by is not None and ((isinstance(event, StageStep) and event.step == "checkpoint")
                                                 or time.monotonic() >= job.hand_over_by):
                raise _HandedOver(f"job {job.id} stops at a safe point: its server drains")

        try:
            outcome = job.fn(progress)
            if outcome is None:
                outcome = StageResult()
            if not isinstance(outcome, StageResult):
                raise TypeError(f"a {job.kind} job returned {type(outcome).__name__}, not a StageResult")
            bad = [role for role, a in outcome.artifacts.items() if not isinstance(a, Artifact)]
            if bad:
                raise TypeError(f"a {job.kind} job returned artifacts {bad} that are not store Artifacts")
            outcome = StageResult(dict(outcome.artifacts), json_safe(outcome.metrics))
        except _HandedOver:
            self._hand_over(job, stopped=True)
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

    def _written(self, job: _Job) -> None:
        """Write a new job's record now (not at the journal writer's next round)."""
        if self._writer is not None and job.spec is not None:
            self._writer.flush()

    def _changed(self, job: _Job) -> None:
        """Mark a job's record for the journal's next write (none once it is handed over)."""
        if self._writer is not None and job.spec is not None and not job.handed_over:
            self._writer.changed(job.id, job.state.final)

    def _records(self, ids: set[str]) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        """For the journal writer: the jobs ``ids`` and every running one of this process (their leases), each
        with the function that takes its record when it is written."""
        with self._lock:
            jobs = [self._jobs[i] for i in ids if i in self._jobs and not self._jobs[i].handed_over]
            jobs += [j for j in self._jobs.values() if j.id not in ids and j.state == JobState.RUNNING
                     and j.fn is not None and j.spec is not None and not j.handed_over]

        def taker(job: _Job) -> Callable[[], dict[str, Any]]:
            def take() -> dict[str, Any]:
                with job.cond:
                    return job.record()
            return take

        return [(job.id, taker(job)) for job in jobs]
