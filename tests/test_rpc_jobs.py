"""The job manager and the Jobs service, running real core functions behind a real gRPC server."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request

import grpc
import pytest

from slimyolo.darknet.cfg import parse_cfg
from slimyolo.darknet.flops import model_stats
from slimyolo.darknet.zoo import ZOO, make_cfg
from slimyolo.errors import Cancelled, NotFoundError, SlimYoloError, UnavailableError
from slimyolo.progress import Count, StageStep, event_from_dict
from slimyolo.rpc.client import connect, follow_job
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc
from slimyolo.rpc.jobs import JobManager, JobState
from slimyolo.rpc.journal import JobJournal
from slimyolo.rpc.messages import artifact_from_proto, struct_to_dict
from slimyolo.rpc.server import Server, ServerConfig
from slimyolo.rpc.status import STATUS
from slimyolo.stages.runners import StageResult
from slimyolo.store import Artifact, LocalStore, S3Store, open_store

S = common_pb2  # JOB_STATE_* numbers
NAMES = list(ZOO)

# darknet's BFLOPs of the zoo models for 2 classes at 416x416 (README: yolov4 → 59.570).
YOLOV4_2C_416_BFLOPS = 59.570


def zoo_flops(progress, size: int = 416) -> StageResult:
    """A real core computation reporting progress per model: BFLOPs of every zoo model."""
    bflops = {}
    for name in ZOO:
        stats = model_stats(make_cfg(name, 2, size))
        progress(StageStep("flops", name, {"bflops": stats.bflops, "params": stats.params}))
        bflops[name] = stats.bflops
    return StageResult(metrics={"bflops": bflops, "size": size})


def flops_until(gate: threading.Event):
    """Counts zoo FLOPs over and over (reporting each) until ``gate`` is set, or for at most 10 minutes."""

    def run(progress) -> StageResult:
        counted, deadline = 0, time.monotonic() + 600
        while not gate.is_set() and time.monotonic() < deadline:
            name = NAMES[counted % len(NAMES)]
            progress(StageStep("flops", name, {"bflops": model_stats(make_cfg(name, 2, 320)).bflops}))
            counted += 1
        return StageResult(metrics={"counted": counted})

    return run


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def served(request):
    """(server, JobManager, channel) on 127.0.0.1; job workers from the test's parametrisation (default 1)."""
    workers = getattr(request, "param", 1)
    server = Server("jobs-test", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0, job_workers=workers))
    manager = server.enable_jobs()
    server.start()
    channel = connect(f"127.0.0.1:{server.port}")
    yield server, manager, channel
    channel.close()
    server.stop(5)


def test_a_job_reports_progress_and_result_through_the_service(served):
    _, manager, channel = served
    stub = jobs_pb2_grpc.JobsStub(channel)
    job_id = manager.submit("flops", zoo_flops).id
    events = []
    job = follow_job(channel, job_id, on_event=events.append)

    assert [e.seq for e in events] == list(range(len(ZOO) + 3))
    assert [e.state for e in events] == [S.JOB_STATE_QUEUED] + [S.JOB_STATE_RUNNING] * (len(ZOO) + 1) + [
        S.JOB_STATE_SUCCEEDED]
    reported = [event_from_dict(struct_to_dict(e.progress)) for e in events if e.HasField("progress")]
    assert [e.step for e in reported] == NAMES
    assert reported == [e.progress for e in manager.watch(job_id) if e.progress is not None]  # typed, as reported
    assert job.state == S.JOB_STATE_SUCCEEDED and job.kind == "flops" and not job.HasField("error")
    metrics = struct_to_dict(job.result.metrics)
    assert metrics["size"] == 416 and round(metrics["bflops"]["yolov4"], 3) == YOLOV4_2C_416_BFLOPS
    assert event_from_dict(struct_to_dict(job.progress)) == manager.get(job_id).progress == reported[-1]
    assert job.create_time.ToNanoseconds() <= job.start_time.ToNanoseconds() <= job.end_time.ToNanoseconds()

    assert stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), timeout=30).job == job
    # A late watcher replays the whole history; from_seq replays its tail.
    replay = [r.event for r in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), timeout=30)]
    assert replay == events
    tail = list(stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id, from_seq=len(events) - 2), timeout=30))
    assert [r.event.seq for r in tail] == [len(events) - 2, len(events) - 1]
    assert not tail[0].HasField("job") and tail[-1].job == job
    assert [j.id for j in stub.ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs] == [job_id]


