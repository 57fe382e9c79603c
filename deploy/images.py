"""``make images`` and ``make test-images``: build the container images, then run them as a deployment does.

``python deploy/images.py build [--torch-wheels DIR]`` builds the service images (the trainer image
also serves the pruner). ``python deploy/images.py test [--torch-wheels DIR]`` (the project's venv:
it is a client of the services) builds them and the stand-ins of the compose file's third-party
images (deploy/s3, deploy/prometheus: no registry is needed), then

1. starts each service image read-only, as its non-root user, with every capability dropped and a
   local folder as the artifact store, waits for its liveness, and runs one small real job through
   each: train one epoch, prune, convert, Detect on the converted model; the store must then hold
   each job's tree and the model;
2. starts docker-compose.yml with these images (and the stand-ins as S3_IMAGE, S3_INIT_IMAGE,
   PROMETHEUS_IMAGE) and runs ``slimyolo pipeline run --remote`` of a tiny config against it;

and prints a table: image, size, build time, start-to-live time, job result. It exits non-zero on
the first failure, after removing what it started. Docker builds run with ``--network host`` by
default (``--build-network``): a daemon whose bridge has no route out still builds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimyolo.stages.kinds import SERVICES  # the stage services of the registry, then inference

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "deploy" / "wheels"
BASE_IMAGE = "python:3.11.11-slim-bookworm"
TAG = "0.1.0"
COMPOSE_PORTS = {"trainer": 50051, "pruner": 50052, "converter": 50053, "inference": 50054}
LIVE_TIMEOUT = 300.0


@dataclass(frozen=True)
class Image:
    """One image of the deployment: its tag, Dockerfile and build context, and whether it installs PyTorch."""

    name: str
    dockerfile: str
    context: str = "."
    torch: bool = False

    @property
    def tag(self) -> str:
        return f"slimyolo/{self.name}:{TAG}"


SERVICE_IMAGES = (Image("inference", "services/inference/Dockerfile"),
                  Image("trainer", "services/trainer/Dockerfile", torch=True),
                  Image("converter", "services/converter/Dockerfile", torch=True))
STANDINS = (Image("s3-standin", "deploy/s3/Dockerfile", "deploy/s3"),
            Image("prometheus-standin", "deploy/prometheus/Dockerfile", "deploy/prometheus"))
IMAGE_OF = {"trainer": "trainer", "pruner": "trainer", "converter": "converter", "inference": "inference"}


@dataclass
class Row:
    """One line of the table."""

    image: str
    size: str = "-"
    build: str = "-"
    live: str = "-"
    result: str = "-"


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)

    def row(self, key: str, image: str) -> Row:
        return self.rows.setdefault(key, Row(image))

    def table(self) -> str:
        lines = ["| image | size | build time | start-to-live | job result |", "|---|---|---|---|---|"]
        lines += [f"| {r.image} | {r.size} | {r.build} | {r.live} | {r.result} |" for r in self.rows.values()]
        return "\n".join(lines)


def say(line: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, capture: bool = True) -> str:
    """Run ``docker ARGS``; its stdout. A failure shows the command and its output."""
    proc = subprocess.run(["docker", *args], capture_output=capture, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: exit {proc.returncode}\n{(proc.stderr or '')[-4000:]}")
    return proc.stdout or ""


# -- build --------------------------------------------------------------------------------------------


@contextmanager
def offered_wheels(torch_wheels: Path | None) -> Iterator[None]:
    """The wheels of ``torch_wheels`` in deploy/wheels/ (the builds' COPY) while the builds run."""
    if torch_wheels is None:
        yield
        return
    wheels = sorted(torch_wheels.glob("*.whl"))
    if not any(w.name.startswith("torch-") for w in wheels):
        raise RuntimeError(f"--torch-wheels {torch_wheels}: no torch-*.whl there")
    copied = []
    try:
        for wheel in wheels:
            target = WHEELS / wheel.name
            target.unlink(missing_ok=True)
            try:
                os.link(wheel, target)
            except OSError:  # another file system
                shutil.copyfile(wheel, target)
            copied.append(target)
        yield
    finally:
        for target in copied:
            target.unlink(missing_ok=True)


def build(images: tuple[Image, ...], report: Report, *, base_image: str, torch_wheels: Path | None,
          network: str) -> None:
    """Build each image in turn (docker's cache makes a rebuild of unchanged sources quick)."""
    with offered_wheels(torch_wheels):
        for image in images:
            args = ["build", "--network", network, "-f", str(ROOT / image.dockerfile), "-t", image.tag,
                    "--build-arg", f"BASE_IMAGE={base_image}"]
            if image.torch and torch_wheels is not None:
                args += ["--build-arg", "TORCH_INDEX="]  # the wheels, and pip's own index for the rest
            say(f"building {image.tag} ({image.dockerfile})")
            before = docker("image", "inspect", "-f", "{{.Id}}", image.tag, check=False).strip()
            t0 = time.monotonic()
            proc = subprocess.run(["docker", *args, str(ROOT / image.context)], capture_output=True, text=True)
            seconds = time.monotonic() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"building {image.tag} failed (exit {proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-6000:]}")
            image_id, size = docker("image", "inspect", "-f", "{{.Id}} {{.Size}}", image.tag).split()
            row = report.row(image.name, image.tag)
            row.build = f"{seconds:.0f} s" + (" (unchanged: cached)" if image_id == before else "")
            row.size = f"{int(size) / 1e6:.0f} MB"
            say(f"built {image.tag}: {row.size} in {row.build}")


