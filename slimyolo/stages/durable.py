"""Durable stages: a stage keyed by its ``out`` resumes, or returns its result, instead of redoing work.

A stage's published tree holds ``stage.json``: the stage's kind, the schema version of its spec,
its spec (every field, defaults included), the spec's digest and the result's metrics. Starting a
stage whose ``out`` already holds a complete tree therefore has three outcomes (:func:`finished`):

- the same spec: the stored result is returned at once, without work, byte for byte the result
  of the run that published it (artifacts from the tree's manifest, metrics from ``stage.json``);
- another spec: :class:`~slimyolo.errors.FailedPrecondition` naming the fields that differ, so a
  changed setting never silently reuses (or overwrites) an old result;
- a tree without ``stage.json`` (published by hand, or by an older SlimYOLO): refused too.

"The same spec" survives upgrades (:func:`same_spec`): the digest covers only the fields that
differ from their defaults (:func:`canonical`) and the spec class's ``schema`` version, which
changes only when a field's meaning does. A spec that writes a default out and one that leaves it
unset are the same spec; a field added later with a default leaves every stored result and
checkpoint valid. A ``stage.json`` whose digest was made another way (an earlier SlimYOLO hashed
every field, defaults included, and wrote no ``schema``) is matched by its spec instead: both
specs without their defaults, compared.

While it runs, the train stage publishes its resumable state after every epoch as the tree
``<out>/checkpoints/epoch-NNNNN`` (:class:`Checkpoints`): the run folder (``last.pt`` with the
raw and EMA weights, optimizer, EMA count, best fitness and results so far; ``best.pt``;
``results.csv``; ``config.yaml``) and a ``stage.json`` with the spec's digest and the epoch; with
the training setting ``checkpoint_steps: N`` also every N steps inside an epoch, as
``epoch-NNNNN-step-SSSSSS`` (the completed epochs, the steps into the next one).
A tree is complete only once its ``SHA256SUMS`` is written, last, so a reader (and a restarted
stage) sees the previous checkpoint or the new one, never a partial one; the older checkpoint
is removed once the new one is complete, and all of them once the stage's own tree is. The sweep
publishes ``<out>/checkpoints/point-NNNNN`` after each evaluated point (``points.json``: every row so
far); started again it takes those rows as they are and evaluates only the points after them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimyolo.errors import FailedPrecondition
from slimyolo.progress import (
    Event,
    Progress,
    StageStep,
    SweepPoint,
    SweepRow,
    TrainEpoch,
    TrainStep,
    event_from_dict,
    event_to_dict,
)
from slimyolo.stages.specs import Spec
from slimyolo.store import MANIFEST, Artifact, Store

STAGE_FILE = "stage.json"
CHECKPOINTS = "checkpoints"
POINTS_FILE = "points.json"


def _without_defaults(cls: type, doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` (a spec of class ``cls`` as YAML/JSON data) without the values its class has by default; in a
    section of settings (a mapping, such as a training spec's ``augment``) without the keys at their defaults."""
    defaults, out = cls.defaults(), {}
    for name, value in doc.items():
        default = defaults.get(name, dataclasses.MISSING)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            value = {k: v for k, v in value.items() if k not in default or default[k] != v}
            if value:
                out[name] = value
        elif value != default:
            out[name] = value
    return out


def canonical(spec: Spec) -> dict[str, Any]:
    """The spec's fields that differ from their defaults, as YAML/JSON data: what identifies the spec."""
    return _without_defaults(type(spec), spec.to_dict())


def spec_digest(spec: Spec) -> str:
    """sha256 of the spec's canonical JSON: its kind, its schema version and the fields that differ from their
    defaults (key order irrelevant), so that neither writing a default out nor a field added later with a
    default changes it."""
    doc = {"kind": spec.kind, "schema": type(spec).schema, "spec": canonical(spec)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def same_spec(doc: Mapping[str, Any], spec: Spec) -> bool:
    """Whether ``doc`` (a ``stage.json``) was written for ``spec``: the same kind and schema version, and the same
    digest, or (a digest made another way, by an earlier SlimYOLO) the same fields once their defaults are
    dropped."""
    if doc.get("kind") != spec.kind or doc.get("schema", 1) != type(spec).schema:
        return False
    if doc.get("digest") == spec_digest(spec):
        return True
    stored = doc.get("spec")
    return isinstance(stored, Mapping) and _without_defaults(type(spec), stored) == canonical(spec)


def json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's metrics as plain JSON values (NumPy/torch scalars and arrays become numbers and lists, paths
    strings), so that neither ``stage.json`` nor a job's record fails after the work is done."""

    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"metric value {value!r} ({type(value).__name__}) is not JSON-serialisable")

    if not isinstance(metrics, Mapping):
        raise TypeError(f"a stage's metrics are a dict, got {type(metrics).__name__}")
    return json.loads(json.dumps(dict(metrics), default=default))


