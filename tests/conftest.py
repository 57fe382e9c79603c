"""Shared test helpers. Tests never read ../shared: every fact they check is stated here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two cores: keep torch from oversubscribing them when pytest runs alongside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def run_cli(capsys):
    """Run ``slimyolo ARGS`` in-process; returns (exit status, stdout, stderr)."""
    from slimyolo.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test: small forwards and tracing lose more to OpenMP hand-offs
    (most of all when other jobs share the two cores) than a second thread gives."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 server (``weed server -s3``, tests/seaweed.py) shared by the session.

    Tests take a fresh bucket each (``seaweed.new_bucket()``) and point stores or services at it
    with ``seaweed.env(bucket)``. Tests that stop the server start their own SeaweedServer.
    """
    from seaweed import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


def _conv(filters: int, size: int, stride: int) -> str:
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            "activation=leaky\n\n")


def mini_cfg(size: int) -> str:
    """A 121k-parameter detector (one residual unit, so both sparsity modes differ; one head at
    stride 16) that learns the synthetic task in seconds, at ``size`` x ``size``."""
    return (f"[net]\nwidth={size}\nheight={size}\nchannels=3\n\n" + _conv(16, 3, 2) + _conv(32, 3, 2)
            + _conv(64, 3, 2) + _conv(32, 1, 1) + _conv(64, 3, 1) + "[shortcut]\nfrom=-3\nactivation=linear\n\n"
            + _conv(128, 3, 2) + "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=21\nactivation=linear\n\n"
            + "[yolo]\nmask=0,1,2\nanchors=14,14, 30,30, 60,60\nclasses=2\nnum=3\n")


# The shared trained model of the conversion, inference and service tests.
MINI_CFG = mini_cfg(96)


@pytest.fixture
def stage_env(seaweed, tmp_path) -> dict[str, str]:
    """The environment of a stage service on a fresh bucket of the session's S3 server holding the store trees
    ``inputs/mini.cfg`` (MINI_CFG) and ``inputs/synth`` (48 training and 8 validation images, 2 classes, 96 px)."""
    from slimyolo.data.synth import write_synthetic
    from slimyolo.store import open_store

    env = dict(os.environ, **seaweed.env(seaweed.new_bucket()), SLIMYOLO_WORK_DIR=str(tmp_path / "work"),
               OMP_NUM_THREADS="1")
    inputs = tmp_path / "inputs"
    write_synthetic(inputs / "synth", classes=2, train=48, val=8, size=96, seed=0)
    (inputs / "mini.cfg").write_text(MINI_CFG)
    open_store(env=env).put_tree("inputs", inputs)
    return env


@dataclass(frozen=True)
class Trained:
    cfg: Path  # the cfg trained
    weights: Path  # best.pt (holds its cfg)
    darknet_weights: Path  # the same weights in darknet's layout
    data: Path  # the synthetic data set's .data file
    map50: float  # validation mAP@0.5 of the weights


