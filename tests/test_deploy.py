"""Deployment files: Kubernetes schemas and invariants, the compose spec, Dockerfile basics, and
agreement of images, ports and environment names between Dockerfiles, compose, k8s and the code."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("trainer", "pruner", "converter", "inference")
# The image each stage runs: the trainer and the pruner install the same (.[train,measure,rpc]) and share one.
IMAGE_OF = {"trainer": "trainer", "pruner": "trainer", "converter": "converter", "inference": "inference"}
DOCKERFILES = ("trainer", "converter", "inference")
KUSTOMIZATIONS = ("k8s/base", "k8s/jobs", "k8s/distributed")
K8S_VERSION = "1.32.0"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|TOKEN", re.IGNORECASE)
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}


def render(kustomization: str) -> list[dict]:
    """The kustomize output: `kubectl kustomize` when installed, else the same for the subset we use."""
    folder = ROOT / kustomization
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [d for r in spec["resources"] for d in yaml.safe_load_all((folder / r).read_text()) if d]
    labels = {k: v for entry in spec.get("labels", []) for k, v in entry["pairs"].items()}
    for d in docs:
        d["metadata"].setdefault("labels", {}).update(labels)
        if d["kind"] != "Namespace":
            d["metadata"]["namespace"] = spec["namespace"]
    return docs


def all_docs() -> list[tuple[str, dict]]:
    docs = [(k, d) for k in KUSTOMIZATIONS for d in render(k)]
    docs += [("k8s/distributed/pytorchjob.yaml", d)
             for d in yaml.safe_load_all((ROOT / "k8s/distributed/pytorchjob.yaml").read_text()) if d]
    return docs


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] in WORKLOADS:
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def containers(doc: dict) -> list[dict]:
    return [c for spec in pod_specs(doc) for c in spec.get("containers", []) + spec.get("initContainers", [])]


def dockerfile(image: str) -> str:
    return (ROOT / "services" / image / "Dockerfile").read_text()


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_manifests_validate_against_kubernetes_schemas(kustomization):
    docs = render(kustomization)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_pytorchjob_pod_templates_validate():
    """The PyTorchJob is a CRD: its pod templates are checked as PodTemplates."""
    (doc,) = [d for _, d in all_docs() if d["kind"] == "PyTorchJob"]
    assert doc["apiVersion"] == "kubeflow.org/v1" and set(doc["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
        assert replica["template"]["spec"]["containers"][0]["name"] == "pytorch"  # the operator's convention
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                    "template": copy.deepcopy(replica["template"])}
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_validation_is_not_vacuous():
    doc = copy.deepcopy(next(d for d in render("k8s/base") if d["kind"] == "Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_container_is_limited_probed_and_unprivileged():
    checked = 0
    for where, doc in all_docs():
        for spec in pod_specs(doc):
            pod_sc = spec.get("securityContext", {})
            assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) != 0, (where, doc["kind"])
            assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in containers(doc):
            name = f"{where}: {doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            limits = c.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), name
            assert {"cpu", "memory"} <= set(c["resources"].get("requests", {})), name
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            if doc["kind"] in {"Deployment", "StatefulSet"}:
                assert "readinessProbe" in c and "livenessProbe" in c, name
            checked += 1
    assert checked >= 10


def test_services_use_native_grpc_probes():
    for doc in render("k8s/base"):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in STAGES:
            (c,) = doc["spec"]["template"]["spec"]["containers"]
            # The plaintext health port (SLIMYOLO_HEALTH_PORT): the kubelet presents no certificate to the TLS port.
            assert c["readinessProbe"]["grpc"] == {"port": 8081}  # overall health: all services SERVING
            assert c["livenessProbe"]["grpc"] == {"port": 8081, "service": "liveness"}
            assert {"name": "health", "containerPort": 8081} in c["ports"]
    config = next(d for d in render("k8s/base") if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
                  "slimyolo-config")
    assert config["data"]["SLIMYOLO_HEALTH_PORT"] == "8081"


def test_network_policies_deny_by_default_and_open_each_door_by_label():
    policies = {d["metadata"]["name"]: d["spec"] for d in render("k8s/base") if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for k in KUSTOMIZATIONS
            for d in render(k) if d["kind"] in WORKLOADS}

    def admitted(policy: str, labels: dict) -> bool:
        return any(all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
                   for rule in policies[policy]["ingress"] for peer in rule["from"])

    assert all(admitted("store", pods[name]) for name in (*STAGES, "slimyolo-train", "slimyolo-sweep"))
    assert admitted("inference", pods["pruner"]) and admitted("inference", pods["slimyolo-sweep"])
    assert not admitted("stage-services", pods["inference"]) and not admitted("store", pods["prometheus"])
    assert admitted("metrics", pods["prometheus"])


def test_no_literal_secret_anywhere():
    for where, doc in all_docs():
        assert doc["kind"] != "Secret", f"{where}: credentials are created with kubectl, never committed"
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if SECRET_NAME.search(k)], where
        for c in containers(doc):
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']}"
    compose = (ROOT / "docker-compose.yml").read_text()
    for name, value in re.findall(r"^\s*([A-Z_]*(?:SECRET|PASSWORD|ACCESS_KEY)[A-Z_]*):\s*(\S.*)$", compose, re.M):
        assert value.startswith("${") and ":?" in value, f"docker-compose.yml: {name} must come from .env"


def test_hpa_targets_the_inference_deployment():
    (hpa,) = [d for d in render("k8s/base") if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1


def test_compose_validates_against_the_compose_spec(tmp_path):
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                               str(path)], capture_output=True, text=True)

    ok = check(ROOT / "docker-compose.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("restart: unless-stopped",
                                                                        "restart: [sometimes]", 1))
    assert check(broken).returncode != 0


def _extras_closure(extra: str, extras: dict[str, list[str]]) -> list[str]:
    out = []
    for req in extras[extra]:
        m = re.fullmatch(r"slimyolo\[([a-z,]+)\]", req)
        out += [r for e in m.group(1).split(",") for r in _extras_closure(e, extras)] if m else [req]
    return out


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_basics(image):
    text = dockerfile(image)
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)  # a build argument: air-gapped sites name theirs
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"pinned base, got {base}"
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2 and set(froms) == {"${BASE_IMAGE}"}, f"multi-stage on the one base, got {froms}"
    assert re.search(r"^USER\s+10001", text, re.M), "runs as a non-root user"
    assert "EXPOSE 50051 8000" in text
    assert re.search(rf'^CMD \["serve", "{image}"\]', text, re.M)
    assert f"-f services/{image}/Dockerfile -t slimyolo/{image}:0.1.0 ." in text
    assert not re.search(r"^# syntax=", text, re.M), "a syntax line makes BuildKit fetch its frontend from a registry"
    # The build context holds every package the wheel is made of (the servicers included).
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    ignore = (ROOT / ".dockerignore").read_text().split()
    for pattern in packages["include"]:
        folder = pattern.rstrip("*")
        assert re.search(rf"^COPY {folder} \./{folder}$", text, re.M), folder
        assert f"!{folder}/" in ignore, f".dockerignore must let {folder}/ into the build context"


def test_inference_image_has_neither_torch_nor_tensorflow():
    text = dockerfile("inference")
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not [line for line in installs if re.search(r"torch|tensorflow", line)]
    (extras_used,) = re.findall(r'pip install[^"]*"\.\[([a-z,]+)\]"', text)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    reqs = [r for e in extras_used.split(",") for r in _extras_closure(e, extras)]
    assert reqs and not [r for r in reqs if re.match(r"(torch|tensorflow|nncf|keras)", r)], reqs


def test_images_ports_and_env_names_agree():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    k8s_images = {}
    for _, doc in all_docs():
        for c in containers(doc):
            if c["image"].startswith("slimyolo/"):
                k8s_images.setdefault(c["image"], []).append(c)
    for stage in STAGES:
        image = f"slimyolo/{IMAGE_OF[stage]}:0.1.0"
        assert compose[stage]["image"] == image
        assert compose[stage]["build"]["dockerfile"] == f"services/{IMAGE_OF[stage]}/Dockerfile"
        assert compose[stage]["command"] == ["serve", stage]
        assert compose[stage]["ports"][0].endswith(":50051")
        assert image in k8s_images
    assert set(k8s_images) == {f"slimyolo/{i}:0.1.0" for i in DOCKERFILES}
    for image, cs in k8s_images.items():
        exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", dockerfile(image.split("/")[1].split(":")[0]),
                                              re.M)[0].split()}
        for c in cs:
            assert {p["containerPort"] for p in c.get("ports", []) if p["name"] != "rendezvous"} <= exposed
    # Every SLIMYOLO_* variable the deployments set is one the code reads.
    code = " ".join(p.read_text() for p in (ROOT / "slimyolo").rglob("*.py"))
    known = set(re.findall(r"SLIMYOLO_[A-Z0-9_]+", code))
    used = set(re.findall(r"SLIMYOLO_[A-Z0-9_]+", (ROOT / "docker-compose.yml").read_text()))
    used |= {k for _, d in all_docs() if d["kind"] == "ConfigMap" for k in d["data"] if k.startswith("SLIMYOLO_")}
    used |= {e["name"] for _, d in all_docs() for c in containers(d) for e in c.get("env", [])
             if e["name"].startswith("SLIMYOLO_")}
    used |= set(re.findall(r"SLIMYOLO_[A-Z0-9_]+", " ".join(dockerfile(i) for i in DOCKERFILES)))
    used.discard("SLIMYOLO_BUCKET")  # compose's own .env variable, expanded by compose itself
    assert used and used <= known, sorted(used - known)


def test_prometheus_scrapes_every_service():
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {f"{s}:8000" for s in STAGES} <= targets
    for doc in render("k8s/base"):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in STAGES:
            ann = doc["spec"]["template"]["metadata"]["annotations"]
            assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}


def test_commands_the_deployments_run_exist():
    from slimyolo.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    runs: list[tuple[str, list[str]]] = []
    for where, doc in all_docs():
        for c in containers(doc):
            if not c["image"].startswith("slimyolo/"):
                continue
            argv = c.get("command", []) + c.get("args", [])
            text = " ".join(argv)
            if "-m slimyolo" in text:  # torchrun ... -m slimyolo <command> ...
                argv = text.split("-m slimyolo", 1)[1].split()
            runs.append((where, argv))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    runs += [("docker-compose.yml", compose[s]["command"]) for s in STAGES]
    runs += [("docker-compose.yml", compose[s]["healthcheck"]["test"][2:]) for s in STAGES]  # CMD slimyolo ...
    for image in DOCKERFILES:
        text = dockerfile(image)
        runs.append((f"services/{image}/Dockerfile", re.findall(r'^CMD \["(\w+)"', text, re.M)))
        runs.append((f"services/{image}/Dockerfile", re.findall(r'CMD \["slimyolo", "(\w+)"', text)))
    assert len(runs) > 10
    for where, argv in runs:
        assert argv and argv[0] in commands, f"{where}: 'slimyolo {' '.join(argv)}' is not a slimyolo command"


def test_no_two_images_differ_only_in_their_command():
    """Stages whose images would install the same share one (the pruner runs the trainer's)."""
    def body(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if line and not line.startswith(("#", "CMD ")))

    bodies = [body(dockerfile(i)) for i in DOCKERFILES]
    assert len(set(bodies)) == len(bodies)
    assert not (ROOT / "services/pruner/Dockerfile").exists()


@pytest.mark.parametrize("image", ["trainer", "converter"])
def test_pytorch_comes_from_its_cpu_index_or_offered_wheels(image, tmp_path):
    """The install line as the build's shell runs it: the CPU index by default; TORCH_INDEX= leaves
    pip's own index (PyPI or a site's mirror) and the wheels `make images TORCH_WHEELS=DIR` offers."""
    text = dockerfile(image)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert "COPY deploy/wheels/ /tmp/wheels/" in text
    assert "!deploy/wheels/" in (ROOT / ".dockerignore").read_text().split()
    assert (ROOT / "deploy/wheels").is_dir()  # committed (its README), so the COPY finds it
    (run,) = [line.removeprefix("RUN ") for line in text.splitlines() if "torch==" in line]
    echo = tmp_path / "pip"
    echo.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    echo.chmod(0o755)

    def argv(index: str) -> list[str]:
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TORCH_INDEX": index}
        return subprocess.run(["sh", "-c", run], env=env, capture_output=True, text=True, check=True).stdout.split()

    assert argv("https://download.pytorch.org/whl/cpu") == [
        "install", "--no-cache-dir", "--find-links", "/tmp/wheels", "--index-url",
        "https://download.pytorch.org/whl/cpu", "torch==2.13.0"]
    assert argv("") == ["install", "--no-cache-dir", "--find-links", "/tmp/wheels", "torch==2.13.0"]


def test_third_party_images_are_configurable_with_upstream_defaults():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert re.fullmatch(r"\$\{S3_IMAGE:-minio/minio:RELEASE\.[\w.-]+\}", compose["minio"]["image"])
    assert re.fullmatch(r"\$\{S3_INIT_IMAGE:-minio/mc:RELEASE\.[\w.-]+\}", compose["minio-init"]["image"])
    assert re.fullmatch(r"\$\{PROMETHEUS_IMAGE:-prom/prometheus:v[\d.]+\}", compose["prometheus"]["image"])
    for standin in ("deploy/s3/Dockerfile", "deploy/prometheus/Dockerfile"):  # on the services' base
        text = (ROOT / standin).read_text()
        assert re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M) == re.findall(
            r"^ARG BASE_IMAGE=(\S+)$", dockerfile("inference"), re.M), standin
        assert re.search(r"^USER (?!root|0)", text, re.M), standin


