"""A server process for tests/test_rpc_drain.py: the bootstrap serving Jobs, with one job running.

The job counts the FLOPs of the zoo models over and over, reporting each, until the file named
by the first argument exists. The process prints one JSON line (ports, job id) once it serves,
then runs until SIGTERM drains it. The grace period comes from SLIMYOLO_SHUTDOWN_GRACE_SECONDS.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from slimyolo.darknet.flops import model_stats
from slimyolo.darknet.zoo import ZOO, make_cfg
from slimyolo.progress import StageStep
from slimyolo.rpc.server import Server, ServerConfig
from slimyolo.stages.runners import StageResult


def flops_until(gate: Path):
    def run(progress) -> StageResult:
        counted, names, deadline = 0, list(ZOO), time.monotonic() + 600
        while not gate.exists() and time.monotonic() < deadline:
            name = names[counted % len(names)]
            progress(StageStep("flops", name, {"bflops": model_stats(make_cfg(name, 2, 320)).bflops}))
            counted += 1
            time.sleep(0.01)
        return StageResult(metrics={"counted": counted})

    return run


def main() -> None:
    server = Server("drain-test", ServerConfig.from_env(os.environ, bind="127.0.0.1", port=0, metrics_port=0))
    jobs = server.enable_jobs()
    server.start()
    job = jobs.submit("flops", flops_until(Path(sys.argv[1])))
    print(json.dumps({"port": server.port, "metrics_port": server.metrics_port, "job": job.id}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