def write_stage_file(folder: Path, spec: Spec, metrics: Mapping[str, Any] | None = None,
                     **extra: Any) -> None:
    """Write ``stage.json`` into a folder about to be published as the stage's tree (or a checkpoint)."""
    doc = {"kind": spec.kind, "schema": type(spec).schema, "digest": spec_digest(spec), "spec": spec.to_dict(),
           **extra}
    if metrics is not None:
        doc["metrics"] = json_safe(metrics)
    (folder / STAGE_FILE).write_text(json.dumps(doc, indent=1) + "\n")  # key order kept: a replay prints the same JSON


def read_stage_file(store: Store, prefix: str, files: Mapping[str, Artifact]) -> dict[str, Any] | None:
    """The ``stage.json`` of the complete tree ``prefix`` (its manifest ``files``), None if it has none."""
    if STAGE_FILE not in files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = store.fetch(files[STAGE_FILE], Path(tmp) / STAGE_FILE, f"{store.uri_of(prefix)}/{STAGE_FILE}")
        return json.loads(path.read_text())


def differing_fields(cls: type, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The fields whose values differ between two specs' dicts of the spec class ``cls``, as ``name: old → new``
    (a field left unset counts as its default)."""
    defaults = cls.defaults()
    old, new = {**defaults, **stored}, {**defaults, **wanted}

    def text(doc: Mapping[str, Any], name: str) -> str:
        return json.dumps(doc[name]) if name in doc else "(not set)"

    return [f"{name}: {text(old, name)} → {text(new, name)}" for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name) or (name in old) != (name in new)]


def check_same_spec(store: Store, prefix: str, doc: Mapping[str, Any] | None, spec: Spec, field: str,
                    what: str) -> None:
    """FailedPrecondition unless ``doc`` (a stage.json) was written for this very spec (:func:`same_spec`)."""
    where = store.uri_of(prefix)
    if doc is None:
        raise FailedPrecondition(f"{field}: {where} already holds {what} that no stage published (no {STAGE_FILE}); "
                                 "choose a new one")
    if not same_spec(doc, spec):
        changes = differing_fields(type(spec), doc.get("spec", {}), spec.to_dict())
        if doc.get("kind") == spec.kind and doc.get("schema", 1) != type(spec).schema:
            changes.append(f"schema: {doc.get('schema', 1)} → {type(spec).schema}")
        raise FailedPrecondition(f"{field}: {where} holds {what} of another {spec.kind} spec (differs in "
                                 f"{'; '.join(changes) or 'its kind'}); give the same spec to resume or reuse "
                                 "it, or choose a new one")


def finished(store: Store, prefix: str, spec: Spec, roles: Callable[[dict[str, Artifact]], dict[str, Artifact]],
             field: str = "out", progress: Progress | None = None) -> tuple[dict[str, Artifact], dict] | None:
    """(artifacts, metrics) of the stage already published at ``prefix`` for ``spec``; None when there is none.

    A tree published for another spec, or by something other than a stage, is refused
    (:class:`FailedPrecondition`). ``roles`` maps the tree's files to the result's roles.
    """
    if not store.exists(f"{prefix}/{MANIFEST}"):
        return None
    files = store.tree_files(prefix)
    doc = read_stage_file(store, prefix, files)
    check_same_spec(store, prefix, doc, spec, field, "a complete tree")
    assert doc is not None
    if progress is not None:
        progress(StageStep(spec.kind, "finished already", {"out": store.uri_of(prefix)}))
    return roles(files), dict(doc["metrics"])


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint tree of a stage: its prefix and how far it got: ``epoch`` units (epochs,
    sweep points) and ``step`` steps into the next epoch (``checkpoint_steps``, long epochs)."""

    prefix: str
    epoch: int
    step: int = 0

    def details(self) -> dict[str, int | str]:
        """What a progress line says of it: ``epoch 2, key …`` (``step`` too when inside an epoch)."""
        return {"epoch": self.epoch, **({"step": self.step} if self.step else {}), "key": self.prefix}


class Checkpoints:
    """A stage's checkpoints under ``<out>/checkpoints/<unit>-NNNNN``: publish, find the newest, remove.

    ``unit`` names what a checkpoint counts: ``epoch`` (training), ``point`` (a sweep's evaluated points).
    """

    def __init__(self, store: Store, out: str, spec: Spec, unit: str = "epoch") -> None:
        self.store, self.out, self.spec, self.unit = store, out, spec, unit
        self.root = f"{out}/{CHECKPOINTS}"

    def complete(self) -> list[Checkpoint]:
        """The complete checkpoint trees, oldest first."""
        found = []
        for prefix in self.store.list_trees(self.root):
            name = re.fullmatch(rf"{self.unit}-(\d+)(?:-step-(\d+))?", prefix.rsplit("/", 1)[1])
            if name:
                found.append(Checkpoint(prefix, int(name[1]), int(name[2] or 0)))
        return sorted(found, key=lambda c: (c.epoch, c.step))

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, refused (FailedPrecondition) if another spec wrote it."""
        done = self.complete()
        if not done:
            return None
        newest = done[-1]
        files = self.store.tree_files(newest.prefix)
        check_same_spec(self.store, newest.prefix, read_stage_file(self.store, newest.prefix, files), self.spec,
                        "out", "a checkpoint")
        return newest

    def restore(self, checkpoint: Checkpoint, dest: Path) -> None:
        """Download a checkpoint's run folder into the new folder ``dest`` (every file verified)."""
        files = {rel: a for rel, a in self.store.tree_files(checkpoint.prefix).items() if rel != STAGE_FILE}
        self.store.get_files(files, dest, self.store.uri_of(checkpoint.prefix))

    def publish(self, run_dir: Path, epoch: int, staging: Path, step: int = 0) -> Checkpoint:
        """Publish ``run_dir`` (as it is after ``epoch`` units and ``step`` steps of the next) as a
        checkpoint tree, then drop the older ones.

        The files are hard-linked into ``staging`` first: the trainer replaces them by rename,
        never in place, so the tree's manifest and bytes agree even if the next epoch's files
        appear meanwhile. TensorBoard's event files are left out (appended in place by a
        background thread; a resumed run starts a new one).
        """
        shutil.rmtree(staging, ignore_errors=True)
        for path in sorted(run_dir.rglob("*")):
            rel = path.relative_to(run_dir)
            if not path.is_file() or rel.parts[0] == "tensorboard":
                continue
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, staging / rel)
            except OSError:  # another file system: copy
                shutil.copy2(path, staging / rel)
        write_stage_file(staging, self.spec, **{self.unit: epoch, "step": step})
        prefix = f"{self.root}/{self.unit}-{epoch:05d}" + (f"-step-{step:06d}" if step else "")
        if not self.store.exists(f"{prefix}/{MANIFEST}"):
            self.store.put_tree(prefix, staging)
        shutil.rmtree(staging, ignore_errors=True)
        for old in self.complete():
            if (old.epoch, old.step) < (epoch, step):
                self.store.delete_tree(old.prefix)
        return Checkpoint(prefix, epoch, step)

    def on_point(self, folder: Path, staging: Path, progress: Progress | None, done: int) -> Progress:
        """A progress callback for a sweep: after each newly evaluated point, publish every point so far
        (``points.json``) as a checkpoint, then pass the events on. ``done``: the points an earlier
        run had published (the sweep repeats them without evaluating)."""
        rows: list[SweepRow] = []
        folder.mkdir(parents=True, exist_ok=True)

        def callback(event: Event) -> None:
            if isinstance(event, SweepPoint):
                rows.append(event.row)
                if len(rows) > done:
                    (folder / POINTS_FILE).write_text(json.dumps([event_to_dict(SweepPoint(r)) for r in rows]))
                    self.publish(folder, len(rows), staging)
            if progress is not None:
                progress(event)

        return callback

    def points(self, checkpoint: Checkpoint) -> list[SweepRow]:
        """The sweep rows a point checkpoint holds, in the order they were evaluated."""
        files = self.store.tree_files(checkpoint.prefix)
        with tempfile.TemporaryDirectory() as tmp:
            path = self.store.fetch(files[POINTS_FILE], Path(tmp) / POINTS_FILE, self.store.uri_of(checkpoint.prefix))
            events = [event_from_dict(doc) for doc in json.loads(path.read_text())]
        return [e.row for e in events if isinstance(e, SweepPoint)]

    def remove_all(self) -> None:
        """Remove every checkpoint tree (the stage's own tree is complete; they are no longer needed)."""
        for old in self.complete():
            self.store.delete_tree(old.prefix)

    def on_epoch(self, run_dir: Path, staging: Path, progress: Progress | None, every_steps: int = 0) -> Progress:
        """A progress callback that publishes a checkpoint at the end of every epoch but the last (the
        stage's own tree follows it) and, with ``every_steps`` (the trainer's ``checkpoint_steps``,
        which saves ``last.pt`` just before reporting those steps), every that many steps inside an
        epoch; then passes the events on."""
        def callback(event: Event) -> None:
            checkpoint = None
            if isinstance(event, TrainEpoch) and event.epoch < event.epochs:
                checkpoint = self.publish(run_dir, event.epoch, staging)
            elif isinstance(event, TrainStep) and every_steps and event.step % every_steps == 0 \
                    and event.step < event.steps:
                checkpoint = self.publish(run_dir, event.epoch - 1, staging, event.step)
            if progress is not None:
                progress(event)
                if checkpoint is not None:
                    progress(StageStep("train", "checkpoint", checkpoint.details()))

        return callback

