"""Long-running jobs: a core function run in a worker thread, followed, read and cancelled by id.

Training, sweeps and conversion take minutes to hours, longer than any RPC should. A
``Start...`` call submits the work here and returns at once with a job id; ``slimyolo.v1.Jobs``
(served by :class:`JobsServicer`, next to the stage's own service) reads it, streams its events
and cancels it.

The work is a function of one argument, ``progress``, exactly the contract of the core
library's long functions: they call ``progress(event)`` with a typed event of
:mod:`slimyolo.progress` and stop when the callback raises :class:`slimyolo.errors.Cancelled`.
The job keeps the events as they are; they become JSON values (a ``Struct``, with their
``type``) only where they leave as protobuf messages. That is how cancellation
works here: CancelJob sets a flag, and the job's next progress report raises Cancelled inside
it. A job's failure is kept as a gRPC status (:func:`slimyolo.rpc.status.status_of`), so an
object-store outage reaches the client as UNAVAILABLE, and the client knows a retry may work.

Every state change and progress report is an event with a sequence number; a watcher that
comes late replays the retained history, then follows new events as they happen.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from slimyolo.errors import Cancelled, NotFoundError, SlimYoloError, UnavailableError
from slimyolo.progress import Event, Progress, event_to_dict
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.messages import artifact_to_proto, dict_to_struct
from slimyolo.rpc.status import status_of
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


@dataclass(frozen=True)
class JobOutcome:
    """What a job function returns: the files it produced (by role) and its final numbers."""

    artifacts: Mapping[str, Artifact] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


JobFn = Callable[[Progress], JobOutcome | None]


@dataclass(frozen=True)
class JobEvent:
    seq: int
    time: float
    state: JobState
    progress: Event | None = None


@dataclass(frozen=True)
class JobError:
    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class JobSnapshot:
    """A job as it was at one moment (what GetJob returns)."""

    id: str
    kind: str
    state: JobState
    progress: Event | None
    outcome: JobOutcome | None
    error: JobError | None
    create_time: float
    start_time: float | None
    end_time: float | None


class _Job:
    def __init__(self, job_id: str, kind: str, fn: JobFn, max_events: int) -> None:
        self.id, self.kind, self.fn = job_id, kind, fn
        self.cond = threading.Condition()
        self.state = JobState.QUEUED
        self.progress: Event | None = None
        self.outcome: JobOutcome | None = None
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
                 max_finished: int = 1_000) -> None:
        if workers < 1:
            raise SlimYoloError(f"job workers must be at least 1, got {workers}")
        self.workers, self.max_events = workers, max_events
        self._jobs: dict[str, _Job] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._max_finished = max_finished
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._metrics = _JobMetrics(registry) if registry is not None else None

    # -- the API ------------------------------------------------------------------------------

    def submit(self, kind: str, fn: JobFn) -> JobSnapshot:
        """Queue ``fn(progress)`` as a job of ``kind`` ("train", "sweep", ...) and return it (QUEUED)."""
        job = _Job(uuid.uuid4().hex, kind, fn, self.max_events)
        with self._lock:
            if self._closing:
                raise UnavailableError("the server is shutting down and takes no new jobs; retry on another replica")
            self._jobs[job.id] = job
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"job-worker-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        with job.cond:
            job.emit(JobState.QUEUED)
        if self._metrics:
            self._metrics.submitted.labels(kind).inc()
            self._metrics.active.labels("queued").inc()
        self._queue.put(job)
        return job.snapshot()

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
        reason = reason or JobError(grpc.StatusCode.CANCELLED, f"job {job_id} was cancelled")
        with job.cond:
            if job.state == JobState.QUEUED:
                self._finish(job, JobState.CANCELLED if reason.code == grpc.StatusCode.CANCELLED
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
        reason = JobError(grpc.StatusCode.UNAVAILABLE, "the server shut down before the job finished; start it again")
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

    # -- internals ----------------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        if not job_id:
            raise SlimYoloError("id: a job id is required")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"id: no job {job_id!r} on this server (finished jobs are kept only for a while, "
                                "and not across restarts)")
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

        try:
            outcome = job.fn(progress)
            if outcome is None:
                outcome = JobOutcome()
            if not isinstance(outcome, JobOutcome):
                raise TypeError(f"a {job.kind} job returned {type(outcome).__name__}, not a JobOutcome")
            bad = [role for role, a in outcome.artifacts.items() if not isinstance(a, Artifact)]
            if bad:
                raise TypeError(f"a {job.kind} job returned artifacts {bad} that are not store Artifacts")
            outcome = JobOutcome(dict(outcome.artifacts), _jsonable(outcome.metrics))
        except Cancelled as exc:
            reason = job.cancel_reason or JobError(grpc.StatusCode.CANCELLED, str(exc) or "cancelled")
            state = JobState.CANCELLED if reason.code == grpc.StatusCode.CANCELLED else JobState.FAILED
            with job.cond:
                self._finish(job, state, error=reason, was=JobState.RUNNING)
        except BaseException as exc:
            code, message = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s job %s failed", job.kind, job.id, exc_info=exc)
            with job.cond:
                self._finish(job, JobState.FAILED, error=JobError(code, message), was=JobState.RUNNING)
        else:
            with job.cond:
                self._finish(job, JobState.SUCCEEDED, outcome=outcome, was=JobState.RUNNING)

    def _finish(self, job: _Job, state: JobState, *, was: JobState, outcome: JobOutcome | None = None,
                error: JobError | None = None) -> None:
        """Make the job final (caller holds ``job.cond``) and forget the oldest finished jobs."""
        job.outcome, job.error, job.end_time = outcome, error, time.time()
        job.emit(state)
        if self._metrics:
            self._metrics.active.labels(was.name.lower()).dec()
            self._metrics.finished.labels(job.kind, state.name.lower()).inc()
            if job.start_time is not None:
                self._metrics.duration.labels(job.kind).observe(job.end_time - job.start_time)
        with self._lock:
            self._finished.append(job.id)
            while len(self._finished) > self._max_finished:
                self._jobs.pop(self._finished.popleft(), None)


class _JobMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.submitted = Counter("slimyolo_jobs_submitted_total", "Jobs submitted, by kind.", ["kind"],
                                 registry=registry)
        self.finished = Counter("slimyolo_jobs_finished_total", "Jobs that reached a final state, by kind and state.",
                                ["kind", "state"], registry=registry)
        self.active = Gauge("slimyolo_jobs_active", "Jobs queued or running now.", ["state"], registry=registry)
        self.duration = Histogram("slimyolo_job_duration_seconds", "Running time of finished jobs, by kind.",
                                  ["kind"], registry=registry,
                                  buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400))


# -- the Jobs service ----------------------------------------------------------------------------


def _timestamp(msg: Any, seconds: float | None) -> None:
    if seconds is not None:
        msg.FromNanoseconds(int(seconds * 1e9))


def event_to_proto(event: JobEvent) -> common_pb2.JobEvent:
    msg = common_pb2.JobEvent(seq=event.seq, state=int(event.state))
    _timestamp(msg.time, event.time)
    if event.progress is not None:
        msg.progress.CopyFrom(dict_to_struct(event_to_dict(event.progress)))
    return msg


def job_to_proto(job: JobSnapshot) -> common_pb2.Job:
    msg = common_pb2.Job(id=job.id, kind=job.kind, state=int(job.state))
    if job.progress is not None:
        msg.progress.CopyFrom(dict_to_struct(event_to_dict(job.progress)))
    if job.outcome is not None:
        for role, artifact in job.outcome.artifacts.items():
            msg.result.artifacts[role].CopyFrom(artifact_to_proto(artifact))
        msg.result.metrics.CopyFrom(dict_to_struct(job.outcome.metrics))
    if job.error is not None:
        msg.error.code, msg.error.message = job.error.code.value[0], job.error.message
    _timestamp(msg.create_time, job.create_time)
    _timestamp(msg.start_time, job.start_time)
    _timestamp(msg.end_time, job.end_time)
    return msg


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    """``slimyolo.v1.Jobs`` over a JobManager; errors become statuses in the server's interceptor."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=job_to_proto(self.manager.get(request.id)))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest,
                 context: grpc.ServicerContext) -> Iterator[jobs_pb2.WatchJobResponse]:
        for event in self.manager.watch(request.id, request.from_seq, active=context.is_active):
            response = jobs_pb2.WatchJobResponse(event=event_to_proto(event))
            if event.state.final:
                response.job.CopyFrom(job_to_proto(self.manager.get(request.id)))
            yield response

    def CancelJob(self, request: jobs_pb2.CancelJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.CancelJobResponse:
        return jobs_pb2.CancelJobResponse(job=job_to_proto(self.manager.cancel(request.id)))

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in self.manager.list()])