@pytest.fixture(scope="session")
def trained_mini(tmp_path_factory) -> Trained:
    """MINI_CFG trained 25 epochs on a small 2-class synthetic set (about half a minute on 2 cores)."""
    import torch

    from slimyolo.data.augment import AugmentConfig
    from slimyolo.data.synth import write_synthetic
    from slimyolo.train.config import TrainConfig
    from slimyolo.train.trainer import train

    root = tmp_path_factory.mktemp("trained")
    data = write_synthetic(root / "synth", classes=2, train=64, val=24, size=96, seed=0)
    (root / "mini.cfg").write_text(MINI_CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: OpenMP hand-offs would cost more than they give
    try:
        result = train(TrainConfig(data=str(data), cfg=str(root / "mini.cfg"), out=str(root / "run"), img_size=96,
                                   epochs=25, batch_size=8, optimizer="adam", lr0=0.005, threads=1,
                                   eval_interval=100, save_weights=True, augment=AugmentConfig(mosaic=0.0)))
    finally:
        torch.set_num_threads(threads)
    assert result.best_map50 > 0.15, result.best_map50  # it learned something worth keeping
    assert result.weights is not None
    return Trained(root / "mini.cfg", result.best, result.weights, data, result.best_map50)


@pytest.fixture(scope="session")
def mini_ir(trained_mini, tmp_path_factory) -> Path:
    """trained_mini converted to OpenVINO IR (PyTorch path, f32 NCHW input): the version folder ``mini/1``."""
    from slimyolo.convert import convert

    repo = tmp_path_factory.mktemp("mini-ir")
    return convert(None, trained_mini.weights, repo, name="mini", version=1, via="torch",
                   calib_data=trained_mini.data).path


@pytest.fixture(scope="session")
def start_inference():
    """``start(repo, server=None, **serving)`` → (Server, DataPlane): the inference service on 127.0.0.1.

    Free gRPC and metrics ports, f32 inference, the repository folder ``repo``, model control on
    (``--model-control explicit``: the tests load and unload models by call); ``server`` holds
    ServerConfig fields (``max_message_bytes``, ``max_connection_age``, ``tls_cert``...) and ``serving``
    the ServingConfig ones. The caller stops what it started: ``server.stop(0)``, then ``plane.close()``.
    """
    from slimyolo.rpc.server import Server, ServerConfig
    from slimyolo.services.inference import build
    from slimyolo.serving.config import ServingConfig

    def start(repo: Path, server: dict | None = None, **serving):
        config = ServerConfig(bind="127.0.0.1", port=0, metrics_port=0, **(server or {}))
        instance = Server("inference", config)
        plane = build(instance, ServingConfig(model_repository=str(repo), precision="f32",
                                              **{"model_control": "explicit", **serving}))
        instance.start()
        return instance, plane

    return start


@dataclass(frozen=True)
class Tls:
    """Certificates and tokens made by deploy/certs.py for 127.0.0.1 (see the ``tls`` fixture)."""

    root: Path
    ca: Path  # the CA that signed both certificates
    server: Path  # folder: tls.crt, tls.key (names localhost and 127.0.0.1)
    client: Path  # folder: tls.crt, tls.key of the client certificate "robot", mapped to operate
    stranger: Path  # folder: a client certificate "stranger" the tokens file does not map
    tokens: Path  # the server's tokens file: infer "camera", operate "alice" and "bob", admin "root"
    token: dict[str, str]  # name → the token itself

    def token_file(self, name: str) -> Path:
        """A client's --token-file holding ``name``'s token."""
        return self.root / f"{name}.token"

    def server_config(self, mutual: bool = False, tokens: bool = True) -> dict[str, str]:
        """ServerConfig fields: TLS with this server certificate; mTLS; the tokens file."""
        return {"tls_cert": str(self.server / "tls.crt"), "tls_key": str(self.server / "tls.key"),
                **({"tls_client_ca": str(self.ca)} if mutual else {}),
                **({"auth_tokens": str(self.tokens)} if tokens else {})}


def load_certs_module():
    """deploy/certs.py as a module (deploy/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("certs", Path(__file__).parent.parent / "deploy" / "certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> Tls:
    """A CA, a server certificate for 127.0.0.1 and two client certificates, and a tokens file of four tokens,
    each made as a user makes them (deploy/certs.py)."""
    certs = load_certs_module()
    root = tmp_path_factory.mktemp("tls")
    certs.make_ca(root)
    server = certs.make_cert(root, "server", ["localhost"], ["127.0.0.1"])
    client = certs.make_cert(root, "robot", [], [], client=True)
    stranger = certs.make_cert(root, "stranger", [], [], client=True)
    lines, token = ["# role name sha256 of the token", "operate robot cert:robot"], {}
    for role, name in (("infer", "camera"), ("operate", "alice"), ("operate", "bob"), ("admin", "root")):
        lines.append(certs.make_token(role, name, root / f"{name}.token"))
        token[name] = (root / f"{name}.token").read_text()
    (root / "tokens").write_text("\n".join(lines) + "\n")
    return Tls(root, root / "ca.crt", server, client, stranger, root / "tokens", token)
