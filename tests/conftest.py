"""Shared test helpers. Tests never read ../shared: every fact they check is stated here."""

from __future__ import annotations

import os

import pytest

# Two cores: keep torch from oversubscribing them when pytest runs alongside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")

@pytest.fixture
def run_cli(capsys):
    """Run ``slimyolo ARGS`` in-process; returns (exit status, stdout, stderr)."""
    from slimyolo.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 server (``weed server -s3``, tests/seaweed.py) shared by the session.

    Tests take a fresh bucket each (``seaweed.new_bucket()``) and point stores or services at it
    with ``seaweed.env(bucket)``. Tests that stop the server start their own SeaweedServer.
    """
    from seaweed import SeaweedServer

    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()
