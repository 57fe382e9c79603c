"""The converter service: ``slimyolo.v1.Converter`` (StartConversion) and ``slimyolo.v1.Jobs``.

Each request becomes a conversion spec and a job running it (:mod:`slimyolo.rpc.stage_service`,
the servicer every stage service shares), which publishes the IR as ``<model
repository>/<name>/<version>/`` in the artifact store, where the inference service's model
repository finds it. The repository prefix is the spec's, else ``--model-repository``, else
``SLIMYOLO_MODEL_REPOSITORY``, else ``models``: the runner resolves it; the spec is never changed.
"""

from __future__ import annotations

import argparse

from slimyolo.progress import Progress
from slimyolo.rpc.server import Server
from slimyolo.rpc.stage_service import serve_stages
from slimyolo.serving.config import ENV_MODEL_REPOSITORY, ServingConfig
from slimyolo.stages.runners import StageResult, model_repository, run_convert
from slimyolo.stages.specs import ConvertSpec
from slimyolo.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", help=f"store prefix the models are published under (env "
                                                   f"{ENV_MODEL_REPOSITORY}, default {ServingConfig.model_repository})")


def build(server: Server, args: argparse.Namespace) -> None:
    """Serve Converter and Jobs on ``server`` with the store of the environment (``SLIMYOLO_STORE``)."""
    repository = model_repository(args.model_repository, "--model-repository")  # a bad prefix fails at start

    def run(store: Store, spec: ConvertSpec, progress: Progress | None) -> StageResult:
        return run_convert(store, spec, progress, repository)

    serve_stages(server, "converter", run)