# -- each image alone -----------------------------------------------------------------------------


def wait_live(address: str, container: str, timeout: float = LIVE_TIMEOUT) -> None:
    """Until ``address`` reports its ``liveness`` service SERVING; fails early when the container stops."""
    from slimyolo.errors import SlimYoloError
    from slimyolo.rpc.client import connect, wait_ready

    deadline = time.monotonic() + timeout
    while True:
        state = docker("inspect", "-f", "{{.State.Status}}", container).strip()
        if state != "running":
            raise RuntimeError(f"{container} is {state}:\n{docker('logs', '--tail', '60', container, check=False)}")
        with connect(address, health_service="liveness") as channel:
            try:
                wait_ready(channel, "liveness", timeout=5)
                return
            except SlimYoloError:  # not up yet: the container's state decides
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{container} not live after {timeout:.0f} s:\n"
                                       f"{docker('logs', '--tail', '60', container, check=False)}") from None


def run_service(stage: str, store: Path, name: str) -> str:
    """Start ``stage``'s image as a hardened container with ``store`` as its artifact store; its gRPC address."""
    # The store at the same path as here: artifacts carry file:// URIs, which must mean the same inside.
    # Model control on: the Detect check loads the version it converted (LoadModel), as the pipeline's does.
    env = {"SLIMYOLO_STORE": str(store), "SLIMYOLO_MODEL_REPOSITORY": "models", "SLIMYOLO_MODEL_POLL_SECONDS": "1",
           "SLIMYOLO_MODEL_CONTROL": "explicit", "OMP_NUM_THREADS": "1"}
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/work:uid=10001,gid=10001",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-v", f"{store}:{store}",
           "-p", "127.0.0.1::50051", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")),
           f"slimyolo/{IMAGE_OF[stage]}:{TAG}", "serve", stage)
    user = docker("inspect", "-f", "{{.Config.User}}", name).strip()
    if not user or user.split(":")[0] in {"0", "root"}:
        raise RuntimeError(f"{name} runs as root (user {user!r})")
    return docker("port", name, "50051/tcp").splitlines()[0].strip().replace("0.0.0.0", "127.0.0.1")


def tiny_cfg(path: Path, size: int = 96) -> Path:
    """A yolov3-tiny at a quarter width: a model a loaded CPU trains for an epoch in seconds."""
    from slimyolo.darknet.zoo import yolov3_tiny

    yolov3_tiny(classes=2, size=(size, size), width=0.25).write(path)
    return path


