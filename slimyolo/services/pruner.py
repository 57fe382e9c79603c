"""The pruner service: ``slimyolo.v1.Pruner`` (StartPrune, StartSweep) and ``slimyolo.v1.Jobs``.

Each Start... request becomes a stage spec and a job running the stage against the artifact
store of the environment (:mod:`slimyolo.rpc.stage_service`, the servicer every stage service
shares). Each sweep row is a progress event of the sweep job.
"""

from __future__ import annotations

import argparse

from slimyolo.rpc.server import Server
from slimyolo.rpc.stage_service import serve_stages


def build(server: Server, args: argparse.Namespace) -> None:
    """Serve Pruner and Jobs on ``server`` with the store of the environment (``SLIMYOLO_STORE``)."""
    serve_stages(server, "pruner")
