"""Hostile input to the stage services: archives, data sets that lead out of their folder, bad numbers.

The pruner and trainer services run in this process over a local store (their real servicers,
on 127.0.0.1). A request that alone shows the fault is refused with INVALID_ARGUMENT naming the
field; a fault inside a data set fails the job with INVALID_ARGUMENT naming the archive member or
the ``.data`` key. No answer contains the content of a file outside the data set (``/etc/passwd``,
a secret file beside the work folder) or a server-local path. The archive rules are also run
under the oldest Python the project declares (Debian 12's 3.11.2, which has no ``filter=``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from slimyolo.errors import SlimYoloError
from slimyolo.rpc.client import connect, follow_job
from slimyolo.rpc.gen.v1 import jobs_pb2, jobs_pb2_grpc, pruner_pb2, pruner_pb2_grpc, trainer_pb2_grpc
from slimyolo.rpc.messages import dict_to_struct
from slimyolo.rpc.server import Server, ServerConfig
from slimyolo.rpc.stages import start_messages
from slimyolo.stages.archive import ArchiveError, extract
from slimyolo.stages.kinds import KINDS
from slimyolo.store import LocalStore

REPO = Path(__file__).parents[1]
OLDEST_PYTHON = Path("/usr/bin/python3.11")  # Debian 12's: 3.11.2, the floor pyproject.toml allows
SECRET = "TOP-SECRET-c0ffee-7f3a"  # the content of a file beside the work folder, never to be echoed
PASSWD = "root:x:0:0"


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(path: Path, members: list[tuple], folder: Path | None = None) -> Path:
    """A tar of ``folder``'s contents (if given), then of ``members`` ((TarInfo, bytes) pairs)."""
    with tarfile.open(path, "w") as tar:
        if folder is not None:
            for item in sorted(folder.iterdir()):
                tar.add(item, arcname=item.name)
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.fixture(scope="module")
def data_set(tmp_path_factory) -> Path:
    """A small darknet data set folder (synth.data, synth.names, lists, images, labels)."""
    from slimyolo.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("hostile") / "synth", classes=2, train=4, val=2, size=64,
                           seed=0).parent


# -- the archive rules ------------------------------------------------------------------------------------

HOSTILE_MEMBERS = {
    "absolute": ([_member("/tmp/slimyolo-evil.txt", b"x")], "is an absolute path"),
    "dotdot": ([_member("images/../../evil.txt", b"x")], "leads out of the data set's folder"),
    "symlink out": ([_member("evil.names", kind=tarfile.SYMTYPE, link="/etc/passwd")], "links to the absolute path"),
    "relative symlink out": ([_member("sub/evil.names", kind=tarfile.SYMTYPE, link="../../../etc/passwd")],
                             "outside the data set's folder"),
    "hardlink out": ([_member("evil.names", kind=tarfile.LNKTYPE, link="../etc/passwd")],
                     "outside the data set's folder"),
    "link to a folder": ([_member("up", kind=tarfile.SYMTYPE, link=".")], "not a regular file earlier"),
    "device": ([_member("null", kind=tarfile.CHRTYPE)], "not a regular file, folder or link"),
    "fifo": ([_member("pipe", kind=tarfile.FIFOTYPE)], "not a regular file, folder or link"),
    "twice": ([_member("a.txt", b"1"), _member("a.txt", b"2")], "appears twice"),
    "too many members": ([_member(f"f{i}.txt", b"") for i in range(6)], "more than 5 members"),
    "too many bytes": ([_member("big.bin", b"\0" * 2000)], "larger than the limit"),
}


def _limits(case: str) -> dict[str, int]:
    return {"max_members": 5 if case == "too many members" else 1000, "max_bytes": 1000}


@pytest.mark.parametrize("case", list(HOSTILE_MEMBERS))
def test_hostile_archive_members_are_refused_naming_the_member(case, tmp_path):
    members, message = HOSTILE_MEMBERS[case]
    archive = _tar(tmp_path / "evil.tar", members)
    with pytest.raises(ArchiveError, match=message) as err:
        extract(archive, tmp_path / "out", where="data.archive", **_limits(case))
    assert str(err.value).startswith("data.archive: ")
    assert str(tmp_path) not in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/slimyolo-evil.txt").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_symlink()]


