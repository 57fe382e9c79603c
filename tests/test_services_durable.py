"""A trainer service SIGKILLed while it runs a job, over a real S3 server: started again, it runs the
job again under the same id from the last checkpoint, ends with the weights of an uninterrupted run,
and answers GetJob/WatchJob of that id with the whole history."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from service_procs import serve

from slimyolo.progress import StageStep, TrainEpoch, event_from_dict
from slimyolo.rpc.client import connect, follow_job
from slimyolo.rpc.gen.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc, trainer_pb2_grpc
from slimyolo.rpc.journal import JobJournal
from slimyolo.rpc.messages import struct_to_dict
from slimyolo.rpc.stages import spec_to_request
from slimyolo.stages.specs import TrainSpec
from slimyolo.store import open_store

EPOCHS = 6
OPTIONS = {"epochs": EPOCHS, "batch_size": 8, "img_size": 96, "threads": 1, "seed": 5, "eval_interval": 3,
           "max_eval_images": 8, "augment": {"mosaic": 0.0}}


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """``slimyolo serve trainer`` on a free port, logging to ``log``: (process, address), once ready."""
    service = serve("trainer", ["--grace-seconds", "5"], env, log)
    return service.proc, service.address


def _start(address: str, out: str) -> str:
    spec = TrainSpec.from_dict({"cfg": "inputs/mini.cfg", "data": "inputs/synth", "out": out, **OPTIONS})
    with connect(address) as channel:
        return trainer_pb2_grpc.TrainerStub(channel).StartTraining(spec_to_request(spec)).job.id


def _history(address: str, job_id: str) -> list[common_pb2.JobEvent]:
    with connect(address) as channel:
        return [r.event for r in jobs_pb2_grpc.JobsStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=job_id))]


def test_a_killed_trainer_service_runs_its_job_again_under_the_same_id(stage_env, tmp_path):
    env = stage_env
    store, journal = open_store(env=env), JobJournal(open_store(env=env), "trainer")
    log = tmp_path / "trainer-1.log"
    proc, address = _serve(env, log)
    try:
        with connect(address) as channel:
            whole = follow_job(channel, _start(address, "runs/whole"))
        job_id = _start(address, "runs/cut")
        deadline = time.monotonic() + 600
        while True:  # the second epoch's checkpoint in the store, and in the job's record
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            record = journal.load(job_id)
            steps = [event_from_dict(e["progress"]) for e in (record or {"events": []})["events"] if e["progress"]]
            done = [e.details["epoch"] for e in steps if isinstance(e, StageStep) and e.step == "checkpoint"]
            if done and max(done) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        before = journal.load(job_id)
        epoch = max(int(t.rsplit("-", 1)[1]) for t in store.list_trees("runs/cut/checkpoints"))
        assert before["state"] == "RUNNING" and not store.exists("runs/cut/SHA256SUMS")

        log = tmp_path / "trainer-2.log"
        proc, address = _serve(env, log)
        with connect(address) as channel:
            job = jobs_pb2_grpc.JobsStub(channel).GetJob(jobs_pb2.GetJobRequest(id=job_id)).job
            assert job.id == job_id and job.kind == "train"
            final = follow_job(channel, job_id)
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED
        metrics = struct_to_dict(final.result.metrics)
        assert metrics["resumed_from_epoch"] == epoch
        for role in ("weights", "cfg"):
            assert final.result.artifacts[role].sha256 == whole.result.artifacts[role].sha256, role

        history = _history(address, job_id)  # the whole history: before the kill, the recovery, after
        assert [e.seq for e in history] == list(range(len(history)))
        recorded = before["events"]
        assert [(e.seq, common_pb2.JobState.Name(e.state)) for e in history[:len(recorded)]] == \
               [(e["seq"], f"JOB_STATE_{e['state']}") for e in recorded]
        events = [event_from_dict(struct_to_dict(e.progress)) for e in history if e.HasField("progress")]
        assert StageStep("train", "recovered", {"after": "the server restarted"}) in events
        recovered = events.index(StageStep("train", "recovered", {"after": "the server restarted"}))
        assert [e.epoch for e in events[:recovered] if isinstance(e, TrainEpoch)][:2] == [1, 2]
        assert [e.epoch for e in events[recovered:] if isinstance(e, TrainEpoch)] == list(range(epoch + 1, EPOCHS + 1))
        assert history[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        # The journal's writer thread writes a final record at once, but after the final event reached the watchers
        # (a job never waits for the store): give it the moment it takes.
        settle = time.monotonic() + 10
        while journal.load(job_id)["state"] != "SUCCEEDED" and time.monotonic() < settle:
            time.sleep(0.1)
        assert journal.load(job_id)["state"] == "SUCCEEDED"
    finally:
        proc.send_signal(signal.SIGTERM)  # the service drains within its 5 s grace
        proc.wait(60)


def test_an_unknown_job_id_is_not_found_and_a_hostile_one_reads_nothing(stage_env, tmp_path):
    proc, address = _serve(stage_env, tmp_path / "trainer.log")
    try:
        with connect(address) as channel:
            stub = jobs_pb2_grpc.JobsStub(channel)
            for job_id in ("0" * 32, "../../inputs/mini.cfg", "jobs/trainer/x"):
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetJob(jobs_pb2.GetJobRequest(id=job_id))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, job_id
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