def test_watchers_follow_live_events(served):
    _, manager, channel = served
    gate = threading.Event()
    job_id = manager.submit("flops", flops_until(gate)).id
    seen: list[common_pb2.JobEvent] = []
    result: dict[str, common_pb2.Job] = {}
    watcher = threading.Thread(target=lambda: result.update(job=follow_job(channel, job_id, seen.append)))
    watcher.start()
    wait_for(lambda: len(seen) >= 5, what="live progress events")
    assert watcher.is_alive()  # still following a running job
    gate.set()
    watcher.join(60)
    assert result["job"].state == S.JOB_STATE_SUCCEEDED
    assert [e.seq for e in seen] == list(range(len(seen)))
    assert struct_to_dict(result["job"].result.metrics)["counted"] == len(seen) - 3


def test_cancel_a_running_and_a_queued_job(served):
    _, manager, channel = served
    stub = jobs_pb2_grpc.JobsStub(channel)
    gate = threading.Event()  # never set: only cancellation stops the running job
    running = manager.submit("flops", flops_until(gate)).id
    queued = manager.submit("flops", zoo_flops).id  # one worker: waits behind the running one
    wait_for(lambda: manager.get(running).progress is not None, what="the first job to run")
    assert manager.get(queued).state == JobState.QUEUED

    cancelled = stub.CancelJob(jobs_pb2.CancelJobRequest(id=queued), timeout=30).job
    assert cancelled.state == S.JOB_STATE_CANCELLED
    assert (cancelled.error.code, cancelled.error.message) == (grpc.StatusCode.CANCELLED.value[0],
                                                               f"job {queued} was cancelled")
    assert [e.state for e in manager.watch(queued)] == [JobState.QUEUED, JobState.CANCELLED]  # never ran

    assert stub.CancelJob(jobs_pb2.CancelJobRequest(id=running), timeout=30).job.state in (
        S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLED)  # stops at its next progress report
    with pytest.raises(Cancelled, match=f"flops job {running}: job {running} was cancelled"):
        follow_job(channel, running)
    final = manager.get(running)
    assert final.state == JobState.CANCELLED and STATUS[final.error.kind] == grpc.StatusCode.CANCELLED
    assert stub.CancelJob(jobs_pb2.CancelJobRequest(id=running), timeout=30).job.state == S.JOB_STATE_CANCELLED


def test_failures_are_carried_as_status_codes(served, tmp_path, caplog):
    _, manager, channel = served
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text(make_cfg("yolov3-tiny", 2, 416).to_text().replace("filters=16", "filters=sixteen", 1))
    dead = S3Store("127.0.0.1:9", "bucket", access_key="k", secret_key="s", secure=False, retries=2,
                   backoff_seconds=0.01)
    local = LocalStore(tmp_path / "store")

    def non_json(progress):
        progress(StageStep("test", "when", {"when": object()}))

    def not_an_event(progress):
        progress({"when": 1})

    cases = {
        "cfg": (lambda progress: parse_cfg(bad_cfg), grpc.StatusCode.INVALID_ARGUMENT, SlimYoloError, "bad.cfg:"),
        "store-down": (lambda progress: dead.put_file(bad_cfg), grpc.StatusCode.UNAVAILABLE, UnavailableError,
                       "127.0.0.1:9 is unavailable"),
        "missing": (lambda progress: local.fetch(Artifact(local.uri_of("blobs/sha256/" + "0" * 64), "0" * 64, 1),
                                                 tmp_path / "x"), grpc.StatusCode.NOT_FOUND, NotFoundError,
                    "does not exist"),
        "bug": (lambda progress: {}["missing"], grpc.StatusCode.INTERNAL, SlimYoloError, "KeyError"),
        "non-json": (non_json, grpc.StatusCode.INTERNAL, SlimYoloError, "TypeError"),
        "not-an-event": (not_an_event, grpc.StatusCode.INTERNAL, SlimYoloError, "TypeError"),
        "wrong-result": (lambda progress: {"weights": "w"}, grpc.StatusCode.INTERNAL, SlimYoloError, "TypeError"),
    }
    with caplog.at_level(logging.ERROR, logger="slimyolo.rpc.jobs"):
        for kind, (fn, code, error, message) in cases.items():
            job_id = manager.submit(kind, fn).id
            with pytest.raises(error, match=message) as err:
                follow_job(channel, job_id)
            assert type(err.value) is error, kind
            snapshot = manager.get(job_id)
            assert (snapshot.state, STATUS[snapshot.error.kind]) == (JobState.FAILED, code), kind
    assert sum(1 for r in caplog.records if r.exc_info) == 4  # the four bugs, with tracebacks


