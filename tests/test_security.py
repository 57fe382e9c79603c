"""Nobody gets in who does not belong: TLS, mutual TLS, tokens and roles on the services (issue 25).

Real certificates and tokens, made as a user makes them (deploy/certs.py, the ``tls`` fixture of
conftest.py); every server listens on 127.0.0.1 and is stopped by the test that started it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import load_certs_module
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.rpc.client import connect
from slimyolo.rpc.gen.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from slimyolo.rpc.jobs import JobManager
from slimyolo.rpc.journal import JobJournal
from slimyolo.rpc.messages import dict_to_struct
from slimyolo.rpc.server import Server, ServerConfig
from slimyolo.security import (
    METHOD_ROLES,
    PUBLIC_SERVICES,
    ClientSecurity,
    Identity,
    Role,
    TokensFile,
    TokenTable,
    required_role,
    token_digest,
)
from slimyolo.stages.runners import StageResult
from slimyolo.store import LocalStore

LOCAL = {"bind": "127.0.0.1", "port": 0, "metrics_port": 0}


def _channel(server: Server, tls, token: str = "", client_cert: Path | None = None, ca: Path | None = None):
    security = ClientSecurity(tls_ca=str(ca or tls.ca), token=tls.token[token] if token else "",
                              tls_cert=str(client_cert / "tls.crt") if client_cert else "",
                              tls_key=str(client_cert / "tls.key") if client_cert else "")
    return connect(f"127.0.0.1:{server.port}", security=security, health_service=None)


def _code(call, request, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _health(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- the policy, without a server ------------------------------------------------------------------------------


def test_every_method_of_every_service_has_a_role_decided():
    """A new RPC must be placed in METHOD_ROLES (else only admin may call it): every method the protos declare is."""
    import importlib
    import pkgutil

    from google.protobuf import descriptor_pool

    import slimyolo.rpc.gen.kserve as kserve
    import slimyolo.rpc.gen.v1 as v1

    for package in (v1, kserve):
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith("_pb2"):
                importlib.import_module(f"{package.__name__}.{module.name}")
    pool, declared = descriptor_pool.Default(), set()
    for name in ("slimyolo.v1.Trainer", "slimyolo.v1.Pruner", "slimyolo.v1.Converter", "slimyolo.v1.Inference",
                 "slimyolo.v1.Jobs", "inference.GRPCInferenceService"):
        declared |= {f"/{name}/{m.name}" for m in pool.FindServiceByName(name).methods}
    assert declared == set(METHOD_ROLES)
    assert required_role("/slimyolo.v1.Inference/UnloadModel") is Role.OPERATE
    assert required_role("/slimyolo.v1.Inference/DetectStream") is Role.INFER
    assert required_role("/slimyolo.v1.Inference/SomethingNew") is Role.ADMIN
    assert required_role("/grpc.health.v1.Health/Check") is None and "grpc.health.v1.Health" in PUBLIC_SERVICES


@pytest.mark.parametrize(("text", "message"), [
    ("operate alice\n", "t:1: expected 'ROLE NAME SHA256-HEX'"),
    ("# c\nboss alice " + "a" * 64, "t:2: role 'boss' is not one of infer, operate, admin"),
    ("operate alice s3cret", "t:1: the third word must be the token's SHA-256"),
    ("operate alice " + "a" * 64 + "\nadmin alice " + "b" * 64, "t:2: alice has the role operate on an earlier line"),
    ("infer cam cert:", "t:1: 'cert:' needs the certificate's identity"),
    ("# nothing\n", "t: no token lines"),
])
def test_a_bad_tokens_file_names_its_line(text, message):
    with pytest.raises(SlimYoloError, match=message):
        TokenTable.parse(text, "t")


def test_tokens_are_matched_by_digest_and_a_rotated_name_keeps_its_role(tls):
    certs = load_certs_module()
    line = certs.make_token("operate", "alice", tls.root / "alice-next.token")
    table = TokenTable.parse(tls.tokens.read_text() + line + "\n", "t")
    new = (tls.root / "alice-next.token").read_text()
    assert table.by_token(tls.token["alice"]) == table.by_token(new) and table.by_token(new).role is Role.OPERATE
    assert table.by_token(tls.token["alice"] + "x") is None and table.by_token("") is None
    assert table.by_certificate(["x", "robot"]).name == "robot"


def test_make_certs_writes_what_the_manifests_mount(tmp_path, capsys):
    """deploy/certs.py services: a Secret's layout per service (tls.crt, tls.key, ca.crt), under the names clients
    dial in the cluster; token: a new token and its tokens-file line."""
    from cryptography import x509

    certs = load_certs_module()
    assert certs.main(["services", str(tmp_path), "--namespace", "ns"]) == 0
    for service in ("trainer", "pruner", "converter", "inference"):
        assert sorted(p.name for p in (tmp_path / service).iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert (tmp_path / service / "tls.key").stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "inference" / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert {"inference.ns.svc.cluster.local", "inference-headless.ns.svc.cluster.local", "localhost"} <= set(names)
    capsys.readouterr()
    assert certs.main(["token", "infer", "cam", str(tmp_path / "cam.token")]) == 0
    line = capsys.readouterr().out.strip()
    assert TokenTable.parse(line, "t").by_token((tmp_path / "cam.token").read_text()) == Identity("cam", Role.INFER)


@pytest.mark.parametrize(("fields", "message"), [
    ({"tls_cert": "c.pem"}, "--tls-cert / SLIMYOLO_TLS_CERT and --tls-key / SLIMYOLO_TLS_KEY: give both"),
    ({"auth_tokens": "t"}, "--tokens / SLIMYOLO_AUTH_TOKENS needs TLS .*tokens must not travel in the clear"),
    ({"tls_client_ca": "ca.pem"}, "--tls-client-ca / SLIMYOLO_TLS_CLIENT_CA needs TLS"),
    ({"health_port": -2}, "--health-port / SLIMYOLO_HEALTH_PORT: -2 is not a port number"),
])
def test_server_settings_that_cannot_work_are_refused(fields, message):
    with pytest.raises(SlimYoloError, match=message):
        ServerConfig.from_env({}, **fields)


def test_a_server_whose_files_cannot_be_read_does_not_start(tls, tmp_path):
    with pytest.raises(SlimYoloError, match=f"--tls-cert / SLIMYOLO_TLS_CERT: cannot read {tmp_path}/none.crt"):
        Server("x", ServerConfig(**LOCAL, tls_cert=str(tmp_path / "none.crt"), tls_key=str(tls.server / "tls.key")))
    (tmp_path / "tokens").write_text("admin root s3cret\n")
    with pytest.raises(SlimYoloError, match=f"{tmp_path}/tokens:1: the third word must be"):
        Server("x", ServerConfig(**LOCAL, **{**tls.server_config(), "auth_tokens": str(tmp_path / "tokens")}))


def test_a_changed_tokens_file_is_read_again_and_a_broken_one_keeps_the_tokens_before(tls, tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text(tls.tokens.read_text())
    tokens = TokensFile(path, recheck_seconds=0)
    assert tokens.table().by_token(tls.token["alice"]).name == "alice"
    path.write_text(f"admin alice {token_digest('rotated')}\n")  # Kubernetes swaps a Secret's files in
    assert tokens.table().by_token(tls.token["alice"]) is None and tokens.table().by_token("rotated").name == "alice"
    with caplog.at_level(logging.ERROR, "slimyolo.security"):
        path.write_text("admin alice\n")
        assert tokens.table().by_token("rotated").role is Role.ADMIN
    assert f"{path}:1: expected 'ROLE NAME SHA256-HEX'" in caplog.text
    assert "keeping the tokens read before" in caplog.text


def test_client_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(SlimYoloError, match="SLIMYOLO_TOKEN needs TLS: give --tls-ca / SLIMYOLO_CLIENT_TLS_CA"):
        ClientSecurity.from_env({"SLIMYOLO_TOKEN": "x"})
    with pytest.raises(SlimYoloError, match="a client certificate needs its key"):
        ClientSecurity.from_env({"SLIMYOLO_CLIENT_TLS_CA": "ca", "SLIMYOLO_CLIENT_TLS_CERT": "c"})
    with pytest.raises(SlimYoloError, match=f"--tls-ca / SLIMYOLO_CLIENT_TLS_CA: cannot read {tmp_path}/no.pem"):
        connect("127.0.0.1:1", security=ClientSecurity(tls_ca=str(tmp_path / "no.pem")))


# -- TLS and mutual TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def bare_server():
    """``start(**config)`` → a Server on 127.0.0.1 with no service of its own (health, reflection)."""
    servers = []

    def start(**config) -> Server:
        server = Server("bare", ServerConfig(**LOCAL, **config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def test_a_plaintext_client_cannot_talk_to_a_tls_server_and_a_tls_client_can(tls, bare_server, run_cli):
    server = bare_server(**tls.server_config(tokens=False))
    with connect(f"127.0.0.1:{server.port}", security=ClientSecurity(), health_service=None) as plain:
        code, _ = _code(health_pb2_grpc.HealthStub(plain).Check, health_pb2.HealthCheckRequest(), timeout=5)
    assert code == grpc.StatusCode.UNAVAILABLE
    with _channel(server, tls) as secure:
        assert _health(secure) == health_pb2.HealthCheckResponse.SERVING
    address = f"127.0.0.1:{server.port}"
    assert run_cli("health", "--address", address, "--timeout", "2")[0] == 1
    assert run_cli("health", "--address", address, "--tls-ca", tls.ca) == (0, f"{address}: SERVING\n", "")
    # The certificate names 127.0.0.1 and localhost, not another name the client expects.
    code, _, err = run_cli("health", "--address", address, "--tls-ca", tls.ca, "--tls-server-name", "elsewhere",
                           "--timeout", "2")
    assert code == 1 and "UNAVAILABLE" in err


def test_an_mtls_server_refuses_a_client_without_a_certificate_at_the_handshake(tls, bare_server):
    server = bare_server(**tls.server_config(mutual=True, tokens=False))
    with _channel(server, tls) as anonymous:
        code, details = _code(health_pb2_grpc.HealthStub(anonymous).Check, health_pb2.HealthCheckRequest(), 5)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    # Refused by TLS itself: no call reached the server (it counts every call it starts, health included).
    assert server.registry.get_sample_value("grpc_server_started_total", {
        "grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}) is None
    with _channel(server, tls, client_cert=tls.client) as known:
        assert _health(known) == health_pb2.HealthCheckResponse.SERVING


def test_the_health_port_answers_probes_in_plaintext_and_serves_nothing_else(tls, bare_server):
    server = bare_server(**tls.server_config(mutual=True), health_port=0)
    assert server.health_port not in (0, server.port)
    with connect(f"127.0.0.1:{server.health_port}", security=ClientSecurity(), health_service=None) as probe:
        assert _health(probe) == health_pb2.HealthCheckResponse.SERVING
        code, _ = _code(jobs_pb2_grpc.JobsStub(probe).ListJobs, jobs_pb2.ListJobsRequest())
        assert code == grpc.StatusCode.UNIMPLEMENTED
    server.stop(0)
    with connect(f"127.0.0.1:{server.health_port}", security=ClientSecurity(), health_service=None) as probe:
        assert _code(health_pb2_grpc.HealthStub(probe).Check, health_pb2.HealthCheckRequest(), 5)[0] == \
            grpc.StatusCode.UNAVAILABLE


def test_an_open_server_says_so_once_at_start(tls, bare_server, caplog):
    with caplog.at_level(logging.WARNING, "slimyolo.rpc.server"):
        bare_server()
        bare_server(**tls.server_config(tokens=False))
        bare_server(**tls.server_config())  # closed: tokens
        bare_server(**tls.server_config(mutual=True, tokens=False))  # closed: client certificates
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "bare is open: no TLS and no tokens" in warnings[0]
    assert "bare is open: TLS without tokens or client certificates" in warnings[1]


# -- tokens and roles on the stage services -----------------------------------------------------------------------


@pytest.fixture
def trainer(tls, tmp_path, monkeypatch):
    """(the trainer service with mutual TLS and tokens over an empty local store, the store's folder)."""
    import slimyolo.services.trainer as module

    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("SLIMYOLO_STORE", str(store))
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    server = Server("trainer", ServerConfig(**LOCAL, **tls.server_config(mutual=True)))
    module.build(server, argparse.Namespace(model_repository=None))
    server.start()
    yield server, store
    server.stop(0)


EVAL = {"weights": "inputs/none.weights", "cfg": "inputs/none.cfg", "data": "inputs/synth"}


def _start_eval(channel) -> str:
    request = trainer_pb2.StartEvaluationRequest(spec=dict_to_struct(EVAL))
    return trainer_pb2_grpc.TrainerStub(channel).StartEvaluation(request, timeout=30).job.id


def test_no_token_a_wrong_token_and_a_low_role_are_refused_before_any_work(tls, trainer, tmp_path):
    server, store = trainer
    request = trainer_pb2.StartTrainingRequest(spec=dict_to_struct({"data": "inputs/synth", "out": "runs/x"}))
    stranger = tls.stranger / "tls.crt", tls.stranger / "tls.key"
    wrong = connect(f"127.0.0.1:{server.port}", health_service=None, security=ClientSecurity(
        tls_ca=str(tls.ca), tls_cert=str(stranger[0]), tls_key=str(stranger[1]), token=tls.token["alice"][::-1]))
    with _channel(server, tls, client_cert=tls.stranger) as anonymous, wrong, \
            _channel(server, tls, "camera", client_cert=tls.stranger) as camera:
        code, details = _code(trainer_pb2_grpc.TrainerStub(anonymous).StartTraining, request)
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "/slimyolo.v1.Trainer/StartTraining: no bearer "
                                   "token (authorization metadata), and the client certificate (stranger, stranger) "
                                   "is not mapped to a role")
        code, details = _code(trainer_pb2_grpc.TrainerStub(wrong).StartTraining, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED and tls.token["alice"][::-1] not in details
        code, details = _code(trainer_pb2_grpc.TrainerStub(camera).StartTraining, request)
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "/slimyolo.v1.Trainer/StartTraining: needs "
                                                                      "the operate role; camera has the infer role")
        assert _code(jobs_pb2_grpc.JobsStub(camera).ListJobs, jobs_pb2.ListJobsRequest())[0] == \
            grpc.StatusCode.PERMISSION_DENIED
        assert _health(anonymous) == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    assert _files(store) == []  # no job, no journal record: nothing reached the store
    metrics = server.registry.get_sample_value(
        "grpc_server_handled_total", {"grpc_type": "unary", "grpc_service": "slimyolo.v1.Trainer",
                                      "grpc_method": "StartTraining", "grpc_code": "PERMISSION_DENIED"})
    assert metrics == 1


