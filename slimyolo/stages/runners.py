"""The stage runners: fetch a spec's inputs, run the core function, publish its outputs.

One function per stage kind, ``run_<kind>(store, spec, progress) -> StageResult``, named by its entry in
:data:`slimyolo.stages.kinds.KINDS` (which runs it: :func:`~slimyolo.stages.kinds.run_stage`). The servicers
run them inside a job, ``slimyolo stage`` runs them as a batch Job, the pipeline runs them in
process; all three get the same files, numbers and errors. ``progress`` receives the core
function's own events (:mod:`slimyolo.progress`: training steps and epochs, sweep rows,
conversion and prune steps, evaluation counts); raising
:class:`~slimyolo.errors.Cancelled` there stops the run, and nothing is published.

The training stage is DDP-aware (``torchrun ... -m slimyolo stage train``): every rank fetches
its inputs into its own work folder and trains; only rank 0 uploads.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.progress import Progress, StageStep
from slimyolo.stages.durable import STAGE_FILE, Checkpoints, finished, read_stage_file, same_spec, write_stage_file
from slimyolo.stages.specs import ConvertSpec, EvalSpec, PruneSpec, Spec, SweepSpec, TrainSpec
from slimyolo.stages.workspace import Workspace
from slimyolo.store import MANIFEST, Artifact, Store, next_version

# Output files of each stage, by the role the result names them with.
TRAIN_ROLES = {"cfg": "model.cfg", "weights": "best.weights", "checkpoint": "best.pt", "last": "last.pt",
               "results": "results.csv", "config": "config.yaml"}
PRUNE_ROLES = {"cfg": "pruned.cfg", "weights": "pruned.weights", "checkpoint": "pruned.pt", "summary": "summary.json"}
SWEEP_ROLES = {"sweep": "sweep.json", "csv": "sweep.csv", "plot": "sweep.png",
               **{role: f"best/{name}" for role, name in PRUNE_ROLES.items()}}


@dataclass(frozen=True)
class StageResult:
    """What a stage produced: its published files by role, and its numbers (plain JSON values)."""

    artifacts: Mapping[str, Artifact] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


def model_repository(configured: str | None = None, field: str = "model_repository") -> str:
    """The store prefix the converter publishes under: ``configured``, else the one the inference service reads.

    That is ``$SLIMYOLO_MODEL_REPOSITORY`` as a key prefix of the store, else ``models``: the two
    services agree by reading the same setting (:func:`slimyolo.serving.repository.store_prefix`).
    """
    from slimyolo.serving.repository import store_prefix

    return store_prefix(configured, os.environ, field)


def _roles(files: Mapping[str, Artifact], roles: Mapping[str, str]) -> dict[str, Artifact]:
    return {role: files[name] for role, name in roles.items() if name in files}


def _model_inputs(ws: Workspace, spec: Spec) -> tuple[Path | None, Path]:
    """(cfg or None, weights) of a spec, fetched; without a cfg the weights must be a .pt holding one."""
    weights = ws.file(spec.weights, "weights", "model.weights")
    cfg = ws.file(spec.cfg, "cfg", "model.cfg") if spec.cfg is not None else None
    if cfg is None:
        from slimyolo.darknet.weights import is_checkpoint

        if not is_checkpoint(weights):
            raise SlimYoloError("cfg: required with darknet .weights (only a .pt checkpoint holds its cfg)")
    return cfg, weights


def run_train(store: Store, spec: TrainSpec, progress: Progress | None = None) -> StageResult:
    """Train as ``spec.options`` says and publish the run folder under ``spec.out``.

    The published tree is the run folder (``config.yaml``, ``best.pt``, ``last.pt``,
    ``results.csv``, TensorBoard logs) plus ``model.cfg`` and ``best.weights`` in darknet's
    layout, so every later stage (and darknet itself) can read the result.

    Durable (:mod:`slimyolo.stages.durable`): every epoch but the last publishes a checkpoint
    under ``<out>/checkpoints/``; a stage started again with the same spec resumes from the newest
    one (``resumed_from_epoch`` in the metrics; the same weights as an uninterrupted run) or, once
    ``out`` holds the result, returns it without training.
    """
    from slimyolo.darknet.weights import checkpoint_cfg
    from slimyolo.train.config import TrainConfig
    from slimyolo.train.trainer import train

    spec.check()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    done = finished(store, spec.out, spec, lambda files: _roles(files, TRAIN_ROLES), progress=progress)
    if done is not None:
        return StageResult(*done)
    checkpoints = Checkpoints(store, spec.out, spec)
    latest = checkpoints.latest()
    with Workspace(store) as ws:
        run_dir = ws.root / "run"
        if latest is not None:
            checkpoints.restore(latest, run_dir)
            if progress is not None:
                progress(StageStep("train", "resume", latest.details()))
        doc: dict[str, Any] = {**spec.options, "data": str(ws.data(spec.data, "data")), "out": str(run_dir),
                               "save_weights": True}
        if spec.cfg is not None:
            doc["cfg"] = str(ws.file(spec.cfg, "cfg", "model.cfg"))
        if spec.weights is not None:
            doc["weights"] = str(ws.file(spec.weights, "weights", "init.weights"))
        if spec.weights_cfg is not None:
            doc["weights_cfg"] = str(ws.file(spec.weights_cfg, "weights_cfg", "weights.cfg"))
        if spec.teacher_weights is not None:
            doc["teacher_weights"] = str(ws.file(spec.teacher_weights, "teacher_weights", "teacher.weights"))
        if spec.teacher_cfg is not None:
            doc["teacher_cfg"] = str(ws.file(spec.teacher_cfg, "teacher_cfg", "teacher.cfg"))
        config = TrainConfig.from_dict(doc, "train spec")
        callback = checkpoints.on_epoch(run_dir, ws.root / "checkpoint", progress,
                                        config.checkpoint_steps) if main_rank else progress
        result = train(config, callback, resume=latest is not None)
        metrics = {"epochs": result.epochs, "best_map50": result.best_map50, "images_per_s": result.images_per_s,
                   "elapsed_s": result.elapsed_s, "resumed_from_epoch": latest.epoch if latest else 0,
                   "resumed_from_step": latest.step if latest else 0,
                   "last_eval": {k: v for k, v in result.metrics.items() if k != "per_class"}}
        if not main_rank:  # only rank 0 writes the run folder
            return StageResult(metrics=metrics)
        metrics["gamma_below_0.01"] = _last_gamma_fraction(result.results_csv)
        metrics["out"] = store.uri_of(spec.out)
        checkpoint_cfg(result.best).write(run_dir / TRAIN_ROLES["cfg"])
        write_stage_file(run_dir, spec, metrics)
        files = ws.publish(spec.out, run_dir)
    checkpoints.remove_all()
    return StageResult(_roles(files, TRAIN_ROLES), metrics)


def _last_gamma_fraction(results_csv: Path) -> float:
    """The fraction of prunable |γ| below 0.01 after the last epoch (how far sparsity training went)."""
    with results_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["gamma_below_0.01"]) if rows else 0.0


def run_eval(store: Store, spec: EvalSpec, progress: Progress | None = None) -> StageResult:
    """P, R, mAP@0.5 and F1 on the validation split, and the model's layers, params, BFLOPs, .weights bytes."""
    from slimyolo.darknet.flops import model_stats
    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import checkpoint_cfg
    from slimyolo.train.evaluate import evaluator
    from slimyolo.train.options import EvalOptions

    with Workspace(store) as ws:
        data = ws.data(spec.data, "data")
        cfg, weights = _model_inputs(ws, spec)
        model = load_model(cfg if cfg is not None else checkpoint_cfg(weights), weights, spec.img_size)
        result = evaluator(data, EvalOptions.taken_from(spec), progress)(model)
    stats = model_stats(model.cfg, *model.input_size)
    return StageResult(metrics={**result.as_dict(), "model": stats.as_dict()})