def test_a_store_outage_fails_the_job_with_unavailable_and_a_retry_succeeds(served, tmp_path):
    """The job builds a model, initialises its weights and uploads them; the S3 server is down, then up."""
    from seaweed import SeaweedServer

    from slimyolo.darknet.init import init_random_weights
    from slimyolo.darknet.model import load_model

    _, manager, channel = served
    s3 = SeaweedServer(tmp_path / "weed")  # ports chosen, not started yet
    store = open_store(env=s3.env("models", SLIMYOLO_STORE_RETRIES="2"))

    def init_and_upload(progress) -> StageResult:
        cfg = make_cfg("yolov4-tiny", 2, 64)
        cfg_path = tmp_path / "yolov4-tiny.cfg"
        cfg.write(cfg_path)
        progress(StageStep("init", "init"))
        weights = tmp_path / "yolov4-tiny.weights"
        init_random_weights(load_model(cfg), seed=1).save_darknet_weights(weights)
        progress(StageStep("init", "upload", {"bytes": weights.stat().st_size}))
        return StageResult(artifacts={"cfg": store.put_file(cfg_path), "weights": store.put_file(weights)},
                          metrics={"bflops": model_stats(cfg).bflops})

    with pytest.raises(UnavailableError, match="is unavailable"):
        follow_job(channel, manager.submit("init", init_and_upload).id)
    try:
        s3.start()
        s3.new_bucket("models")
        job = follow_job(channel, manager.submit("init", init_and_upload).id)
        weights = artifact_from_proto(job.result.artifacts["weights"], "weights")
        assert weights.uri.startswith("s3://models/blobs/sha256/")
        got = store.fetch(weights, tmp_path / "downloaded.weights")
        assert got.read_bytes() == (tmp_path / "yolov4-tiny.weights").read_bytes()
        assert weights.size_bytes == got.stat().st_size
    finally:
        s3.stop()


def test_event_history_is_bounded_and_finished_jobs_are_forgotten():
    manager = JobManager(max_events=4, max_finished=2)

    def many(progress) -> None:
        for i in range(10):
            progress(Count("many", i, 10))

    ids = [manager.submit("many", many).id for _ in range(3)]
    wait_for(lambda: manager.list() and all(s.state.final for s in manager.list()) and len(manager.list()) == 2,
             what="the jobs to finish")
    with pytest.raises(NotFoundError, match="no job"):
        manager.get(ids[0])  # the oldest finished job was dropped
    events = list(manager.watch(ids[2]))
    assert [e.seq for e in events] == [9, 10, 11, 12]  # QUEUED, RUNNING, 10 reports, SUCCEEDED: the last 4
    assert events[-1].state == JobState.SUCCEEDED and events[0].progress == Count("many", 7, 10)
    assert manager.get(ids[2]).progress == Count("many", 9, 10)


def test_shutdown_lets_running_jobs_finish_and_fails_the_rest_with_unavailable():
    manager = JobManager(workers=1)
    gate = threading.Event()
    running = manager.submit("flops", flops_until(gate)).id
    queued = manager.submit("flops", zoo_flops).id
    wait_for(lambda: manager.get(running).progress is not None, what="the first job to run")
    stopper = threading.Thread(target=manager.shutdown, args=(time.monotonic() + 60,))
    stopper.start()
    wait_for(lambda: manager.get(queued).state.final, what="the queued job to fail")
    assert STATUS[manager.get(queued).error.kind] == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(UnavailableError, match="shutting down"):
        manager.submit("flops", zoo_flops)
    assert stopper.is_alive() and manager.get(running).state == JobState.RUNNING  # given its grace
    gate.set()
    stopper.join(60)
    assert manager.get(running).state == JobState.SUCCEEDED


def test_shutdown_stops_jobs_that_outlive_the_grace_period():
    manager = JobManager(workers=1)
    running = manager.submit("flops", flops_until(threading.Event())).id
    wait_for(lambda: manager.get(running).progress is not None, what="the job to run")
    manager.shutdown(time.monotonic() + 1.0)
    wait_for(lambda: manager.get(running).state.final, what="the job to stop")
    final = manager.get(running)
    assert final.state == JobState.FAILED and STATUS[final.error.kind] == grpc.StatusCode.UNAVAILABLE
    assert "shut down" in final.error.message


