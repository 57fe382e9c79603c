"""Jobs handed over, not failed, over a real S3 server: two trainer replicas share a store; the one running a
training job (``checkpoint_steps``) is SIGTERMed mid-epoch, checkpoints at its next step boundary and hands
the job over; the other finishes it under the same id with the weights of an uninterrupted run, and a client
watching both replicas sees ``handed_over`` and no error. And a StartTraining whose connection is cut before
its answer, sent again with the same request id (to either replica), makes one job."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import grpc
import pytest
from service_procs import serve

from slimyolo.progress import StageStep, TrainStep, event_from_dict
from slimyolo.rpc.client import connect, follow_job
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc, trainer_pb2_grpc
from slimyolo.rpc.journal import JobJournal
from slimyolo.rpc.messages import struct_to_dict
from slimyolo.rpc.stages import spec_to_request, start_job
from slimyolo.stages.kinds import KINDS
from slimyolo.stages.specs import TrainSpec
from slimyolo.store import open_store

EPOCHS = 4
OPTIONS = {"epochs": EPOCHS, "batch_size": 4, "img_size": 96, "threads": 1, "seed": 5, "eval_interval": 3,
           "max_eval_images": 8, "augment": {"mosaic": 0.0}, "checkpoint_steps": 2}  # 12 steps an epoch


def _request(out: str, request_id: str = "", **options) -> object:
    spec = TrainSpec.from_dict({"cfg": "inputs/mini.cfg", "data": "inputs/synth", "out": out, **OPTIONS, **options})
    request = spec_to_request(spec)
    request.request_id = request_id
    return request


@pytest.fixture
def replicas(stage_env, tmp_path):
    started = [serve("trainer", ["--grace-seconds", "60"], stage_env, tmp_path / f"trainer-{i}.log")
               for i in range(2)]
    yield started
    for replica in started:
        replica.stop(signal.SIGKILL)


def test_a_draining_trainer_hands_its_job_over_and_the_other_replica_finishes_it(stage_env, replicas):
    a, b = replicas
    journal = JobJournal(open_store(env=stage_env), "trainer")
    with connect(b.address) as channel:
        whole = follow_job(channel, trainer_pb2_grpc.TrainerStub(channel).StartTraining(_request("runs/whole")).job.id)
    with connect(a.address) as channel:
        job_id = trainer_pb2_grpc.TrainerStub(channel).StartTraining(_request("runs/cut")).job.id
    events: list[common_pb2.JobEvent] = []
    outcome: dict = {}

    def watch() -> None:
        with connect(f"ipv4:{a.address},{b.address}") as channel:
            try:
                outcome["job"] = follow_job(channel, job_id, events.append)
            except Exception as exc:
                outcome["error"] = exc

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.monotonic() + 600
    while True:  # mid-epoch 2, past its first step
        record = journal.load(job_id) or {"events": []}
        steps = [event_from_dict(e["progress"]) for e in record["events"] if e["progress"]]
        if any(isinstance(e, TrainStep) and e.epoch == 2 and e.step == 1 for e in steps):
            break
        assert time.monotonic() < deadline and a.proc.poll() is None, a.log.read_text()[-3000:]
        time.sleep(0.05)
    assert a.stop(signal.SIGTERM, timeout=120) == 0, a.log.read_text()[-3000:]
    watcher.join(600)
    assert "error" not in outcome, outcome
    final = outcome["job"]
    assert final.id == job_id and final.state == common_pb2.JOB_STATE_SUCCEEDED
    metrics = struct_to_dict(final.result.metrics)
    for role in ("weights", "cfg"):
        assert final.result.artifacts[role].sha256 == whole.result.artifacts[role].sha256, role
    assert [e.seq for e in events] == list(range(len(events)))  # every event once, in order, across replicas
    progress = [event_from_dict(struct_to_dict(e.progress)) for e in events if e.HasField("progress")]
    handed = [i for i, e in enumerate(progress) if isinstance(e, StageStep) and e.step == "handed_over"]
    assert len(handed) == 1, progress
    last = progress[handed[0] - 1]  # it stopped at the checkpoint it had just published; b resumed from there
    assert isinstance(last, StageStep) and last.step == "checkpoint", last
    assert (metrics["resumed_from_epoch"], metrics["resumed_from_step"]) == \
        (last.details["epoch"], last.details.get("step", 0)), (metrics, last)
    assert metrics["resumed_from_epoch"] < EPOCHS
    assert not any(isinstance(e, StageStep) and e.step == "recovered" for e in progress)
    assert all(e.state != common_pb2.JOB_STATE_FAILED for e in events)
    with connect(b.address) as channel:  # b ran the rest
        assert jobs_pb2_grpc.JobsStub(channel).GetJob(jobs_pb2.GetJobRequest(id=job_id)).job.state == \
            common_pb2.JOB_STATE_SUCCEEDED
    assert journal.load(job_id)["state"] == "SUCCEEDED" and journal.offered() == []


class _CuttingProxy:
    """A TCP proxy to 127.0.0.1:``port`` that cuts its first connection where the server's answer to the first
    call begins (the first HTTP/2 HEADERS frame of a stream, not forwarded): the call was received and run,
    and its client gets UNAVAILABLE. Later connections are forwarded as they are."""

    def __init__(self, port: int) -> None:
        self.upstream, self.cuts = port, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        first = True
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, first), daemon=True).start()
            first = False

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: bool) -> None:
        pending = b""
        try:
            while data := src.recv(65536):
                if not cut:
                    dst.sendall(data)
                    continue
                pending += data
                while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
                    size = 9 + int.from_bytes(pending[:3], "big")
                    if pending[3] == 1 and int.from_bytes(pending[5:9], "big") & 0x7FFFFFFF:  # HEADERS of a call
                        self.cuts += 1
                        return
                    dst.sendall(pending[:size])
                    pending = pending[size:]
        except OSError:
            pass
        finally:
            for s in (src, dst):  # shutdown first: it wakes the other direction's recv and sends the FIN
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_start_retried_with_the_same_request_id_after_a_cut_connection_makes_one_job(stage_env, replicas):
    a, b = replicas
    proxy = _CuttingProxy(a.port)
    request = _request("runs/once", request_id="7f1c0d2e-retry", epochs=50)
    try:
        with connect(f"127.0.0.1:{proxy.port}", health_service=None) as channel:
            # What pipeline/stage --remote do: the call is cut after the server ran it (UNAVAILABLE), and sent again.
            first = start_job(channel, KINDS["train"], request)
        assert proxy.cuts == 1
    finally:
        proxy.close()
    with connect(b.address) as channel:  # another replica, the same store: the same job
        again = trainer_pb2_grpc.TrainerStub(channel).StartTraining(request, timeout=60).job
        assert again.id == first.id
        other = _request("runs/other", request_id="7f1c0d2e-retry", epochs=50)
        with pytest.raises(grpc.RpcError) as refused:
            trainer_pb2_grpc.TrainerStub(channel).StartTraining(other, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in refused.value.details()
    with connect(a.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        assert [j.id for j in jobs.ListJobs(jobs_pb2.ListJobsRequest()).jobs] == [first.id]
        jobs.CancelJob(jobs_pb2.CancelJobRequest(id=first.id), timeout=60)
    assert JobJournal(open_store(env=stage_env), "trainer").records()[0]["id"] == first.id
    assert len(JobJournal(open_store(env=stage_env), "trainer").records()) == 1