def run_prune(store: Store, spec: PruneSpec, progress: Progress | None = None) -> StageResult:
    """Prune at one point, publish ``pruned.cfg``/``.weights``/``.pt``/``summary.json`` under ``spec.out``."""
    from slimyolo.data.dataset import read_data_file
    from slimyolo.prune import PruneOptions, open_model, prune
    from slimyolo.train.evaluate import evaluator
    from slimyolo.train.options import EvalOptions

    done = finished(store, spec.out, spec, lambda files: _roles(files, PRUNE_ROLES), progress=progress)
    if done is not None:
        return StageResult(*done)
    options = PruneOptions.taken_from(spec)
    with Workspace(store) as ws:
        cfg, weights = _model_inputs(ws, spec)
        score = evaluator(read_data_file(ws.data(spec.data, "data")), EvalOptions.taken_from(spec)) \
            if spec.data is not None else None
        model = open_model(cfg, weights)

        def measure(m: Any, when: str) -> dict[str, Any] | None:
            if score is None:
                return None
            if progress is not None:
                progress(StageStep("prune", f"evaluate {when}"))
            r = score(m)
            return {"precision": r.precision, "recall": r.recall, "map50": r.map50, "f1": r.f1}

        before = measure(model, "before")
        if progress is not None:
            progress(StageStep("prune", options.method))
        result = prune(model, options)
        after = measure(result.model, "after")
        summary = {k: v for k, v in result.summary().items() if k != "channels"}
        if before is not None:
            summary.update(eval_before=before, eval_after=after)
        metrics = {**summary, "out": store.uri_of(spec.out)}
        out = ws.root / "pruned"
        result.save(out)
        write_stage_file(out, spec, metrics)
        files = ws.publish(spec.out, out)
    return StageResult(_roles(files, PRUNE_ROLES), metrics)


