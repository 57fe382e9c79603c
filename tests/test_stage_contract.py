"""One contract per stage: a spec gives the same result in process and through its service.

Every field a stage spec declares (slimyolo/stages/specs.py) must travel every path unchanged:
YAML text, the gRPC request, and the runner's call of the core function. The first tests check
that no declared field is missing from any path (they fail when a field is added to a spec but
not to the table below, which must set it to a value other than its default). The last ones run
each stage kind with edge values (zeros, the smallest and largest legal values, ranges of uneven
steps) in this process and as a job of its real service over gRPC, against one store, and
compare the published files (sha256) and the metrics.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import re
import shutil
import textwrap
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimyolo.errors import SlimYoloError
from slimyolo.params import declared_fields
from slimyolo.rpc.stages import spec_from_request, spec_to_request, start_messages
from slimyolo.stages import runners
from slimyolo.stages.kinds import KINDS, parse_spec
from slimyolo.store import LocalStore

ART = {"uri": "file:///store/blobs/sha256/" + "ab" * 32, "sha256": "ab" * 32, "size_bytes": 10}
DATA = {"archive": ART, "data_file": "synth.data"}
# Every declared field of every spec, at a legal value other than its default.
FULL: dict[str, dict[str, Any]] = {
    "train": {"data": DATA, "out": "runs/t", "cfg": ART, "weights": "runs/b/best.weights", "weights_cfg": ART,
              "teacher_cfg": ART, "teacher_weights": ART, "epochs": 1, "lr0": 0.0, "seed": 0, "warmup_epochs": 0},
    "eval": {"weights": ART, "data": {"tree": "datasets/synth"}, "cfg": "runs/b/model.cfg", "img_size": 32,
             "batch_size": 1, "conf_thres": 0.0, "iou_thres": 1.0, "max_images": 1},
    "prune": {"weights": ART, "out": "runs/p", "cfg": ART, "method": "both", "global_percent": 1e-6,
              "shortcuts": 1, "layer_keep": 0.0, "round_to": 64, "data": DATA, "img_size": 64, "batch_size": 1,
              "max_images": 1, "conf_thres": 0.0, "iou_thres": 1.0},
    "sweep": {"weights": ART, "data": DATA, "out": "runs/s", "cfg": ART, "percents": [0.3, 0.9, 0.25],
              "shortcuts": [0, 5, 2], "max_map_drop": 0.0, "fine_percent": 1.0, "layer_keep": 0.0, "round_to": 8,
              "img_size": 64, "batch_size": 1, "max_images": 1, "conf_thres": 0.5, "iou_thres": 0.0,
              "latency_runs": 1, "objective": "accuracy",
              "precision": "int8", "fps_seconds": 60.0, "fps_repeats": 1, "min_fps": 100.0, "streams": 4,
              "stream_fps": 25.0, "mosaic": "2x2", "measure_on": "dns:///inference.slimyolo.svc.cluster.local:50051"},
    "convert": {"weights": ART, "name": "det", "cfg": ART, "version": "1", "model_repository": "repo",
                "via": "torch", "precision": "int8", "calib_data": DATA, "calib_images": 1, "img_size": 64,
                "names": ["a"], "accuracy_control": True, "max_drop": 1.0, "ppp": None, "onnx": True,
                "parity_images": 1, "tolerance": 1e-9, "evaluate": True, "bench_seconds": 0.01,
                "bench_precision": "default"},
}
FULL["convert"].pop("ppp")  # ppp and evaluate exclude each other; ppp is set in its own case below
WITH_PPP = {**FULL["convert"], "evaluate": False, "ppp": "fixed"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_table_sets_every_declared_field_to_a_value_other_than_its_default(kind):
    spec = parse_spec(kind, FULL[kind])
    variants = [spec] + ([parse_spec(kind, WITH_PPP)] if kind == "convert" else [])
    for fld in declared_fields(KINDS[kind].spec):
        if fld.default is dataclasses.MISSING:
            continue  # required: set anyway
        assert any(getattr(v, fld.name) != fld.default for v in variants), \
            f"FULL[{kind!r}] leaves '{fld.name}' at its default: add a non-default legal value for it"


@pytest.mark.parametrize("doc", [*FULL.items(), ("convert", WITH_PPP)], ids=[*FULL, "convert-ppp"])
def test_every_field_travels_yaml_and_the_request_unchanged(doc):
    kind, fields = doc
    spec = parse_spec(kind, fields)
    from_yaml = parse_spec(kind, yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    request = spec_to_request(spec)
    from_request = spec_from_request(kind, type(request).FromString(request.SerializeToString()))
    assert from_yaml == spec and from_request == spec
    for name, value in fields.items():  # ...and equal to what was written, not only to each other
        have = getattr(spec, name, None) if name in {f.name for f in declared_fields(type(spec))} else \
            spec.options[name]
        assert have == value or (isinstance(value, list) and list(have) == value) or \
            (isinstance(value, dict) and spec.to_dict()[name] == value), (name, have, value)


def _imported(fn: Any, tree: ast.AST, name: str) -> Any:
    """What ``name`` is inside ``fn``: imported in its body (``from M import name``), else a global of its module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return getattr(importlib.import_module(node.module), alias.name)
    return fn.__globals__.get(name)