def test_artifact_and_struct_conversions():
    ref = common_pb2.ArtifactRef(uri="s3://b/x", sha256="a" * 64, size_bytes=3)
    assert artifact_from_proto(ref, "cfg") == Artifact("s3://b/x", "a" * 64, 3)
    with pytest.raises(SlimYoloError, match=r"^teacher_cfg: an artifact"):
        artifact_from_proto(common_pb2.ArtifactRef(), "teacher_cfg")
    from slimyolo.rpc.messages import dict_to_struct

    values = {"epochs": 3, "lr": 0.001, "names": ["car", "person"], "nested": {"keep": 0.01, "on": True},
              "none": None}
    assert struct_to_dict(dict_to_struct(values)) == values


def test_job_ids_are_checked(served):
    _, manager, _ = served
    with pytest.raises(SlimYoloError, match=r"^id: a job id is required"):
        manager.get("")
    with pytest.raises(NotFoundError, match=r"^id: no job 'x'"):
        manager.cancel("x")


def test_a_watcher_that_goes_away_releases_its_stream(served):
    server, manager, channel = served
    gate = threading.Event()
    job_id = manager.submit("flops", flops_until(gate)).id
    call = jobs_pb2_grpc.JobsStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=job_id), timeout=120)
    assert next(call).event.state == S.JOB_STATE_QUEUED
    call.cancel()

    def handled() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == "WatchJob"
                   and s.labels["grpc_code"] == "CANCELLED")

    wait_for(lambda: handled() == 1, what="the server to end the abandoned stream")
    assert manager.get(job_id).state == JobState.RUNNING  # the job itself goes on
    gate.set()


# -- the journal: jobs that outlive their process ---------------------------------------------------


def _journaled(store) -> JobManager:
    """A job manager journaling to ``store`` whose jobs' spec is ``{"size": N}`` (zoo_flops at N)."""
    return JobManager(journal=JobJournal(store, "test", flush_seconds=0.05),
                      rebuild=lambda kind, spec: lambda progress: zoo_flops(progress, spec["size"]))


