"""The converter service: ``slimyolo.v1.Converter`` (StartConversion) and ``slimyolo.v1.Jobs``.

A thin servicer: each request becomes a conversion spec (:mod:`slimyolo.stages.messages`) and a
job running it (:mod:`slimyolo.stages.runners.run_convert`), which publishes the IR as
``<model repository>/<name>/<version>/`` in the artifact store, where the inference service's
model repository finds it. The repository prefix is the request's, else ``--model-repository``,
else ``SLIMYOLO_MODEL_REPOSITORY``, else ``models``.
"""

from __future__ import annotations

import argparse
import dataclasses

import grpc

from slimyolo.rpc.gen.v1 import converter_pb2, converter_pb2_grpc
from slimyolo.rpc.jobs import JobManager
from slimyolo.rpc.server import Server
from slimyolo.serving.config import ENV_MODEL_REPOSITORY, ServingConfig
from slimyolo.stages.jobs import rebuild_stage, submit_stage
from slimyolo.stages.messages import spec_from_request
from slimyolo.stages.routing import grpc_service
from slimyolo.stages.runners import model_repository
from slimyolo.stages.workspace import remove_stale_work_dirs
from slimyolo.store import Store, open_store

SERVICE = grpc_service("converter")  # slimyolo.v1.Converter (slimyolo.stages.routing)


class ConverterServicer(converter_pb2_grpc.ConverterServicer):
    def __init__(self, store: Store, jobs: JobManager, model_repository: str) -> None:
        self.store, self.jobs, self.model_repository = store, jobs, model_repository

    def StartConversion(self, request: converter_pb2.StartConversionRequest,
                        context: grpc.ServicerContext) -> converter_pb2.StartConversionResponse:
        spec = spec_from_request("convert", request)
        if spec.model_repository is None:
            spec = dataclasses.replace(spec, model_repository=self.model_repository)
        return converter_pb2.StartConversionResponse(job=submit_stage(self.jobs, self.store, spec))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", help=f"store prefix the models are published under (env "
                                                   f"{ENV_MODEL_REPOSITORY}, default {ServingConfig.model_repository})")


def build(server: Server, args: argparse.Namespace) -> None:
    """Serve Converter and Jobs on ``server`` with the store of the environment (``SLIMYOLO_STORE``)."""
    repository = model_repository(args.model_repository, "--model-repository")
    remove_stale_work_dirs()  # the work folders of jobs killed with an earlier process
    store = open_store()
    jobs = server.enable_jobs(store, rebuild_stage(store))
    server.add_service(SERVICE, converter_pb2_grpc.add_ConverterServicer_to_server,
                       ConverterServicer(store, jobs, repository))
    server.set_serving(SERVICE)
