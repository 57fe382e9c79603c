"""Digests that survive upgrades: a stored result stays the result of its spec across versions of SlimYOLO.

``tests/data/stored/*.stage.json`` are real ``stage.json`` files written by the SlimYOLO before the
digests changed (its digest hashed every field, defaults included; no ``schema``): a prune
(``slimyolo stage prune``), a conversion in process, and one through the converter service of
that version, which wrote the model repository it resolved into the spec. Each test publishes a
tree as that version did (the stage's files, that ``stage.json``, the manifest) and runs the same
YAML again, as written then and with a default written out, in process and through the
services: the stored result comes back untouched (every file's bytes and mtime), with no work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import MINI_CFG

from slimyolo.errors import FailedPrecondition
from slimyolo.params import param
from slimyolo.stages.durable import STAGE_FILE, canonical, check_same_spec, same_spec, spec_digest, write_stage_file
from slimyolo.stages.kinds import parse_spec, run_stage
from slimyolo.stages.specs import PruneSpec
from slimyolo.store import LocalStore

STORED = Path(__file__).parent / "data" / "stored"
MODEL = {"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights"}
# The YAML specs the stored results were made from, as their users wrote them.
PRUNE = {**MODEL, "out": "runs/pruned", "global_percent": 0.5}
CONVERT = {**MODEL, "name": "mini", "via": "torch", "parity_images": 1}
SERVED = {**CONVERT, "name": "served"}  # converted through the service, which filled in model_repository: models
# (spec, a default of it written out, the stored stage.json, where the tree was published)
CASES = {
    "prune": ("prune", PRUNE, {"layer_keep": 0.01, "method": "channel"}, "prune.stage.json", "runs/pruned"),
    "convert": ("convert", CONVERT, {"precision": "fp32"}, "convert.stage.json", "models/mini/1"),
    "convert through the service": ("convert", SERVED, {"calib_images": 300}, "convert-served.stage.json",
                                    "models/served/1"),
}


def _publish_as_then(store: LocalStore, root: Path) -> None:
    """The model, and the three results as the earlier version published them: the stage's own files,
    regenerated here, beside the stored ``stage.json``, under a manifest that names it."""
    import torch

    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import save_darknet_weights

    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "mini.cfg").write_text(MINI_CFG)
    torch.manual_seed(0)
    model = load_model(inputs / "mini.cfg")
    for module in model.modules():  # γ spread out, as after sparsity training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data = torch.rand_like(module.weight)
    save_darknet_weights(model, inputs / "mini.weights")
    store.put_tree("inputs", inputs)
    for kind, doc, _, name, prefix in CASES.values():
        scratch = {"out": "scratch/pruned"} if kind == "prune" else {"model_repository": "scratch"}
        run_stage(store, parse_spec(kind, {**doc, **scratch}))
        (source,) = store.list_trees("scratch")
        folder = root / "tree" / prefix
        store.get_tree(source, folder)
        shutil.copy(STORED / name, folder / STAGE_FILE)
        store.put_tree(prefix, folder)
        store.delete_tree(source)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(store, addresses): a local store (``SLIMYOLO_STORE``) holding the results as the earlier version published
    them, and the pruner and converter services of this version over it, on 127.0.0.1, by name. Every test
    checks that it changed nothing, so they share it."""
    import slimyolo.services.converter as converter
    import slimyolo.services.pruner as pruner
    from slimyolo.rpc.server import Server, ServerConfig

    root = tmp_path_factory.mktemp("stored")
    store = LocalStore(root / "store")
    servers, addresses = [], {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMYOLO_STORE", str(store.root))
        mp.setenv("SLIMYOLO_WORK_DIR", str(root / "work"))
        mp.delenv("SLIMYOLO_MODEL_REPOSITORY", raising=False)
        _publish_as_then(store, root)
        try:
            for name, module in (("pruner", pruner), ("converter", converter)):
                server = Server(name, ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
                module.build(server, argparse.Namespace(model_repository=None))
                server.start()
                servers.append(server)
                addresses[name] = f"127.0.0.1:{server.port}"
            yield store, addresses
        finally:
            for server in servers:
                server.stop(5)


def _files(store: LocalStore) -> dict[str, tuple[bytes, int]]:
    """Every published file of the results (not the services' job records): its bytes and its mtime."""
    return {str(p.relative_to(store.root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for top in ("runs", "models") for p in sorted((store.root / top).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("written", ["as then", "with a default written out"])
@pytest.mark.parametrize("where", ["in process", "--remote"])
def test_a_result_stored_by_the_earlier_version_is_returned_untouched(stored, run_cli, tmp_path, case, written,
                                                                       where):
    store, services = stored
    kind, doc, default, name, prefix = CASES[case]
    old = json.loads((STORED / name).read_text())
    assert "schema" not in old and old["digest"] != spec_digest(parse_spec(kind, doc))  # hashed the earlier way
    before = _files(store)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**doc, **(default if written != "as then" else {})}))
    service = "pruner" if kind == "prune" else "converter"
    remote = ("--remote", services[service]) if where == "--remote" else ()
    code, out, err = run_cli("stage", kind, "--spec", spec, *remote)
    assert code == 0, err
    result = json.loads(out)
    assert result["metrics"] == old["metrics"]
    assert {a["sha256"] for a in result["artifacts"].values()} <= {
        line.split()[0] for line in (store.root / prefix / "SHA256SUMS").read_text().splitlines()}
    assert "finished already" in err
    assert _files(store) == before  # no byte written, no file replaced, no new version


def test_writing_a_default_out_is_the_same_spec_and_the_same_digest():
    for kind, doc, default, _, _ in CASES.values():
        plain, explicit = parse_spec(kind, doc), parse_spec(kind, {**doc, **default})
        assert spec_digest(plain) == spec_digest(explicit) and canonical(plain) == canonical(explicit)
        assert explicit.to_dict() == plain.to_dict()  # stage.json keeps holding the whole spec


def test_a_training_setting_written_out_at_its_default_is_the_same_train_spec():
    doc = {"cfg": "inputs/model/m.cfg", "data": "datasets/d", "out": "runs/t", "epochs": 3, "sr": True}
    plain = parse_spec("train", doc)
    for default in ({"batch_size": 16}, {"s": 0.001, "ema": True}, {"augment": {"mosaic": 1.0}},
                    {"loss": {"box": 0.05}}, {"checkpoint_steps": 0}):
        explicit = parse_spec("train", {**doc, **default})
        assert spec_digest(explicit) == spec_digest(plain) and same_spec(
            {"kind": "train", "schema": 1, "spec": explicit.to_dict()}, plain), default
    for other in ({"batch_size": 8}, {"augment": {"mosaic": 0.0}}, {"epochs": 30}):
        assert spec_digest(parse_spec("train", {**doc, **other})) != spec_digest(plain), other


def test_a_changed_field_is_another_spec_named_in_the_error(stored):
    store, _ = stored
    before = _files(store)
    with pytest.raises(FailedPrecondition, match=r"out: .*/runs/pruned holds a complete tree of another prune spec "
                                                 r"\(differs in global_percent: 0.5 → 0.6\)"):
        run_stage(store, parse_spec("prune", {**PRUNE, "global_percent": 0.6}))
    assert _files(store) == before


@dataclasses.dataclass(frozen=True)
class _PruneWithMinChannels(PruneSpec):
    """PruneSpec as a later version might declare it: one more field, with a default that changes nothing."""

    min_channels: int = param("int", 0, low=0, help="every layer keeps at least this many channels")


def test_a_field_added_later_with_a_default_keeps_stored_results_valid(tmp_path):
    spec = parse_spec("prune", PRUNE)
    later = _PruneWithMinChannels.from_dict(PRUNE)
    assert later.kind == "prune" and later.to_dict()["min_channels"] == 0
    write_stage_file(tmp_path, spec, {"n": 1})  # a result stored by this version, before the field existed
    doc = json.loads((tmp_path / STAGE_FILE).read_text())
    assert doc["schema"] == 1 and doc["spec"] == spec.to_dict()
    assert spec_digest(later) == doc["digest"] and same_spec(doc, later)
    earlier = json.loads((STORED / "prune.stage.json").read_text())  # and one stored by the earlier version
    assert same_spec(earlier, later) and same_spec(earlier, spec)
    changed = _PruneWithMinChannels.from_dict({**PRUNE, "min_channels": 4})
    assert not same_spec(doc, changed) and not same_spec(earlier, changed)


def test_another_schema_version_is_another_spec(tmp_path):
    spec = parse_spec("prune", PRUNE)
    write_stage_file(tmp_path, spec)
    doc = {**json.loads((tmp_path / STAGE_FILE).read_text()), "schema": 2}
    assert not same_spec(doc, spec)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(FailedPrecondition, match=r"differs in schema: 2 → 1"):
        check_same_spec(store, "runs/pruned", doc, spec, "out", "a complete tree")


def test_stage_json_takes_the_metrics_a_runner_returns_numpy_scalars_included(tmp_path):
    """The work is done when stage.json is written: a NumPy scalar or array among the metrics must not fail it."""
    import numpy as np

    write_stage_file(tmp_path, parse_spec("prune", PRUNE), {"map50": np.float32(0.5), "kept": np.int64(7),
                                                             "per_layer": np.arange(3), "folder": tmp_path})
    metrics = json.loads((tmp_path / STAGE_FILE).read_text())["metrics"]
    assert metrics == {"map50": 0.5, "kept": 7, "per_layer": [0, 1, 2], "folder": str(tmp_path)}


@pytest.mark.parametrize("kind", ["prune", "convert"])
def test_a_result_of_this_version_is_returned_untouched_for_a_default_written_out(stored, run_cli, tmp_path, kind):
    """``slimyolo stage KIND --spec A``, then A with a default written out, in process and with ``--remote``."""
    store, services = stored
    doc = {**PRUNE, "out": "runs/fresh"} if kind == "prune" else {**CONVERT, "name": "fresh"}
    default = {"round_to": 1} if kind == "prune" else {"onnx": False, "tolerance": 1e-3}
    spec = tmp_path / "a.yaml"
    spec.write_text(yaml.safe_dump(doc))
    code, out, err = run_cli("stage", kind, "--spec", spec)
    assert code == 0, err
    first = json.loads(out)
    before = _files(store)
    spec.write_text(yaml.safe_dump({**doc, **default}))
    service = "pruner" if kind == "prune" else "converter"
    for remote in ((), ("--remote", services[service])):
        code, out, err = run_cli("stage", kind, "--spec", spec, *remote)
        assert code == 0, err
        assert json.loads(out) == first and "finished already" in err
        assert _files(store) == before