def stage_jobs(addresses: dict[str, str], store_dir: Path, work: Path, report: Report) -> None:
    """Train one epoch, prune, convert and Detect, each through its service; then check the store."""
    from slimyolo.data.synth import write_synthetic
    from slimyolo.rpc.stages import RemoteRunner, served_detection
    from slimyolo.stages.archive import pack
    from slimyolo.stages.specs import ConvertSpec, DataRef, PruneSpec, TrainSpec
    from slimyolo.store import open_store

    store = open_store(str(store_dir))
    data_file = write_synthetic(work / "data", classes=2, train=16, val=8, size=96, seed=1)
    pack(data_file.parent, work / "data.tar.gz")
    data = DataRef(archive=store.put_file(work / "data.tar.gz"), data_file=data_file.name)
    cfg = store.put_file(tiny_cfg(work / "tiny.cfg"))
    runner = RemoteRunner(addresses, ready_timeout=LIVE_TIMEOUT)  # the services share store_dir: keys travel as keys
    events: list[dict[str, Any]] = []
    try:
        def job(stage: str, spec: Any) -> Any:
            t0 = time.monotonic()
            try:
                result = runner.run(spec, events.append)
            except Exception as exc:
                report.row(stage, f"slimyolo/{IMAGE_OF[stage]}:{TAG}").result = f"FAILED: {exc}"
                raise
            say(f"{stage} job: {time.monotonic() - t0:.0f} s, artifacts {sorted(result.artifacts)}")
            return result, time.monotonic() - t0

        (trained, s) = job("trainer", TrainSpec(data=data, out="runs/images/train", cfg=cfg, options={
            "epochs": 1, "img_size": 96, "batch_size": 8, "threads": 1, "augment": {"mosaic": 0.0}}))
        report.rows["trainer"].result = f"train 1 epoch: {s:.0f} s, best mAP@0.5 {trained.metrics['best_map50']:.3f}"
        model = {"cfg": trained.artifacts["cfg"], "weights": trained.artifacts["weights"]}
        (pruned, s) = job("pruner", PruneSpec.from_dict({**model, "out": "runs/images/prune", "method": "channel",
                                                         "global_percent": 0.3}))
        report.rows["pruner"].result = (f"prune 30 %: {s:.0f} s, params {pruned.metrics['before']['params']} → "
                                        f"{pruned.metrics['after']['params']}")
        (ir, s) = job("converter", ConvertSpec.from_dict({
            "cfg": pruned.artifacts["cfg"], "weights": pruned.artifacts["weights"], "name": "images", "via": "torch",
            "calib_data": data, "parity_images": 1}))
        report.rows["converter"].result = f"convert via torch (FP32 IR): {s:.0f} s"
        t0 = time.monotonic()
        image = sorted((data_file.parent).rglob("*.jpg"))[0]
        try:
            served = served_detection(runner)("images", "1", image)
        except Exception as exc:
            report.rows["inference"].result = f"FAILED: {exc}"
            raise
        report.rows["inference"].result = (f"Detect on models/images/1: {len(served['detections'])} boxes, "
                                           f"{time.monotonic() - t0:.1f} s (load + detect)")
    finally:
        runner.close()
    trees = set(store.list_trees())
    expected = {"runs/images/train", "runs/images/prune", "models/images/1"}
    if not expected <= trees:
        raise RuntimeError(f"the store lacks {sorted(expected - trees)}; it holds {sorted(trees)}")
    say(f"the store holds {sorted(expected)}; ir {sorted(ir.artifacts)}")


def test_each_image(report: Report, work: Path) -> None:
    store = work / "store"
    store.mkdir(mode=0o777)
    store.chmod(0o777)  # the containers' user writes where this process's did (umask 0 below)
    names = {stage: f"slimyolo-images-{stage}-{os.getpid()}" for stage in SERVICES}
    addresses = {}
    try:
        for stage in SERVICES:
            row = report.row(stage, f"slimyolo/{IMAGE_OF[stage]}:{TAG}")
            if stage == "pruner":
                row.size = row.build = "(the same)"
            t0 = time.monotonic()
            addresses[stage] = run_service(stage, store, names[stage])
            wait_live(addresses[stage], names[stage])
            row.live = f"{time.monotonic() - t0:.1f} s"
            say(f"{stage} live at {addresses[stage]} after {row.live}")
        stage_jobs(addresses, store, work, report)
    finally:
        for stage, name in names.items():
            if stage in addresses and os.environ.get("SLIMYOLO_IMAGES_KEEP_LOGS"):
                (work / f"{stage}.log").write_text(docker("logs", name, check=False))
            docker("rm", "-f", name, check=False)