def test_a_data_set_archive_comes_out_as_plain_files_links_as_copies(data_set, tmp_path):
    archive = _tar(tmp_path / "good.tar", [_member("copy.names", kind=tarfile.SYMTYPE, link="synth.names"),
                                           _member("images/hard.names", kind=tarfile.LNKTYPE, link="synth.names")],
                   folder=data_set)
    written = extract(archive, tmp_path / "out")
    files = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == sorted([*(p.relative_to(data_set) for p in data_set.rglob("*") if p.is_file()),
                            Path("copy.names"), Path("images/hard.names")])
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_symlink()]
    assert (tmp_path / "out/copy.names").read_text() == (data_set / "synth.names").read_text()
    assert written == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        extract(data_set / "synth.names", tmp_path / "out2")


# Run by the oldest Python: argv = repository, output folder, {case: archive}; prints what came of each.
OLDEST_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from slimyolo.stages.archive import ArchiveError, extract
# (None entries are imports refused, not modules: slimyolo refuses openvino_telemetry)
foreign = {m.split(".")[0] for m, module in sys.modules.items() if module is not None} - set(sys.stdlib_module_names) \
    - {"__main__"}
out = {"version": list(sys.version_info[:3]), "foreign": sorted(foreign), "results": {}}
for i, (case, path) in enumerate(json.loads(sys.argv[3]).items()):
    limits = {} if case == "good" else {"max_members": 5 if case == "too many members" else 1000, "max_bytes": 1000}
    try:
        out["results"][case] = ["ok", extract(path, f"{sys.argv[2]}/out{i}", **limits)]
    except ArchiveError as exc:
        out["results"][case] = ["refused", str(exc)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not OLDEST_PYTHON.exists(), reason=f"{OLDEST_PYTHON} (Debian 12's Python) is not installed")
