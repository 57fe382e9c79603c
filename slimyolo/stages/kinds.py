"""The stage kinds, each declared once: its spec, its runner, the service that runs it and the names on the wire.

A stage kind (``train``, ``eval``, ``prune``, ``sweep``, ``convert``) is one :class:`StageKind`
entry of :data:`KINDS`: the spec class that reads and checks its YAML, gRPC and pipeline form
(:mod:`slimyolo.stages.specs`), the runner that does the work (:mod:`slimyolo.stages.runners`),
the service that runs it (``trainer``, ``pruner``, ``converter``: the name of ``slimyolo serve
SERVICE``, of its image and of its address variable), that service's gRPC service and its
Start... method for the kind. The job it starts is of the same kind (``common.proto``'s ``Job.kind``).
Everything else reads this table: :func:`parse_spec` and :func:`run_stage` here, ``slimyolo stage``
(:mod:`slimyolo.stages.cli`), the pipeline's list of services, and on the wire side the one
servicer of every stage service and the client (:mod:`slimyolo.rpc.stages`). Adding a stage kind
is one entry here plus its spec and its runner.

The gRPC names are the protos' and stay as they are: clients call them. A job's kind is its stage
kind (an ``eval`` job was an ``evaluate`` job in earlier versions). Plain strings: nothing here imports
gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimyolo.errors import SlimYoloError
from slimyolo.progress import Progress
from slimyolo.stages.runners import StageResult, run_convert, run_eval, run_prune, run_sweep, run_train
from slimyolo.stages.specs import ConvertSpec, EvalSpec, PruneSpec, Spec, SpecBase, SweepSpec, TrainSpec
from slimyolo.store import Store

Runner = Callable[[Store, Any, Progress | None], StageResult]


@dataclass(frozen=True)
class StageKind:
    """One stage kind: what reads it, what runs it, and who serves it under which names."""

    name: str  # the stage kind: slimyolo stage NAME, a pipeline step's kind, a spec's ``kind``
    spec: type[SpecBase]  # its fields, their checks and defaults, and its schema version
    runner: Runner  # run_<name>(store, spec, progress) -> StageResult
    service: str  # the service that runs it: trainer, pruner, converter
    grpc_service: str  # that service's full gRPC name: slimyolo.v1.Trainer, ...
    start: str  # the method of that gRPC service that starts it as a job: StartTraining, ...


KINDS: dict[str, StageKind] = {k.name: k for k in (
    StageKind("train", TrainSpec, run_train, "trainer", "slimyolo.v1.Trainer", "StartTraining"),
    StageKind("eval", EvalSpec, run_eval, "trainer", "slimyolo.v1.Trainer", "StartEvaluation"),
    StageKind("prune", PruneSpec, run_prune, "pruner", "slimyolo.v1.Pruner", "StartPrune"),
    StageKind("sweep", SweepSpec, run_sweep, "pruner", "slimyolo.v1.Pruner", "StartSweep"),
    StageKind("convert", ConvertSpec, run_convert, "converter", "slimyolo.v1.Converter", "StartConversion"),
)}

STAGE_SERVICES: tuple[str, ...] = tuple(dict.fromkeys(k.service for k in KINDS.values()))
"""The services that run stages, in the order of the table: trainer, pruner, converter."""

SERVICES: tuple[str, ...] = (*STAGE_SERVICES, "inference")
"""Every service of a deployment (``slimyolo serve SERVICE``, the images, the pipeline's ``remote``
addresses): the stage services, then the inference service, which serves the converted models."""


def address_variable(service: str) -> str:
    """The environment variable that gives a client the address of ``service`` (``SLIMYOLO_PRUNER_ADDRESS``)."""
    return f"SLIMYOLO_{service.upper()}_ADDRESS"


def kinds_of(service: str) -> list[StageKind]:
    """The stage kinds the stage service ``service`` runs, in the order of the table."""
    kinds = [k for k in KINDS.values() if k.service == service]
    if not kinds:
        raise KeyError(f"{service!r} is not a stage service ({', '.join(STAGE_SERVICES)})")
    return kinds


def parse_spec(kind: str, doc: Any, source: str | None = None) -> Spec:
    """The spec of stage ``kind`` ("train", "eval", "prune", "sweep", "convert") from YAML/JSON data.

    The one entry of every path (YAML file, gRPC request, pipeline), so all three accept the
    same values and refuse the same ones with the same message.
    """
    if kind not in KINDS:
        raise SlimYoloError(f"unknown stage {kind!r} (stages: {', '.join(KINDS)})")
    return KINDS[kind].spec.from_dict(doc if doc is not None else {}, source or f"{kind} spec")


def run_stage(store: Store, spec: Spec, progress: Progress | None = None) -> StageResult:
    """Run the stage ``spec`` describes (its kind's runner)."""
    return KINDS[spec.kind].runner(store, spec, progress)