# -- the compose file -------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """Compose v2 (``docker compose``) when installed, else Debian's ``docker-compose`` 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def test_compose(report: Report, work: Path) -> None:
    from slimyolo.rpc.client import connect, wait_ready

    user, password = "slimyolo-images", secrets.token_hex(16)
    env_file = work / "compose.env"
    env_file.write_text(f"MINIO_ROOT_USER={user}\nMINIO_ROOT_PASSWORD={password}\nSLIMYOLO_BUCKET=slimyolo\n"
                        f"S3_IMAGE=slimyolo/s3-standin:{TAG}\nS3_INIT_IMAGE=slimyolo/s3-standin:{TAG}\n"
                        f"PROMETHEUS_IMAGE=slimyolo/prometheus-standin:{TAG}\n")
    compose = [*compose_command(), "--project-name", f"slimyolo-images-{os.getpid()}",
               "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml")]
    row = report.row("compose", "docker-compose.yml (" + " ".join(compose_command()) + ")")
    t0 = time.monotonic()
    try:
        proc = subprocess.run([*compose, "up", "-d", "--no-build"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compose up failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        for port in COMPOSE_PORTS.values():
            with connect(f"127.0.0.1:{port}", health_service="liveness") as channel:
                wait_ready(channel, "liveness", timeout=LIVE_TIMEOUT)
        row.live = f"{time.monotonic() - t0:.1f} s (all 4 services)"
        say(f"compose: services live after {row.live}")
        row.result = run_pipeline(work, user, password)
        report.rows["s3-standin"].result = f"compose's S3 and bucket init: {bucket_objects(user, password)} objects"
        report.rows["prometheus-standin"].result = f"compose's Prometheus: {scraped()}"
    except Exception:
        logs = subprocess.run([*compose, "logs", "--tail", "40"], capture_output=True, text=True)
        say(f"compose logs:\n{logs.stdout[-8000:]}")
        row.result = row.result if row.result != "-" else "FAILED"
        raise
    finally:
        subprocess.run([*compose, "down", "-v", "--timeout", "30"], capture_output=True, text=True)


def bucket_objects(user: str, password: str) -> int:
    """How many objects the pipeline left in the compose file's bucket (through its published port)."""
    from minio import Minio

    client = Minio("127.0.0.1:9000", access_key=user, secret_key=password, secure=False)
    return sum(1 for _ in client.list_objects("slimyolo", recursive=True))


def scraped(timeout: float = 90.0) -> str:
    """Until Prometheus reports every service's /metrics target up (it scrapes every 15 s)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        up = sorted(t["labels"]["stage"] for t in targets
                    if t["labels"].get("job") == "slimyolo" and t["health"] == "up")
        if len(up) == len(SERVICES):
            return f"{len(up)}/{len(SERVICES)} services' /metrics up"
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus scrapes only {up} of {list(SERVICES)}: {targets}")
        time.sleep(3)


def run_pipeline(work: Path, user: str, password: str) -> str:
    """``slimyolo pipeline run --remote`` of a tiny config against the compose ports; its summary."""
    import yaml

    config = {"name": "images", "model": str(tiny_cfg(work / "pipeline.cfg")), "out": str(work / "runs"),
              "data": {"synth": {"classes": 2, "train": 32, "val": 8, "size": 96, "seed": 1}}, "img_size": 96,
              "training": {"batch_size": 8, "threads": 1, "augment": {"mosaic": 0.0}},
              "base": {"epochs": 1}, "sparsity": {"epochs": 1, "s": 0.01}, "finetune": {"epochs": 1},
              "reference": {"epochs": 1}, "sweep": {"percents": [0.3, 0.6, 0.3], "max_map_drop": 1.0},
              "convert": {"via": "torch", "calib_images": 8, "parity_images": 1, "bench_seconds": 0.3},
              "remote": {s: f"127.0.0.1:{p}" for s, p in COMPOSE_PORTS.items()}}
    path = work / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMYOLO_")}
    env.update(SLIMYOLO_STORE="s3://slimyolo", SLIMYOLO_S3_ENDPOINT="http://127.0.0.1:9000",
               SLIMYOLO_S3_ACCESS_KEY=user, SLIMYOLO_S3_SECRET_KEY=password)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "slimyolo", "pipeline", "run", str(path), "--remote"], env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    (work / "pipeline.log").write_text(proc.stderr + proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run --remote failed (exit {proc.returncode}):\n{proc.stderr[-5000:]}")
    (run_dir,) = (work / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    rows = [r["model"] for r in results["rows"]]
    served = results.get("served") or {}
    if not served or "int8" not in rows:
        raise RuntimeError(f"pipeline run --remote: no served answer or no int8 row: rows {rows}, served {served}")
    return (f"pipeline run --remote: {seconds:.0f} s, {len(rows)} rows ({', '.join(rows)}), "
            f"{served['model']} v{served['version']} served {len(served['detections'])} boxes")


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "test"))
    parser.add_argument("--torch-wheels", type=Path, help="a folder of wheels holding torch's CPU build: install "
                                                          "PyTorch from it instead of its CPU index")
    parser.add_argument("--base-image", default=BASE_IMAGE, help=f"the base of every image (default {BASE_IMAGE})")
    parser.add_argument("--build-network", default="host", help="docker build --network (default host)")
    parser.add_argument("--skip", choices=("compose",), action="append", default=[],
                        help="leave out a part of the test")
    args = parser.parse_args(argv)
    # A SIGTERM (make interrupted, CI's timeout) unwinds like ^C: containers and offered wheels are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = Report()
    images = SERVICE_IMAGES + (STANDINS if args.command == "test" else ())
    if args.command == "test":  # the table's order: the stages, then the stand-ins
        for stage in SERVICES:
            report.row(stage, f"slimyolo/{IMAGE_OF[stage]}:{TAG}" + (" as pruner" if stage == "pruner" else ""))
    started = time.monotonic()
    ok = False
    try:
        build(images, report, base_image=args.base_image, torch_wheels=args.torch_wheels, network=args.build_network)
        if args.command == "test":
            os.umask(0)  # the store's folders and files stay writable by the containers' own user
            with tempfile.TemporaryDirectory(prefix="slimyolo-images-") as tmp:
                test_each_image(report, Path(tmp))
                if "compose" not in args.skip:
                    test_compose(report, Path(tmp))
        ok = True
    finally:
        print(f"\n{report.table()}\n\n{'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