def test_a_job_belongs_to_who_started_it_and_admin_sees_every_job(tls, trainer):
    server, store = trainer
    with _channel(server, tls, "alice", tls.stranger) as alice, _channel(server, tls, "bob", tls.stranger) as bob, \
            _channel(server, tls, "root", tls.stranger) as root, _channel(server, tls, client_cert=tls.client) as robot:
        job = _start_eval(alice)
        robots = _start_eval(robot)  # the client certificate, mapped to operate, is an identity of its own
        unknown = "0" * 32
        for name, stub in (("bob", jobs_pb2_grpc.JobsStub(bob)), ("alice", jobs_pb2_grpc.JobsStub(alice))):
            for call, request in ((stub.GetJob, jobs_pb2.GetJobRequest), (stub.CancelJob, jobs_pb2.CancelJobRequest)):
                theirs = job if name == "bob" else robots
                code, details = _code(call, request(id=theirs))
                # Exactly what an unknown id gets, but for the id: nothing tells the job exists.
                assert code == grpc.StatusCode.NOT_FOUND, (name, call)
                assert details == _code(call, request(id=unknown))[1].replace(unknown, theirs)
            watch = stub.WatchJob
            code, _ = _code(lambda r, timeout, watch=watch: list(watch(r, timeout=timeout)),
                            jobs_pb2.WatchJobRequest(id=job if name == "bob" else robots))
            assert code == grpc.StatusCode.NOT_FOUND
        assert [j.id for j in jobs_pb2_grpc.JobsStub(bob).ListJobs(jobs_pb2.ListJobsRequest(), timeout=10).jobs] == []
        assert [j.id for j in jobs_pb2_grpc.JobsStub(alice).ListJobs(jobs_pb2.ListJobsRequest(), timeout=10).jobs] == \
            [job]
        admin = jobs_pb2_grpc.JobsStub(root)
        assert {j.id for j in admin.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10).jobs} == {job, robots}
        assert admin.GetJob(jobs_pb2.GetJobRequest(id=job), timeout=10).job.id == job
        final = list(jobs_pb2_grpc.JobsStub(alice).WatchJob(jobs_pb2.WatchJobRequest(id=job), timeout=60))[-1].job
        assert final.id == job and final.error.message  # the eval of missing files failed: it ran, for alice
        server.stop(5)  # the journal's final records are written
    assert JobJournal(LocalStore(store), "trainer").load(job)["started_by"] == "alice"


