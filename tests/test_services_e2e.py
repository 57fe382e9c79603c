"""The four services as separate processes over a real S3 server: the whole pipeline through gRPC.

``slimyolo serve trainer|pruner|converter|inference`` run as subprocesses on 127.0.0.1 (ports
chosen by the OS, read from their logs) with a ``weed server -s3`` of this module's own (it is
killed and restarted here). ``slimyolo pipeline run --remote`` runs a tiny pipeline through them
(artifacts exchanged through the S3 bucket) and ends with the inference service serving the
fine-tuned model; the tests then check health, reflection, metrics, digest checks, bad requests
and a store outage against the same running services.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import MINI_CFG
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from seaweed import SeaweedServer

from slimyolo.errors import NotFoundError, SlimYoloError, UnavailableError
from slimyolo.rpc.client import connect, follow_job, wait_ready
from slimyolo.rpc.gen.v1 import (
    common_pb2,
    converter_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    pruner_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from slimyolo.rpc.messages import dict_to_struct, struct_to_dict
from slimyolo.rpc.stages import start_messages
from slimyolo.stages.kinds import KINDS
from slimyolo.store import open_store

STAGES = ("trainer", "pruner", "converter", "inference")
SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+), metrics on 127\.0\.0\.1:(\d+)")
# The tiny pipeline: the 121k-parameter mini detector at 96 px, a few epochs of each training.
TINY = {"name": "tiny", "data": {"synth": {"classes": 2, "train": 48, "val": 16, "size": 96, "seed": 1}},
        "img_size": 96,
        "training": {"batch_size": 8, "optimizer": "adam", "lr0": 0.005, "threads": 1, "augment": {"mosaic": 0.0}},
        "base": {"epochs": 4}, "sparsity": {"epochs": 2, "s": 0.01}, "finetune": {"epochs": 2},
        "sweep": {"percents": [0.3, 0.9, 0.3], "max_map_drop": 0.5},
        "convert": {"via": "torch", "calib_images": 16, "parity_images": 1, "bench_seconds": 0.3},
        "eval": {"batch_size": 16}, "reference": {"epochs": 1}}


@dataclass
class Cluster:
    env: dict[str, str]
    address: dict[str, str]
    metrics_port: dict[str, int]
    procs: dict[str, subprocess.Popen]
    logs: dict[str, Path]

    def channel(self, stage: str) -> grpc.Channel:
        return connect(self.address[stage])

    def metrics(self, stage: str) -> dict[tuple[str, frozenset], float]:
        url = f"http://127.0.0.1:{self.metrics_port[stage]}/metrics"
        text = urllib.request.urlopen(url, timeout=30).read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """This module's own S3 server: a test kills and restarts it."""
    server = SeaweedServer(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    env = dict(os.environ, **s3.env(s3.new_bucket()), SLIMYOLO_WORK_DIR=str(root / "work"),
               SLIMYOLO_STORE_RETRIES="2", SLIMYOLO_MODEL_REPOSITORY="models", OMP_NUM_THREADS="1")
    procs, logs = {}, {}
    try:
        for stage in STAGES:
            logs[stage] = root / f"{stage}.log"
            # Model control on: the pipeline's Detect check loads the version it made (LoadModel).
            extra = ["--poll-seconds", "1", "--model-control", "explicit"] if stage == "inference" else []
            with open(logs[stage], "wb") as log:
                procs[stage] = subprocess.Popen(
                    [sys.executable, "-m", "slimyolo", "serve", stage, "--bind", "127.0.0.1", "--port", "0",
                     "--metrics-port", "0", "--grace-seconds", "5", *extra],
                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        address, metrics_port = {}, {}
        deadline = time.monotonic() + 240
        for stage in STAGES:
            while not (found := SERVING_LINE.search(logs[stage].read_text(errors="replace"))):
                assert procs[stage].poll() is None, f"{stage} exited: {logs[stage].read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{stage} did not start: {logs[stage].read_text()[-3000:]}"
                time.sleep(0.2)
            address[stage], metrics_port[stage] = f"127.0.0.1:{found.group(1)}", int(found.group(2))
            ready = "liveness" if stage == "inference" else ""  # inference is ready only once a model is
            with connect(address[stage], health_service=ready) as channel:
                wait_ready(channel, ready, timeout=120)
        yield Cluster(env, address, metrics_port, procs, logs)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for stage, proc in procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
                raise AssertionError(f"{stage} did not stop within 30 s of SIGTERM: "
                                     f"{logs[stage].read_text()[-3000:]}") from None


@pytest.fixture(scope="module")
def pipeline_run(cluster, tmp_path_factory):
    """``slimyolo pipeline run --remote`` of the tiny config: (completed process, results.json, stages.json)."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "mini.cfg").write_text(MINI_CFG)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": str(root / "mini.cfg"), "out": str(root / "runs")}))
    env = dict(cluster.env, **{f"SLIMYOLO_{s.upper()}_ADDRESS": a for s, a in cluster.address.items()})
    proc = subprocess.run([sys.executable, "-m", "slimyolo", "pipeline", "run", str(config), "--remote"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (run_dir,) = (root / "runs").iterdir()
    return proc, json.loads((run_dir / "results.json").read_text()), json.loads((run_dir / "stages.json").read_text())


def test_the_pipeline_in_process_prunes_byte_for_byte_what_it_prunes_through_the_services(pipeline_run, cluster,
                                                                                          tmp_path):
    """The same config, seeded and on one training thread, in this process over a local store: the same networks."""
    _, _, remote = pipeline_run
    (tmp_path / "mini.cfg").write_text(MINI_CFG)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": str(tmp_path / "mini.cfg"), "out": str(tmp_path / "runs")}))
    env = {k: v for k, v in cluster.env.items() if not k.startswith("SLIMYOLO_S3")}
    env["SLIMYOLO_STORE"] = str(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-m", "slimyolo", "pipeline", "run", str(config)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    local = json.loads((run_dir / "stages.json").read_text())
    assert local["sweep"]["metrics"]["best"] == remote["sweep"]["metrics"]["best"]
    for step, roles in (("base", ("cfg", "weights")), ("sparse", ("weights",)), ("prune", ("cfg", "weights")),
                        ("finetune", ("weights",))):
        for role in roles:
            assert local[step]["artifacts"][role]["sha256"] == remote[step]["artifacts"][role]["sha256"], (step, role)


def test_the_pipeline_runs_through_the_services_and_ends_with_a_served_model(pipeline_run, cluster):
    proc, results, stages = pipeline_run
    assert "== [2/15] base training ==" in proc.stderr
    assert "== [15/15] evaluation of the fine-tuned model" in proc.stderr
    assert re.search(r"sparsity epoch 2/2 +loss", proc.stderr)  # the trainer's lines, streamed from the job
    assert re.search(r"sweep channel +percent", proc.stderr)
    assert [r["model"] for r in results["rows"]] == ["baseline", "reference", "sparse", "pruned", "fine-tuned", "int8"]
    rows = {r["model"]: r for r in results["rows"]}
    assert rows["pruned"]["params"] < rows["baseline"]["params"]
    assert rows["pruned"]["params"] == rows["fine-tuned"]["params"] == rows["int8"]["params"]
    assert rows["int8"]["size_bytes"] < rows["fine-tuned"]["size_bytes"]
    assert all(0 <= r["map50"] <= 1 and r["infer_fps"] > 0 for r in results["rows"])
    assert "| int8 |" in proc.stdout  # the table
    # Every artifact went through the bucket: the stages' trees and the published models.
    store = open_store(env=cluster.env)
    run = results["run"]
    assert {f"runs/{run}/{s}" for s in ("base", "sparse", "sweep", "prune", "finetune")} <= set(store.list_trees())
    assert store.list_trees("models") == ["models/tiny-baseline/1", "models/tiny-int8/1", "models/tiny/1"]
    assert stages["base"]["artifacts"]["weights"]["uri"].startswith(store.uri + f"/runs/{run}/base/")
    # The served model answered the pipeline, and answers us.
    served = results["served"]
    assert served["model"] == "tiny" and served["version"] == "1" and "served by" in proc.stderr
    with cluster.channel("inference") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        listed = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=30).models
        assert ("tiny", "1", inference_pb2.MODEL_STATE_READY) in {(m.name, m.version, m.state) for m in listed}
        image = Path(served["image"]).read_bytes()
        answer = stub.Detect(inference_pb2.DetectRequest(model_name="tiny", image=inference_pb2.Image(encoded=image),
                                                         options=inference_pb2.DetectionOptions(conf_threshold=0.01)),
                             timeout=60)
        assert answer.model_version == "1" and answer.image_width == 96 and answer.detections


def test_health_and_reflection_answer_on_every_service(pipeline_run, cluster, run_cli):
    services = {"trainer": {"slimyolo.v1.Trainer", "slimyolo.v1.Jobs"},
                "pruner": {"slimyolo.v1.Pruner", "slimyolo.v1.Jobs"},
                "converter": {"slimyolo.v1.Converter", "slimyolo.v1.Jobs"},
                "inference": {"slimyolo.v1.Inference", "inference.GRPCInferenceService"}}
    for stage, names in services.items():
        address = cluster.address[stage]
        assert run_cli("health", "--address", address)[0] == 0
        assert run_cli("health", "--address", address, "--service", "liveness")[0] == 0
        for name in names:
            assert run_cli("health", "--address", address, "--service", name)[0] == 0
        code, _, err = run_cli("health", "--address", address, "--service", "slimyolo.v1.Nothing")
        assert code == 1 and "NOT_FOUND" in err
        with cluster.channel(stage) as channel:
            listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert listed == names | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}, stage
    code, _, err = run_cli("health", "--address", "127.0.0.1:1", "--timeout", "2")
    assert code == 1 and "UNAVAILABLE" in err


def _value(metrics, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_show_training_jobs_and_inference_series(pipeline_run, cluster):
    trainer = cluster.metrics("trainer")
    assert _value(trainer, "slimyolo_train_epoch", phase="train") == 1  # the last one: the 1-epoch reference
    assert _value(trainer, "slimyolo_train_epoch", phase="sparsity") == 2
    assert _value(trainer, "slimyolo_train_epochs_completed_total", phase="finetune") == 2
    assert _value(trainer, "slimyolo_train_epochs_completed_total", phase="train") == 4 + 1  # base + reference
    assert 0 <= _value(trainer, "slimyolo_train_map50", phase="finetune") <= 1
    assert ("slimyolo_train_map50", frozenset({("phase", "finetune")})) in trainer
    assert _value(trainer, "slimyolo_train_images_per_second", phase="train") > 0
    assert _value(trainer, "slimyolo_train_loss", phase="sparsity", component="box") > 0
    assert _value(trainer, "slimyolo_jobs_finished_total", kind="train", state="succeeded") == 4  # and the reference
    assert _value(trainer, "slimyolo_jobs_finished_total", kind="eval", state="succeeded") >= 4
    assert _value(trainer, "grpc_server_handled_total", grpc_type="unary", grpc_service="slimyolo.v1.Trainer",
                  grpc_method="StartTraining", grpc_code="OK") == 4  # base, sparse, finetune, reference
    pruner = cluster.metrics("pruner")
    assert _value(pruner, "slimyolo_jobs_finished_total", kind="sweep", state="succeeded") == 1
    assert _value(pruner, "slimyolo_jobs_finished_total", kind="prune", state="succeeded") == 1
    converter = cluster.metrics("converter")
    assert _value(converter, "slimyolo_jobs_finished_total", kind="convert", state="succeeded") == 3
    assert _value(converter, "slimyolo_job_duration_seconds_count", kind="convert") == 3
    inference = cluster.metrics("inference")
    assert _value(inference, "slimyolo_inference_frames_total", model="tiny") >= 1
    assert _value(inference, "slimyolo_inference_duration_seconds_count", model="tiny") >= 1
    assert _value(inference, "slimyolo_inference_end_to_end_duration_seconds_count", model="tiny", api="detect") >= 1
    assert ("slimyolo_inference_fps", frozenset({("model", "tiny")})) in inference


def _evaluation(stages: dict, **changes) -> trainer_pb2.StartEvaluationRequest:
    """An evaluation of the fine-tuned model with the pipeline's own artifacts (``changes`` to the weights ref)."""
    spec = stages["eval fine-tuned"]["spec"]
    return _request("eval", {**spec, "weights": {**spec["weights"], **changes}})


def _request(kind: str, doc: dict) -> Any:
    """The Start... request of stage ``kind`` carrying the spec ``doc`` as it is."""
    return start_messages(KINDS[kind])[0](spec=dict_to_struct(doc))


def _run_job(channel: grpc.Channel, start) -> common_pb2.Job:
    return follow_job(channel, start.job.id)


def test_an_artifact_whose_digest_does_not_match_is_rejected(pipeline_run, cluster):
    _, _, stages = pipeline_run
    good = stages["eval fine-tuned"]["spec"]["weights"]
    with cluster.channel("trainer") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        wrong = ("0" if good["sha256"][0] != "0" else "1") + good["sha256"][1:]
        with pytest.raises(SlimYoloError, match=r"weights: .* has sha256 .*expected 0?.*discarded"):
            _run_job(channel, stub.StartEvaluation(_evaluation(stages, sha256=wrong), timeout=30))
        with pytest.raises(SlimYoloError, match="discarded"):
            _run_job(channel, stub.StartEvaluation(_evaluation(stages, size_bytes=good["size_bytes"] + 1), timeout=30))
        job = _run_job(channel, stub.StartEvaluation(_evaluation(stages), timeout=30))  # the true digest passes
        assert struct_to_dict(job.result.metrics)["map50"] == pytest.approx(
            stages["eval fine-tuned"]["metrics"]["map50"], abs=1e-6)


def _code(method, request) -> grpc.StatusCode:
    """The status code a call fails with."""
    with pytest.raises(grpc.RpcError) as err:
        method(request, timeout=30)
    return err.value.code()


def test_bad_requests_are_refused_and_the_servers_keep_serving(pipeline_run, cluster):
    _, _, stages = pipeline_run
    ref = stages["eval fine-tuned"]["spec"]["weights"]
    data = stages["eval fine-tuned"]["spec"]["data"]
    for stage in ("trainer", "pruner", "converter"):
        with cluster.channel(stage) as channel:
            jobs = jobs_pb2_grpc.JobsStub(channel)
            assert _code(jobs.GetJob, jobs_pb2.GetJobRequest(id="no-such-job")) == \
                grpc.StatusCode.NOT_FOUND
            assert _code(jobs.CancelJob, jobs_pb2.CancelJobRequest(id="")) == \
                grpc.StatusCode.INVALID_ARGUMENT
    with cluster.channel("trainer") as channel:
        trainer = trainer_pb2_grpc.TrainerStub(channel)
        assert _code(trainer.StartTraining, _request("train", {"cfg": ref})) == grpc.StatusCode.INVALID_ARGUMENT
        bad_config = _request("train", {"cfg": ref, "data": data, "out": "runs/bad", "epochs": 1, "optimiser": "adam"})
        assert _code(trainer.StartTraining, bad_config) == grpc.StatusCode.INVALID_ARGUMENT
        outside = _evaluation(stages, uri="s3://another-bucket/weights")
        with pytest.raises(SlimYoloError, match="is not in the artifact store"):
            _run_job(channel, trainer.StartEvaluation(outside, timeout=30))
        missing = _evaluation(stages, uri=ref["uri"].rsplit("/", 1)[0] + "/nothing.weights")
        with pytest.raises(NotFoundError, match="does not exist"):
            _run_job(channel, trainer.StartEvaluation(missing, timeout=30))
    with cluster.channel("pruner") as channel:
        pruner = pruner_pb2_grpc.PrunerStub(channel)
        points = _request("sweep", {"weights": ref, "data": data, "out": "runs/bad", "percents": [0.5, 0.6, 0.9, 0.95]})
        assert _code(pruner.StartSweep, points) == grpc.StatusCode.INVALID_ARGUMENT
    with cluster.channel("converter") as channel:
        converter = converter_pb2_grpc.ConverterStub(channel)
        int8 = _request("convert", {"weights": ref, "name": "x", "precision": "int8"})
        assert _code(converter.StartConversion, int8) == grpc.StatusCode.INVALID_ARGUMENT
    with cluster.channel("inference") as channel:
        detect = inference_pb2.DetectRequest(model_name="no-such-model",
                                             image=inference_pb2.Image(encoded=b"not an image"))
        assert _code(inference_pb2_grpc.InferenceStub(channel).Detect, detect) in (
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    for stage in STAGES:  # still serving, and still doing real work
        with cluster.channel(stage) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
                health_pb2.HealthCheckResponse.SERVING
    with cluster.channel("trainer") as channel:
        _run_job(channel, trainer_pb2_grpc.TrainerStub(channel).StartEvaluation(_evaluation(stages), timeout=30))


def test_a_store_outage_fails_the_job_with_unavailable_and_a_retry_succeeds(pipeline_run, cluster, s3):
    _, _, stages = pipeline_run
    with cluster.channel("trainer") as channel:
        trainer = trainer_pb2_grpc.TrainerStub(channel)
        s3.kill()
        try:
            with pytest.raises(UnavailableError, match=r"object store .* is unavailable"):
                _run_job(channel, trainer.StartEvaluation(_evaluation(stages), timeout=30))
            job = jobs_pb2_grpc.JobsStub(channel).ListJobs(jobs_pb2.ListJobsRequest(), timeout=30).jobs[0]
            assert job.state == common_pb2.JOB_STATE_FAILED and job.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        finally:
            s3.start()
        job = _run_job(channel, trainer.StartEvaluation(_evaluation(stages), timeout=30))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
