"""The pruner service: ``slimyolo.v1.Pruner`` (StartPrune, StartSweep) and ``slimyolo.v1.Jobs``.

A thin servicer: each Start... request becomes a stage spec (:mod:`slimyolo.stages.messages`) and a
job running the stage (:mod:`slimyolo.stages.runners`) against the artifact store of the
environment. Each sweep row is a progress event of the sweep job.
"""

from __future__ import annotations

import argparse

import grpc

from slimyolo.rpc.gen.v1 import pruner_pb2, pruner_pb2_grpc
from slimyolo.rpc.jobs import JobManager
from slimyolo.rpc.server import Server
from slimyolo.stages.jobs import rebuild_stage, submit_stage
from slimyolo.stages.messages import spec_from_request
from slimyolo.stages.routing import grpc_service
from slimyolo.stages.workspace import remove_stale_work_dirs
from slimyolo.store import Store, open_store

SERVICE = grpc_service("pruner")  # slimyolo.v1.Pruner (slimyolo.stages.routing)


class PrunerServicer(pruner_pb2_grpc.PrunerServicer):
    def __init__(self, store: Store, jobs: JobManager) -> None:
        self.store, self.jobs = store, jobs

    def StartPrune(self, request: pruner_pb2.StartPruneRequest,
                   context: grpc.ServicerContext) -> pruner_pb2.StartPruneResponse:
        spec = spec_from_request("prune", request)
        return pruner_pb2.StartPruneResponse(job=submit_stage(self.jobs, self.store, spec))

    def StartSweep(self, request: pruner_pb2.StartSweepRequest,
                   context: grpc.ServicerContext) -> pruner_pb2.StartSweepResponse:
        spec = spec_from_request("sweep", request)
        return pruner_pb2.StartSweepResponse(job=submit_stage(self.jobs, self.store, spec))


def build(server: Server, args: argparse.Namespace) -> None:
    """Serve Pruner and Jobs on ``server`` with the store of the environment (``SLIMYOLO_STORE``)."""
    remove_stale_work_dirs()  # the work folders of jobs killed with an earlier process
    store = open_store()
    jobs = server.enable_jobs(store, rebuild_stage(store))
    server.add_service(SERVICE, pruner_pb2_grpc.add_PrunerServicer_to_server, PrunerServicer(store, jobs))
    server.set_serving(SERVICE)