def test_the_owner_of_a_job_survives_a_restart(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = JobManager(journal=JobJournal(store, "t", flush_seconds=0.05))
    job = first.submit("eval", lambda progress: StageResult(), spec={"kind": "eval"}, started_by="alice")
    first.shutdown(time.monotonic() + 10)
    again = JobManager(journal=JobJournal(store, "t"))
    again.recover()
    assert again.get(job.id, viewer="alice").started_by == "alice" and again.list("alice")[0].id == job.id
    with pytest.raises(NotFoundError):
        again.get(job.id, viewer="bob")
    assert again.list("bob") == [] and again.get(job.id).id == job.id  # no viewer: admin, or tokens off


def test_the_remote_cli_names_the_status_of_a_refused_call(tls, trainer, run_cli, tmp_path):
    server, _ = trainer
    spec = tmp_path / "eval.yaml"
    spec.write_text(json.dumps(EVAL))
    address = f"127.0.0.1:{server.port}"
    mtls = ("--tls-ca", tls.ca, "--tls-cert", tls.stranger / "tls.crt", "--tls-key", tls.stranger / "tls.key")
    code, _, err = run_cli("stage", "eval", "--spec", spec, "--remote", address, *mtls,
                           "--token-file", tls.token_file("camera"))
    assert code == 2 and "PERMISSION_DENIED: /slimyolo.v1.Trainer/StartEvaluation: needs the operate role" in err
    (tmp_path / "wrong.token").write_text("not-a-token\n")
    code, _, err = run_cli("stage", "eval", "--spec", spec, "--remote", address, *mtls,
                           "--token-file", tmp_path / "wrong.token")
    assert code == 2 and "UNAUTHENTICATED: " in err and "not-a-token" not in err
    code, _, err = run_cli("stage", "eval", "--spec", spec, "--remote", address, "--token-file",
                           tls.token_file("alice"))
    assert code == 2 and "--token-file / SLIMYOLO_TOKEN needs TLS" in err


# -- the inference service ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame(trained_mini) -> bytes:
    from slimyolo.data.dataset import read_data_file

    return cv2.imencode(".png", cv2.imread(str(read_data_file(trained_mini.data).valid[0])))[1].tobytes()


@pytest.fixture
def served(mini_ir, tmp_path, start_inference):
    """``start(server_fields, **serving)`` → the inference service serving ``mini`` version 1."""
    repo = tmp_path / "repo"
    shutil.copytree(mini_ir, repo / "mini" / "1")
    started = []

    def start(server: dict, **serving):
        started.append(start_inference(repo, server, poll_seconds=0, mosaic="1x1", **serving))
        return started[-1][0]

    yield start
    for instance, plane in started:
        instance.stop(0)
        plane.close()


def _wait_loaded(channel) -> None:
    from slimyolo.rpc.client import wait_ready

    wait_ready(channel, "", timeout=120)


def test_an_infer_token_detects_but_cannot_unload_and_model_control_is_off_by_default(tls, served, frame):
    server = served(tls.server_config(), model_control="none")
    with _channel(server, tls, "camera") as camera, _channel(server, tls, "alice") as alice:
        _wait_loaded(camera)
        stub = inference_pb2_grpc.InferenceStub(camera)
        code, details = _code(stub.UnloadModel, inference_pb2.UnloadModelRequest(name="mini"))
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "/slimyolo.v1.Inference/UnloadModel: needs the "
                                                                      "operate role; camera has the infer role")
        assert _code(stub.BenchmarkModel, inference_pb2.BenchmarkModelRequest(name="mini", seconds=0.1))[0] == \
            grpc.StatusCode.PERMISSION_DENIED
        operator = inference_pb2_grpc.InferenceStub(alice)
        code, details = _code(operator.UnloadModel, inference_pb2.UnloadModelRequest(name="mini"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "--model-control explicit" in details
        assert code == _code(operator.LoadModel, inference_pb2.LoadModelRequest(name="mini"))[0]
        models = operator.ListModels(inference_pb2.ListModelsRequest(), timeout=10).models
        assert [(m.name, inference_pb2.ModelState.Name(m.state)) for m in models] == [("mini", "MODEL_STATE_READY")]
        detected = stub.Detect(inference_pb2.DetectRequest(model_name="mini", image=inference_pb2.Image(
            encoded=frame)), timeout=60)
        assert detected.model_version == "1"


def test_model_control_explicit_lets_an_operator_unload(tls, served):
    server = served(tls.server_config(), model_control="explicit")
    with _channel(server, tls, "alice") as alice:
        _wait_loaded(alice)
        unloaded = inference_pb2_grpc.InferenceStub(alice).UnloadModel(inference_pb2.UnloadModelRequest(name="mini"),
                                                                        timeout=30).unloaded
        assert [m.name for m in unloaded] == ["mini"]


def test_certificates_rotate_under_a_running_stream(tls, served, frame, tmp_path):
    """Kubernetes swaps a rotated Secret in (the ..data link): the stream open before keeps going on the old
    certificate, a new connection gets the new one (signed by a new CA, so the old CA no longer verifies it)."""
    certs = load_certs_module()
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(source: Path, version: str) -> None:
        shutil.copytree(source, mount / version)
        os.symlink(version, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    publish(tls.server, "..v1")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", mount / name)
    server = served({"tls_cert": str(mount / "tls.crt"), "tls_key": str(mount / "tls.key")})

    frames: queue.Queue = queue.Queue()

    def requests():
        while (item := frames.get()) is not None:
            yield inference_pb2.DetectStreamRequest(model_name="mini", stream_id="cam", frame_id=item,
                                                    frame=inference_pb2.Image(encoded=frame))

    with _channel(server, tls) as old:
        _wait_loaded(old)
        answers = inference_pb2_grpc.InferenceStub(old).DetectStream(requests(), timeout=120)
        frames.put(1)
        assert next(answers).frame_id == 1
        rotated = tmp_path / "rotated"
        certs.make_ca(rotated, "Rotated CA")
        publish(certs.make_cert(rotated, "server", ["localhost"], ["127.0.0.1"]), "..v2")
        with _channel(server, tls) as trusting_old:
            code, details = _code(health_pb2_grpc.HealthStub(trusting_old).Check, health_pb2.HealthCheckRequest(), 5)
        assert code == grpc.StatusCode.UNAVAILABLE, details
        with _channel(server, tls, ca=rotated / "ca.crt") as trusting_new:
            assert _health(trusting_new) == health_pb2.HealthCheckResponse.SERVING
        for frame_id in (2, 3):  # the stream of before the rotation still runs
            frames.put(frame_id)
            assert next(answers).frame_id == frame_id
        frames.put(None)
        assert list(answers) == [] and answers.code() == grpc.StatusCode.OK


def test_kserve_infers_over_mutual_tls_with_a_mapped_certificate_alone(tls, served):
    """What a KServe v2 client (tritonclient's InferenceServerClient(url, ssl=True, root_certificates=...,
    private_key=..., certificate_chain=...)) does: the stock stub on a TLS channel."""
    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc

    server = served(tls.server_config(mutual=True))
    with _channel(server, tls, client_cert=tls.client) as robot, \
            _channel(server, tls, client_cert=tls.stranger) as stranger:
        _wait_loaded(robot)
        kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(robot)
        meta = kserve.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="mini"), timeout=10)
        shape = [1 if d < 0 else int(d) for d in meta.inputs[0].shape]  # a batch of one
        raw = np.zeros(shape, np.float32).tobytes()
        request = kserve_pb2.ModelInferRequest(model_name="mini", raw_input_contents=[raw], inputs=[
            kserve_pb2.ModelInferRequest.InferInputTensor(name=meta.inputs[0].name, datatype="FP32", shape=shape)])
        assert kserve.ModelInfer(request, timeout=60).outputs
        code, details = _code(kserve_pb2_grpc.GRPCInferenceServiceStub(stranger).ModelInfer, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "(stranger" in details, details


def test_token_and_certificate_work_from_the_environment(tls, served, monkeypatch):
    """The variables a pod gets (SLIMYOLO_CLIENT_TLS_*, SLIMYOLO_TOKEN) configure every client, e.g. the sweep's."""
    from slimyolo.rpc.inference_client import InferenceClient

    server = served(tls.server_config(mutual=True))
    monkeypatch.setenv("SLIMYOLO_CLIENT_TLS_CA", str(tls.ca))
    monkeypatch.setenv("SLIMYOLO_CLIENT_TLS_CERT", str(tls.client / "tls.crt"))
    monkeypatch.setenv("SLIMYOLO_CLIENT_TLS_KEY", str(tls.client / "tls.key"))
    monkeypatch.setenv("SLIMYOLO_TOKEN", tls.token["camera"])
    # The token decides: camera (infer), not the certificate's robot (operate).
    with InferenceClient(f"127.0.0.1:{server.port}") as client, \
            pytest.raises(SlimYoloError, match=r"^PERMISSION_DENIED: .*camera has the infer role"):
        client.list_models()
    monkeypatch.delenv("SLIMYOLO_TOKEN")
    with InferenceClient(f"127.0.0.1:{server.port}") as client:  # no token: the certificate's role (operate)
        assert [m.name for m in client.list_models()] == ["mini"]
