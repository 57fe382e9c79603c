"""Services as real processes for tests: ``slimyolo serve SERVICE`` on 127.0.0.1, stopped by PID.

A test that kills or drains a replica (SIGKILL, SIGTERM) needs the service in a process of its
own; :func:`serve` starts one on a given port (0: any free one; :func:`free_port` picks one that a
replica can be started again on), logging to a file, and returns once its gRPC port answers and
the health service ``ready`` reports SERVING.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slimyolo.rpc.client import connect, wait_ready

SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+)\b.*metrics on 127\.0\.0\.1:(\d+)")


@dataclass
class Service:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (if still running) and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(service: str, flags: list[str], env: dict[str, str], log: Path, port: int = 0, ready: str = "",
          timeout: float = 240) -> Service:
    """``slimyolo serve SERVICE FLAGS`` on 127.0.0.1:``port``; returns once ``ready`` ("" the whole server)
    is SERVING. Fails with the end of the log if the process exits or is not ready in ``timeout`` s."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "slimyolo", "serve", service, "--bind", "127.0.0.1",
                                 "--port", str(port), "--metrics-port", "0", *flags], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + timeout
    while not (found := SERVING_LINE.search(log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{service} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    started = Service(proc, int(found.group(1)), int(found.group(2)), log)
    with connect(started.address, health_service=None) as channel:
        wait_ready(channel, ready, timeout=max(1.0, deadline - time.monotonic()))
    return started
