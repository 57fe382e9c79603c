"""Which service runs each stage: the one table the servers, the client and the jobs share.

A stage kind (``train``, ``eval``, ``prune``, ``sweep``, ``convert``) is served by one service
(``trainer``, ``pruner``, ``converter``: the name of ``slimyolo serve <service>``, of its image
and of its address variable), whose gRPC service (``slimyolo.v1.Trainer``, ...) has one Start...
method for it; the job it starts has the kind the protos name (``evaluate`` for ``eval``). The
servicers (:mod:`slimyolo.services`) register under :func:`grpc_service`, the client
(:class:`slimyolo.rpc.stages.RemoteRunner`) calls :attr:`Route.method` of that service, and
:func:`slimyolo.stages.jobs.submit_stage` names the job :attr:`Route.job_kind`. Plain strings:
nothing here imports gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    service: str  # the service that runs the stage: trainer, pruner, converter
    grpc_service: str  # its gRPC service's full name: slimyolo.v1.Trainer, ...
    method: str  # the Start... method of that service for this stage
    job_kind: str  # the kind of the job it starts (common.proto's Job.kind)


ROUTES: dict[str, Route] = {
    "train": Route("trainer", "slimyolo.v1.Trainer", "StartTraining", "train"),
    "eval": Route("trainer", "slimyolo.v1.Trainer", "StartEvaluation", "evaluate"),
    "prune": Route("pruner", "slimyolo.v1.Pruner", "StartPrune", "prune"),
    "sweep": Route("pruner", "slimyolo.v1.Pruner", "StartSweep", "sweep"),
    "convert": Route("converter", "slimyolo.v1.Converter", "StartConversion", "convert"),
}


def grpc_service(service: str) -> str:
    """The gRPC service full name of the stage service ``service`` (``trainer`` → ``slimyolo.v1.Trainer``)."""
    names = {route.grpc_service for route in ROUTES.values() if route.service == service}
    if len(names) != 1:
        raise KeyError(f"{service!r} is not a stage service ({', '.join(stage_services())})")
    return names.pop()


def stage_services() -> tuple[str, ...]:
    """The services that run stages, in the order of the table: trainer, pruner, converter."""
    return tuple(dict.fromkeys(route.service for route in ROUTES.values()))