def test_a_finished_journaled_job_answers_with_its_history_after_a_restart(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = _journaled(store)
    done = first.submit("flops", lambda progress: zoo_flops(progress, 320), spec={"size": 320})
    history = list(first.watch(done.id))
    first.shutdown(time.monotonic() + 5)  # writes the final record

    again = _journaled(store)  # a new process: nothing in memory
    assert again.recover() == []
    snapshot = again.get(done.id)
    assert snapshot.state == JobState.SUCCEEDED and snapshot.outcome == first.get(done.id).outcome
    assert list(again.watch(done.id)) == history
    assert [e.state for e in history][:2] == [JobState.QUEUED, JobState.RUNNING]


def test_an_unfinished_job_runs_again_once_its_owner_is_gone_not_before(tmp_path):
    store = LocalStore(tmp_path / "store")
    record = {"id": "a" * 32, "kind": "flops", "spec": {"size": 256}, "state": "RUNNING",
              "events": [{"seq": 0, "time": 1.0, "state": "QUEUED", "progress": None},
                         {"seq": 1, "time": 2.0, "state": "RUNNING", "progress": None}],
              "outcome": None, "error": None, "create_time": 1.0, "start_time": 2.0, "end_time": None}
    elsewhere = JobJournal(store, "test")
    elsewhere.owner = {**elsewhere.owner, "host": "another-replica"}
    elsewhere.save(record)  # a live replica on another host holds the lease
    replica = _journaled(store)
    assert replica.recover() == []  # not taken over while the lease runs
    assert replica.get(record["id"]).state == JobState.RUNNING  # read from the store
    expired = JobJournal(store, "test", lease_seconds=-1)
    expired.owner = elsewhere.owner
    expired.save(record)  # the other replica's lease ran out: it is gone
    assert replica.recover() == [record["id"]]
    events = list(replica.watch(record["id"]))
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[2].progress == StageStep("flops", "recovered", {"after": "the server restarted"})
    assert replica.get(record["id"]).outcome.metrics["size"] == 256
    replica.shutdown(time.monotonic() + 5)
    assert JobJournal(store, "test").load(record["id"])["state"] == "SUCCEEDED"


def test_a_start_repeated_with_its_request_id_returns_the_same_job_on_any_replica(tmp_path):
    store = LocalStore(tmp_path / "store")
    one, other = _journaled(store), _journaled(store)  # two replicas sharing the store
    first = one.submit("flops", lambda progress: zoo_flops(progress, 320), spec={"size": 320}, request_id="r-1")
    again = one.submit("flops", lambda progress: zoo_flops(progress, 320), spec={"size": 320}, request_id="r-1")
    elsewhere = other.submit("flops", lambda progress: zoo_flops(progress, 320), spec={"size": 320},
                             request_id="r-1")  # a retry that another replica received: the record is there already
    assert first.id == again.id == elsewhere.id and [j.id for j in one.list()] == [first.id]
    assert len(JobJournal(store, "test").records()) == 1
    with pytest.raises(SlimYoloError, match="request_id: 'r-1' started another job before"):
        one.submit("flops", lambda progress: zoo_flops(progress, 256), spec={"size": 256}, request_id="r-1")
    someone = one.submit("flops", lambda progress: zoo_flops(progress, 320), spec={"size": 320}, request_id="r-1",
                         started_by="someone-else")  # request ids are the caller's own
    assert someone.id != first.id
    for manager in (one, other):
        manager.shutdown(time.monotonic() + 10)


def test_a_draining_manager_hands_its_job_over_at_a_checkpoint_and_another_takes_it_at_once(tmp_path):
    store = LocalStore(tmp_path / "store")
    draining, taking = _journaled(store), _journaled(store)

    def checkpointing(progress) -> StageResult:  # a long job: a checkpoint every third report, until stopped
        for i in range(100_000):
            progress(StageStep("flops", "checkpoint" if i % 3 == 2 else "step", {"i": i}))
            time.sleep(0.01)
        return StageResult()

    job = draining.submit("flops", checkpointing, spec={"size": 320})
    seen: list = []

    def watch() -> None:
        try:
            seen.extend(draining.watch(job.id))
        except UnavailableError as exc:  # what a watcher of the draining replica is told once the job left
            seen.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_for(lambda: draining.get(job.id).progress is not None, what="the job's first report")
    draining.shutdown(time.monotonic() + 30)
    watcher.join(30)
    assert isinstance(seen[-1], UnavailableError) and "handed over" in str(seen[-1])
    handed = seen[-2]
    assert handed.state == JobState.QUEUED and handed.progress.step == "handed_over"
    assert seen[-3].progress.step == "checkpoint"  # it stopped at its next checkpoint, well before the deadline
    wait_for(lambda: taking.get(job.id).state == JobState.SUCCEEDED, what="the other replica to finish the job")
    events = list(taking.watch(job.id))
    assert [e.seq for e in events] == list(range(len(events)))  # one history, across both replicas
    assert [e.progress for e in events[:len(seen) - 1]] == [e.progress for e in seen[:-1]]
    assert JobState.FAILED not in {e.state for e in events}
    assert taking.get(job.id).outcome.metrics["size"] == 320  # run again from its spec (the stage resumes)
    assert JobJournal(store, "test").offered() == []
    taking.shutdown(time.monotonic() + 10)


def test_a_live_replica_takes_over_a_job_whose_owner_died_once_its_lease_runs_out(tmp_path):
    """No restart needed: the owner's pod was replaced by one of another name, or lost."""
    store = LocalStore(tmp_path / "store")
    record = {"id": "b" * 32, "kind": "flops", "spec": {"size": 256}, "state": "RUNNING",
              "events": [{"seq": 0, "time": 1.0, "state": "QUEUED", "progress": None}],
              "outcome": None, "error": None, "create_time": 1.0, "start_time": 2.0, "end_time": None}
    dead = JobJournal(store, "test", lease_seconds=1.5)
    dead.owner = {**dead.owner, "host": "a-pod-that-is-gone"}
    dead.save(record)  # its lease runs 1.5 s more, then nobody renews it
    replica = JobManager(journal=JobJournal(store, "test", lease_seconds=1.0, offers_seconds=0.1),
                         rebuild=lambda kind, spec: lambda progress: zoo_flops(progress, spec["size"]))
    assert replica.recover() == []  # the lease still runs
    wait_for(lambda: JobJournal(store, "test").load(record["id"])["state"] == "SUCCEEDED", 30,
             "the live replica to take the job over and finish it")
    events = list(replica.watch(record["id"]))
    assert events[1].progress == StageStep("flops", "recovered", {"after": "its owner's lease ran out"})
    replica.shutdown(time.monotonic() + 5)