def test_the_archive_rules_hold_on_the_oldest_declared_python(data_set, tmp_path):
    """Python 3.11.2 has no tarfile filter=; the module runs there with the standard library alone."""
    cases = {case: str(_tar(tmp_path / f"{i}.tar", members)) for i, (case, (members, _)) in
             enumerate(HOSTILE_MEMBERS.items())}
    cases["good"] = str(_tar(tmp_path / "good.tar", [], folder=data_set))
    # -I -S: no environment variables, no site-packages: the standard library and this repository only.
    proc = subprocess.run([str(OLDEST_PYTHON), "-I", "-S", "-c", OLDEST_SCRIPT, str(REPO), str(tmp_path),
                           json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["version"][:2] == [3, 11] and out["foreign"] == ["slimyolo"]
    for case, (_, message) in HOSTILE_MEMBERS.items():
        status, text = out["results"][case]
        assert status == "refused" and message in text, (case, text)
    assert out["results"]["good"][0] == "ok"
    assert sorted(p.name for p in (tmp_path / f"out{len(HOSTILE_MEMBERS)}").iterdir()) == sorted(
        p.name for p in data_set.iterdir())


# -- the services ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The pruner and trainer servicers on 127.0.0.1 over a local store: (store, work dir, channels by stage)."""
    import slimyolo.services.pruner as pruner
    import slimyolo.services.trainer as trainer

    root = tmp_path_factory.mktemp("services")
    (root / "secret.txt").write_text(SECRET + "\n")
    store = LocalStore(root / "store")
    servers, channels = [], {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMYOLO_STORE", str(store.root))
        mp.setenv("SLIMYOLO_WORK_DIR", str(root / "work"))
        try:
            for name, module in (("pruner", pruner), ("trainer", trainer)):
                server = Server(name, ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
                module.build(server, argparse.Namespace())
                server.start()
                servers.append(server)
                channels[name] = connect(f"127.0.0.1:{server.port}")
            yield store, root, channels
        finally:
            for channel in channels.values():
                channel.close()
            for server in servers:
                server.stop(5)


@pytest.fixture(scope="module")
def model_refs(services, tmp_path_factory):
    """A cfg and some weights bytes: enough for a prune job to reach its data set."""
    from conftest import MINI_CFG

    store, _, _ = services
    folder = tmp_path_factory.mktemp("model")
    (folder / "mini.cfg").write_text(MINI_CFG)
    (folder / "mini.weights").write_bytes(b"\0" * 64)
    return tuple(dataclasses.asdict(store.put_file(folder / name)) for name in ("mini.cfg", "mini.weights"))


def _request(kind: str, doc: dict) -> Any:
    """The Start... request of stage ``kind`` carrying the spec ``doc`` as it is (not checked here)."""
    return start_messages(KINDS[kind])[0](spec=dict_to_struct(doc))


def _prune_doc(model_refs, data: dict | None = None, **fields) -> dict:
    cfg, weights = model_refs
    return {"cfg": cfg, "weights": weights, **({"data": data} if data else {}), "out": f"runs/p-{uuid.uuid4().hex}",
            "global_percent": 0.5, **fields}


def _prune(model_refs, data: dict | None = None, **fields) -> pruner_pb2.StartPruneRequest:
    return _request("prune", _prune_doc(model_refs, data, **fields))


def _refused(call, request) -> str:
    """The details of a call refused with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


def _assert_clean(message: str, root: Path) -> None:
    """No file content from outside the data set, no server-local path."""
    for leak in (PASSWD, SECRET, str(root), "slimyolo-stage-", "/tmp/"):
        assert leak not in message, (leak, message)


def _archive_ref(store, path: Path, data_file: str = "synth.data") -> dict:
    return {"archive": dataclasses.asdict(store.put_file(path)), "data_file": data_file}


@pytest.mark.parametrize("data_file", ["/etc/passwd", "../../../../etc/passwd", "synth/../../secret.txt"])
def test_a_data_file_outside_the_data_set_is_refused_at_submission(services, model_refs, data_set, tmp_path,
                                                                   data_file):
    store, root, channels = services
    data = _archive_ref(store, _tar(tmp_path / "d.tar", [], folder=data_set), data_file)
    message = _refused(pruner_pb2_grpc.PrunerStub(channels["pruner"]).StartPrune, _prune(model_refs, data))
    assert "'data'.data_file" in message and "relative path inside the data set" in message
    _assert_clean(message, root)


def _data_text(names: str = "synth.names", train: str = "train.txt", valid: str = "valid.txt") -> bytes:
    return f"classes = 2\ntrain = {train}\nvalid = {valid}\nnames = {names}\n".encode()


# Data sets whose archive or .data file leads out: (extra members, the .data file's text, what the error names).
# The data set lies in <root>/work/slimyolo-stage-*/inputs/data-1, so ../../../../secret.txt is the secret file.
LEADING_OUT = {
    "names absolute": ([], _data_text(names="/etc/passwd"), "'names' names '/etc/passwd', an absolute path"),
    "names relative": ([], _data_text(names="../../../../../../../../etc/passwd"), "'names' names '../../"),
    "names to the secret": ([], _data_text(names="../../../../secret.txt"), "'names' names '../../../../secret.txt'"),
    "train absolute": ([], _data_text(train="/etc/hostname"), "'train' names '/etc/hostname', an absolute path"),
    "valid relative": ([], _data_text(valid="../../../../secret.txt"), "'valid' names '../../../../secret.txt'"),
    "list entry out": ([_member("evil.txt", b"images/train/000000.jpg\n../../../../secret.txt\n")],
                       _data_text(train="evil.txt"), "evil.txt:2: an image of 'train' names '../../../../secret.txt'"),
    "symlink member": ([_member("link.names", kind=tarfile.SYMTYPE, link="/etc/passwd")],
                       _data_text(names="link.names"), "member 'link.names' links to the absolute path '/etc/passwd'"),
    "hardlink member": ([_member("link.names", kind=tarfile.LNKTYPE, link="../../../../secret.txt")],
                        _data_text(names="link.names"), "member 'link.names' links to '../../../../secret.txt'"),
    "absolute member": ([_member("/etc/slimyolo-evil", b"x")], _data_text(),
                        "member '/etc/slimyolo-evil' is an absolute"),
    "dotdot member": ([_member("../../evil", b"x")], _data_text(), "member '../../evil' leads out"),
}


@pytest.mark.parametrize("case", list(LEADING_OUT))
def test_a_data_set_that_leads_out_fails_its_job_naming_the_key(services, model_refs, data_set, tmp_path, case):
    store, root, channels = services
    extra, data_text, expected = LEADING_OUT[case]
    folder = shutil.copytree(data_set, tmp_path / "set")
    (folder / "synth.data").write_bytes(data_text)
    data = _archive_ref(store, _tar(tmp_path / "d.tar", extra, folder=folder))
    job = pruner_pb2_grpc.PrunerStub(channels["pruner"]).StartPrune(_prune(model_refs, data), timeout=30).job
    with pytest.raises(SlimYoloError) as err:
        follow_job(channels["pruner"], job.id)
    final = jobs_pb2_grpc.JobsStub(channels["pruner"]).GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=30).job
    assert final.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], final.error.message
    assert final.error.message.startswith("data"), final.error.message
    assert expected in final.error.message
    _assert_clean(str(err.value), root)
    assert not list((root / "work").iterdir())  # the job's work folder went with it


# -- numbers and names the request alone shows wrong --------------------------------------------------------


def test_unknown_enums_and_non_finite_numbers_are_refused_at_submission_as_the_cli_refuses_them(
        services, model_refs, data_set, tmp_path, run_cli, monkeypatch):
    store, _, channels = services
    pruner = pruner_pb2_grpc.PrunerStub(channels["pruner"])
    data = _archive_ref(store, _tar(tmp_path / "d.tar", [], folder=data_set))
    asked = {
        "method": _refused(pruner.StartPrune, _prune(model_refs, data, method=99)),
        "global_percent": _refused(pruner.StartPrune, _prune(model_refs, global_percent=math.nan)),
        "batch_size": _refused(pruner.StartPrune, _prune(model_refs, data, batch_size=math.nan)),
    }
    # The CLI, given the same values in a YAML spec, says the same after the source.
    monkeypatch.setenv("SLIMYOLO_STORE", str(store.root))
    for field, value in (("method", 99), ("global_percent", math.nan), ("batch_size", math.nan)):
        doc = {"weights": "w/x.weights", "out": "runs/p", "global_percent": 0.5, field: value}
        (tmp_path / "prune.yaml").write_text(yaml.safe_dump(doc))
        code, _, err = run_cli("stage", "prune", "--spec", tmp_path / "prune.yaml")
        assert code == 2
        request_message = asked[field].split(": ", 1)[1]
        assert request_message in err and f"'{field}'" in request_message, (err, asked[field])
    assert "must be a finite number, got nan" in asked["global_percent"]
    message = _refused(pruner.StartPrune, _prune(model_refs, method="slice"))
    assert "'method' must be one of channel, layer, both, got 'slice'" in message
    training = _request("train", {"cfg": model_refs[0], "data": data, "out": "runs/t",
                                  "augment": {"mosaic": math.inf}})
    message = _refused(trainer_pb2_grpc.TrainerStub(channels["trainer"]).StartTraining, training)
    assert "'augment.mosaic' must be a finite number, got inf" in message


@pytest.mark.parametrize(("out", "message"), [
    ("runs/" + "x" * 800, "is too long; an output prefix has at most 768 bytes"),
    ("runs/a/" + "y" * 300, "a segment of 300 bytes is too long"),
])
def test_an_output_prefix_too_long_for_the_store_is_refused_at_submission(services, model_refs, out, message):
    _, _, channels = services
    details = _refused(pruner_pb2_grpc.PrunerStub(channels["pruner"]).StartPrune, _prune(model_refs, out=out))
    assert details.startswith("prune spec: 'out'") and message in details