def _spec_reads(function: Any) -> set[str]:
    """The attributes of ``spec`` a function reads (``spec.x``), itself and the module helpers it passes spec to;
    ``Options.taken_from(spec)`` reads every field the options class declares."""
    seen, names, todo = set(), set(), [function]
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "spec":
                names.add(node.attr)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "taken_from" and isinstance(node.func.value, ast.Name) and \
                    any(isinstance(a, ast.Name) and a.id == "spec" for a in node.args):
                names.update(f.name for f in declared_fields(_imported(fn, tree, node.func.value.id)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    any(isinstance(a, ast.Name) and a.id == "spec" for a in node.args):
                helper = getattr(runners, node.func.id, None)
                if inspect.isfunction(helper):
                    todo.append(helper)
    return names


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_runner_passes_every_declared_field_on_to_the_core(kind):
    read = _spec_reads(KINDS[kind].runner)
    declared = {f.name for f in declared_fields(KINDS[kind].spec)} | ({"options"} if kind == "train" else set())
    assert declared - read == set(), f"run_{kind} never reads spec.{sorted(declared - read)[0]}"


# -- in process and through the services ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract(trained_mini, tmp_path_factory):
    """(store, RemoteRunner, inputs): the trainer, pruner and converter services on 127.0.0.1 over one local store
    holding the trained mini detector (``inputs/mini.cfg``, ``inputs/mini.weights``, a copy whose 128-channel
    convolution has near-zero γ: ``inputs/thin.weights``) and its data set (``inputs/synth``)."""
    import slimyolo.services.converter as converter
    import slimyolo.services.pruner as pruner
    import slimyolo.services.trainer as trainer
    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import save_darknet_weights
    from slimyolo.rpc.server import Server, ServerConfig
    from slimyolo.rpc.stages import RemoteRunner

    root = tmp_path_factory.mktemp("contract")
    inputs = root / "inputs"
    shutil.copytree(trained_mini.data.parent, inputs / "synth")
    shutil.copy(trained_mini.cfg, inputs / "mini.cfg")
    shutil.copy(trained_mini.darknet_weights, inputs / "mini.weights")
    model = load_model(trained_mini.cfg, trained_mini.darknet_weights)
    wide = next(m for m in model.modules() if getattr(m, "num_features", 0) == 128)
    wide.weight.data.mul_(1e-4)  # every γ of that layer below the threshold: only the floor keeps channels
    save_darknet_weights(model, inputs / "thin.weights")
    store = LocalStore(root / "store")
    store.put_tree("inputs", inputs)
    servers, addresses = [], {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMYOLO_STORE", str(store.root))
        mp.setenv("SLIMYOLO_WORK_DIR", str(root / "work"))
        remote = None
        try:
            for name, module in (("trainer", trainer), ("pruner", pruner), ("converter", converter)):
                server = Server(name, ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
                module.build(server, argparse.Namespace(model_repository=None))
                server.start()
                servers.append(server)
                addresses[name] = f"127.0.0.1:{server.port}"
            remote = RemoteRunner(addresses)
            yield store, remote
        finally:
            if remote is not None:
                remote.close()
            for server in servers:
                server.stop(5)


MODEL = {"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights"}
# Stage specs with edge values ("out" and the model repository are added per path).
EDGES: dict[str, dict[str, Any]] = {
    "train zeros": {"kind": "train", **MODEL, "data": "inputs/synth", "epochs": 1, "batch_size": 16, "img_size": 96,
                    "warmup_epochs": 0, "seed": 0, "threads": 1, "eval_interval": 1, "max_eval_images": 8,
                    "augment": {"mosaic": 0.0, "hsv_h": 0.0}, "optimizer": "adam", "lr0": 0.001},
    "eval thresholds 0 and 1": {"kind": "eval", **MODEL, "data": "inputs/synth", "conf_thres": 0.0,
                                "iou_thres": 1.0, "batch_size": 1},
    "prune layer_keep 0": {"kind": "prune", "cfg": "inputs/mini.cfg", "weights": "inputs/thin.weights",
                           "global_percent": 0.5, "layer_keep": 0.0},
    "prune layer_keep 0.01": {"kind": "prune", "cfg": "inputs/mini.cfg", "weights": "inputs/thin.weights",
                              "global_percent": 0.5, "layer_keep": 0.01},
    "prune both, largest keep": {"kind": "prune", **MODEL, "method": "both", "global_percent": 0.999,
                                 "shortcuts": 1, "layer_keep": 1.0, "round_to": 8, "data": "inputs/synth",
                                 "max_images": 2, "batch_size": 2},
    "sweep uneven steps, no drop": {"kind": "sweep", **MODEL, "data": "inputs/synth", "percents": [0.3, 0.9, 0.25],
                                    "shortcuts": [0, 1, 1], "max_map_drop": 0.0, "layer_keep": 0.0,
                                    "max_images": 4, "fine_percent": 1.0},
    "convert smallest": {"kind": "convert", **MODEL, "name": "mini", "version": "1", "via": "torch",
                         "calib_images": 1, "parity_images": 1, "tolerance": 1.0, "names": ["a", "b"]},
}
# Files with wall-clock times or run paths inside: compared by presence, not content.
TIMED = {"checkpoint", "last", "results", "config", "sweep", "csv", "plot", "conversion.json"}
TIMED_METRICS = {"elapsed_s", "images_per_s", "seconds", "out", "model_uri"}


def _normal(value: Any, path: str) -> Any:
    """Metrics with the two runs' own prefix made equal and the wall-clock figures left out."""
    if isinstance(value, dict):
        return {k: _normal(v, path) for k, v in value.items() if k not in TIMED_METRICS and not k.startswith("tb")}
    if isinstance(value, list):
        return [_normal(v, path) for v in value]
    if isinstance(value, str):
        return value.replace(path, "PATH")
    return value


def _quiet(_event) -> None:
    """A progress callback that drops the events (the contract compares results, not lines)."""


def _run_both(contract, case: str):
    """(local result, remote result): the case's spec run in process and through its service."""
    from slimyolo.stages.kinds import run_stage

    store, remote = contract
    doc = dict(EDGES[case])
    kind = doc.pop("kind")
    results = []
    paths = (("local", lambda spec: run_stage(store, spec)), ("remote", lambda spec: remote.run(spec, _quiet)))
    for path, run in paths:
        tag = f"{path}-{uuid.uuid4().hex[:12]}"
        placed = {**doc, **({"model_repository": f"models-{tag}"} if kind == "convert" else {"out": f"runs/{tag}"})}
        if kind == "eval":
            placed.pop("out")
        results.append((tag, run(parse_spec(kind, placed))))
    return results


def _ir_text(artifact) -> str:
    """An IR's model.xml with OpenVINO's generated names (a counter of the process: Model7, Constant_17962) numbered
    away: the network, its weights offsets and its metadata remain."""
    text = Path(urllib.parse.urlparse(artifact.uri).path).read_text()
    return re.sub(r'(name="[A-Za-z]+)_?\d+"', r'\1_N"', text)


def _compare(results) -> None:
    (local_tag, local), (remote_tag, remote) = results
    assert local.artifacts.keys() == remote.artifacts.keys()
    for role, artifact in local.artifacts.items():
        if role == "model.xml":
            assert _ir_text(artifact) == _ir_text(remote.artifacts[role])
        elif role not in TIMED:
            assert artifact.sha256 == remote.artifacts[role].sha256, role
    assert _normal(local.metrics, local_tag) == _normal(remote.metrics, remote_tag)


@pytest.mark.parametrize("case", list(EDGES))
def test_each_stage_gives_the_same_files_and_metrics_in_process_and_through_its_service(contract, case):
    _compare(_run_both(contract, case))


def test_layer_keep_zero_reaches_the_pruner_and_changes_the_network(contract):
    zero = _run_both(contract, "prune layer_keep 0")
    one_percent = _run_both(contract, "prune layer_keep 0.01")
    for (_, a), (_, b) in zip(zero, one_percent, strict=True):
        assert a.artifacts["cfg"].sha256 != b.artifacts["cfg"].sha256  # 1 vs 2 of the 128 channels kept
        assert a.metrics["after"]["params"] < b.metrics["after"]["params"]
    assert zero[0][1].artifacts["cfg"].sha256 == zero[1][1].artifacts["cfg"].sha256


@pytest.mark.parametrize(("kind", "doc", "message"), [
    ("prune", {"weights": "inputs/mini.weights", "out": "runs/x", "global_percent": 1.0}, "'global_percent' must be"),
    ("sweep", {"weights": "inputs/mini.weights", "data": "inputs/synth", "out": "runs/x", "percents": [0.5, 0.6]},
     "'percents' must be a list of 3"),
    ("eval", {"weights": "inputs/mini.weights", "data": "inputs/synth", "conf_thres": -0.1}, "'conf_thres' must be"),
])
def test_illegal_values_are_the_same_invalid_argument_in_process_and_remotely(contract, kind, doc, message):
    import grpc

    from slimyolo.rpc.gen.v1 import converter_pb2_grpc, pruner_pb2_grpc, trainer_pb2_grpc

    with pytest.raises(SlimYoloError, match=message) as local:
        parse_spec(kind, doc)
    _, remote = contract
    entry = KINDS[kind]
    stub = {"trainer": trainer_pb2_grpc.TrainerStub, "pruner": pruner_pb2_grpc.PrunerStub,
            "converter": converter_pb2_grpc.ConverterStub}[entry.service](remote.channel(entry.service))
    from slimyolo.rpc.messages import dict_to_struct

    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, entry.start)(start_messages(entry)[0](spec=dict_to_struct(doc)), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == str(local.value)


def _prune_by_cli(run_cli, tmp_path, path: str, extra: tuple) -> dict:
    """``slimyolo stage prune`` of the thinned mini model at 0.5 into ``runs/cli-<path>``: its result JSON."""
    spec = tmp_path / f"{path}.yaml"
    spec.write_text(yaml.safe_dump({"cfg": "inputs/mini.cfg", "weights": "inputs/thin.weights",
                                    "out": f"runs/cli-{path}", "global_percent": 0.5, "layer_keep": 0}))
    code, out, err = run_cli("stage", "prune", "--spec", spec, *extra)
    assert code == 0, err
    return json.loads(out)


def test_slimyolo_stage_remote_prints_what_the_run_in_process_prints(contract, run_cli, tmp_path):
    """``slimyolo stage prune --spec F --remote HOST:PORT``: the same result JSON, errors and exit status."""
    _, remote = contract
    outputs = {}
    for path, extra in (("local", ()), ("remote", ("--remote", remote.addresses["pruner"]))):
        outputs[path] = _prune_by_cli(run_cli, tmp_path, path, extra)
        spec = tmp_path / f"{path}.yaml"
        spec.write_text(yaml.safe_dump({"weights": "inputs/thin.weights", "out": "runs/x", "layer_keep": -1}))
        code, _, err = run_cli("stage", "prune", "--spec", spec, *extra)
        assert code == 2 and f"{spec}: 'layer_keep' must be at least 0, got -1" in err, err
    local, remote_out = outputs["local"], outputs["remote"]
    assert local["artifacts"].keys() == remote_out["artifacts"].keys()
    for role in local["artifacts"].keys() - TIMED:
        assert local["artifacts"][role]["sha256"] == remote_out["artifacts"][role]["sha256"], role
    assert _normal(local["metrics"], "cli-local") == _normal(remote_out["metrics"], "cli-remote")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"cfg": "inputs/mini.cfg", "weights": "inputs/none.weights", "out": "runs/m",
                                       "global_percent": 0.5}))
    errors = [run_cli("stage", "prune", "--spec", missing, *extra)
              for extra in ((), ("--remote", remote.addresses["pruner"]))]
    assert [e[0] for e in errors] == [2, 2] and "has no file 'none.weights'" in errors[0][2]
    # The same message; the remote one also says which job failed ("prune job <id>: ...").
    assert errors[1][2].endswith(errors[0][2].removeprefix("slimyolo: error: ")) and "prune job " in errors[1][2]


def test_slimyolo_stage_remote_over_tls_with_a_token_gives_the_bytes_of_the_plaintext_run(contract, run_cli, tls,
                                                                                          tmp_path, monkeypatch):
    """``stage prune --remote HOST:PORT --tls-ca ca.pem --token-file t`` against a pruner with TLS and tokens over the
    same store: the same files (sha256) and metrics as the plaintext service gives."""
    import slimyolo.services.pruner as pruner
    from slimyolo.rpc.server import Server, ServerConfig

    store, remote = contract
    monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    secure = Server("pruner", ServerConfig(bind="127.0.0.1", port=0, metrics_port=0, **tls.server_config()))
    pruner.build(secure, argparse.Namespace(model_repository=None))
    secure.start()
    outputs = {}
    try:
        for path, extra in (("plain", ("--remote", remote.addresses["pruner"])),
                            ("tls", ("--remote", f"127.0.0.1:{secure.port}", "--tls-ca", tls.ca,
                                     "--token-file", tls.token_file("alice")))):
            outputs[path] = _prune_by_cli(run_cli, tmp_path, path, extra)
    finally:
        secure.stop(5)
    plain, over_tls = outputs["plain"], outputs["tls"]
    assert plain["artifacts"].keys() == over_tls["artifacts"].keys()
    for role in plain["artifacts"].keys() - TIMED:
        assert plain["artifacts"][role]["sha256"] == over_tls["artifacts"][role]["sha256"], role
    assert _normal(plain["metrics"], "cli-plain") == _normal(over_tls["metrics"], "cli-tls")