def run_sweep(store: Store, spec: SweepSpec, progress: Progress | None = None) -> StageResult:
    """Search the best pruning point; publish sweep.json/.csv/.png and ``best/`` (the pruned model there).

    A speed budget that no point reaches (objective accuracy) fails the stage (FailedPrecondition: the model
    cannot meet it on that CPU) and publishes nothing: a published tree is a finished stage, which a retried
    Job would return as a success. The timed points stay in the sweep's checkpoint, so a retry of the same
    spec fails again at once, without timing them again. With ``measure_on`` the points are timed by that
    inference service through this stage's store, which the service must read its models from.
    """
    from slimyolo.data.dataset import read_data_file
    from slimyolo.errors import FailedPrecondition
    from slimyolo.prune import SweepOptions, open_model
    from slimyolo.prune.sweep import fps_meter, point_key, sweep
    from slimyolo.train.evaluate import evaluator
    from slimyolo.train.options import EvalOptions

    done = finished(store, spec.out, spec, lambda files: _roles(files, SWEEP_ROLES), progress=progress)
    if done is not None:
        return StageResult(*done)
    checkpoints = Checkpoints(store, spec.out, spec, unit="point")
    latest = checkpoints.latest()
    known = {point_key(row): row for row in (checkpoints.points(latest) if latest is not None else [])}
    if known and progress is not None:
        progress(StageStep("sweep", "resume", {"points": len(known), "key": latest.prefix}))
    options = SweepOptions.taken_from(spec)
    meter = fps_meter(options, store)  # an unreachable service or a missing OpenVINO fails before any download
    with Workspace(store) as ws:
        cfg, weights = _model_inputs(ws, spec)
        score = evaluator(read_data_file(ws.data(spec.data, "data")), EvalOptions.taken_from(spec))
        model = open_model(cfg, weights)
        publish = checkpoints.on_point(ws.root / "points", ws.root / "checkpoint", progress, len(known))
        result, best = sweep(model, score, options, progress=publish, measure_fps=meter, known=known)
        unmet = result.unmet()
        if unmet is not None:
            raise FailedPrecondition(f"{unmet} (nothing is published under {store.uri_of(spec.out)})")
        metrics = {**result.as_dict(), "points_reused": sum(point_key(r) in known for r in result.rows),
                   "out": store.uri_of(spec.out)}
        out = ws.root / "sweep"
        result.save(out, best)
        write_stage_file(out, spec, metrics)
        files = ws.publish(spec.out, out)
    checkpoints.remove_all()
    return StageResult(_roles(files, SWEEP_ROLES), metrics)