def test_the_s3_standin_runs_the_compose_bucket_init_and_health_check(seaweed, tmp_path):
    """The stand-in's `mc` against a real S3 server, with the very commands docker-compose.yml runs."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    (init,) = compose["minio-init"]["command"]
    init = init.replace("$$", "$").replace("http://minio:9000", seaweed.endpoint)  # compose's escape; its host
    health = compose["minio"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "mc"]
    (tmp_path / "bin").mkdir()
    mc = tmp_path / "bin" / "mc"
    mc.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "deploy/s3/mc"}" "$@"\n')
    mc.chmod(0o755)
    bucket = f"init-{tmp_path.name[-12:].lower().replace('_', '-')}"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "MINIO_ROOT_USER": seaweed.access_key,
           "MINIO_ROOT_PASSWORD": seaweed.secret_key, "SLIMYOLO_BUCKET": bucket}

    def sh(command: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", command], env={**env, **extra}, capture_output=True, text=True)

    for _ in range(2):  # the init runs at every `up`: an existing bucket is fine
        done = sh(init)
        assert done.returncode == 0, done.stderr
    assert seaweed.client().bucket_exists(bucket)
    ready = sh(" ".join(health[1:]))  # `mc ready local`, through the alias the init stored
    assert ready.returncode == 0, ready.stderr
    wrong = sh(f'mc alias set local {seaweed.endpoint} "$MINIO_ROOT_USER" wrong && mc ready local')
    assert wrong.returncode != 0 and "SignatureDoesNotMatch" in wrong.stderr


def test_make_test_needs_no_docker_and_images_take_a_wheel_folder():
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout

    assert "docker" not in dry("test") and "images" not in dry("test")
    assert "deploy/images.py build" in dry("images") and "--torch-wheels" not in dry("images")
    assert "--torch-wheels '/srv/wheels'" in dry("images", "TORCH_WHEELS=/srv/wheels")
    assert "deploy/images.py test" in dry("test-images", "TORCH_WHEELS=/srv/wheels")


def test_inference_image_probes_its_own_port_and_declines_openvino_telemetry(tmp_path, monkeypatch):
    """The HEALTHCHECK is liveness on the port the container is configured with (the health command's
    default follows SLIMYOLO_GRPC_PORT), and `import openvino` neither warns nor writes in a read-only
    container: telemetry is declined in a HOME of the image's own, where no volume is mounted."""
    from slimyolo.cli import build_parser

    for image in ("trainer", "converter", "inference"):  # every image: the pruner runs the trainer's
        (healthcheck,) = re.findall(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", dockerfile(image), re.M)
        assert yaml.safe_load(healthcheck) == ["slimyolo", "health", "--service", "liveness"], image
    text = dockerfile("inference")
    monkeypatch.setenv("SLIMYOLO_GRPC_PORT", "7001")
    assert build_parser().parse_args(["health"]).address == "127.0.0.1:7001"
    (home,) = re.findall(r"^\s+HOME=(\S+) \\$", text, re.M)
    assert f"echo 0 > {home}/intel/openvino_telemetry" in text
    for doc in render("k8s/base"):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "inference":
            mounts = [m["mountPath"] for c in containers(doc) for m in c.get("volumeMounts", [])]
            assert mounts and not [m for m in mounts if home == m or home.startswith(m.rstrip("/") + "/")], mounts
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "openvino_telemetry").write_text("0\n")
    done = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); import openvino; "
                           "openvino.Core()"], env={**os.environ, "HOME": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "telemetry" not in done.stderr.lower() + done.stdout.lower(), done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["intel", "openvino_telemetry"]  # nothing written


def test_no_entry_point_runs_openvino_telemetry():
    """Importing slimyolo (every entry point: the CLI, the services, torchrun -m slimyolo) hides the
    openvino_telemetry package, so OpenVINO's converter and NNCF use their stubs: no network call, and no child
    forked from a thread during a conversion (which died with "Fatal Python error" in the test logs)."""
    code = ("import slimyolo.cli, openvino.tools.ovc.convert_impl as ovc, nncf.telemetry.wrapper as nncf; "
            "import sys, unittest.mock; print(ovc.tm.__name__, isinstance(nncf.telemetry, unittest.mock.MagicMock), "
            "sys.modules['openvino_telemetry'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("NNCF_", "CI"))})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "True", "None"], done.stdout