def run_convert(store: Store, spec: ConvertSpec, progress: Progress | None = None,
                repository: str | None = None) -> StageResult:
    """Convert, optionally evaluate and benchmark the IR, and publish it as ``<repository>/<name>/<version>``.

    The version folder is what the inference service's model repository serves; a version is
    never overwritten (a second conversion becomes the next version). The repository is the
    spec's ``model_repository``, else ``repository`` (the converter service's ``--model-repository``),
    else the one the inference service reads (:func:`model_repository`): resolved here, never
    written into the spec, so a spec has one digest in process and through the service.
    """
    from slimyolo.convert import ConvertOptions, convert

    repository = model_repository(spec.model_repository or repository)
    done = _converted(store, repository, spec, progress)
    if done is not None:
        return done
    with Workspace(store) as ws:
        versions = (tree.rsplit("/", 1)[1] for tree in store.list_trees(f"{repository}/{spec.name}"))
        version = spec.version or next_version(versions)
        prefix = f"{repository}/{spec.name}/{version}"
        cfg, weights = _model_inputs(ws, spec)
        calib = ws.data(spec.calib_data, "calib_data") if spec.calib_data is not None else None
        shown = ws.progress(progress)  # the steps name store keys and fields, not the work folder's paths
        result = convert(cfg, weights, ws.name(ws.root / "models", repository), ConvertOptions.taken_from(spec),
                         name=spec.name, version=version, calib_data=calib, progress=shown)
        summary = result.summary
        metrics: dict[str, Any] = {"name": spec.name, "version": version, "precision": spec.precision,
                                   "via": spec.via, "parity": summary["parity"], "int8": summary["int8"],
                                   "seconds": summary["seconds"], "model": store.uri_of(prefix),
                                   "bin_bytes": summary["files"]["model.bin"]["size_bytes"]}
        if spec.evaluate:
            assert calib is not None
            metrics["eval"] = evaluate_ir(result.path, calib, shown)
        if spec.bench_seconds:
            metrics["bench"] = bench_ir(result.path, spec.bench_seconds, shown, spec.bench_precision)
        write_stage_file(result.path, spec, metrics)
        files = ws.publish(prefix, result.path)
    return StageResult(_ir_files(files), metrics)


def _ir_files(files: Mapping[str, Artifact]) -> dict[str, Artifact]:
    """A model version's files as the convert result names them (every file but ``stage.json``)."""
    return {rel: a for rel, a in files.items() if rel != STAGE_FILE}


def _converted(store: Store, repository: str, spec: ConvertSpec, progress: Progress | None) -> StageResult | None:
    """The result of a version of the model converted from this very spec, if one was published.

    A retried conversion (a restarted Job, a client retrying after UNAVAILABLE) returns that
    version instead of publishing another. With an explicit ``version`` that holds another
    spec's model, FailedPrecondition names the fields that differ. A version that the converter
    service of an earlier SlimYOLO published names the repository it resolved in its spec: the
    spec without one, resolved to the same repository, is that spec.
    """
    model = f"{repository}/{spec.name}"
    alike = [spec] if spec.model_repository else [spec, dataclasses.replace(spec, model_repository=repository)]
    if spec.version:
        prefix = f"{model}/{spec.version}"
        found = store.exists(f"{prefix}/{MANIFEST}")
        doc = read_stage_file(store, prefix, store.tree_files(prefix)) if found else None
        match = next((s for s in alike if doc is not None and same_spec(doc, s)), spec)
        done = finished(store, prefix, match, _ir_files, "version", progress)
        return None if done is None else StageResult(*done)
    for prefix in reversed(store.list_trees(model)):
        doc = read_stage_file(store, prefix, store.tree_files(prefix))
        match = next((s for s in alike if doc is not None and same_spec(doc, s)), None)
        if match is not None:
            done = finished(store, prefix, match, _ir_files, "version", progress)
            return None if done is None else StageResult(*done)
    return None


def evaluate_ir(model_dir: Path, data: Path, progress: Progress | None = None) -> dict[str, Any]:
    """P, R, mAP@0.5 and F1 of what OpenVINO runs (an INT8 IR included) on the validation split."""
    from slimyolo.infer.engine import Engine
    from slimyolo.train.evaluate import evaluate_predictor

    if progress is not None:
        progress(StageStep("convert", "evaluate"))
    engine = Engine(model_dir)
    result = evaluate_predictor(engine.infer, engine.meta.heads, data, engine.input_size, progress=progress)
    return {k: v for k, v in result.as_dict().items() if k != "per_class"}


def bench_ir(model_dir: Path, seconds: float, progress: Progress | None = None,
             precision: str = "f32") -> dict[str, Any]:
    """OpenVINO throughput of the IR on this machine at ``precision`` (``default``: the device's choice):
    frames/s end to end and inference only, with the precision OpenVINO ran at and the CPU's flags."""
    from slimyolo.cpuinfo import cpu_info
    from slimyolo.infer.bench import run_bench

    if progress is not None:
        progress(StageStep("convert", "bench", {"seconds": seconds}))
    result = run_bench(model_dir, hint="throughput", seconds=seconds, precision=None if precision == "default"
                       else precision)
    return {"fps": result["fps"], "latency_ms": result["latency_ms"], "infer_fps": result["infer"]["fps"],
            "infer_latency_ms": result["infer"]["latency_ms"], "requests": result["requests"],
            "execution_precision": result["execution_precision"], "cpu": cpu_info()}
