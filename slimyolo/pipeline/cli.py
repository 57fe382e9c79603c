"""``slimyolo pipeline run CONFIG.yaml [--remote]``: run a pipeline config and print the final table.

In this process by default (the store of ``SLIMYOLO_STORE``, a local folder unless set), or with
``--remote`` as jobs of the trainer, pruner and converter services
(:class:`slimyolo.rpc.stages.RemoteRunner`), which must share that store (S3/MinIO). The remote run
ends with the inference service detecting objects in a validation image with the fine-tuned model
it now serves. Service addresses come from the config's ``remote`` section or
``SLIMYOLO_<SERVICE>_ADDRESS`` (which wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from slimyolo.cpuinfo import cpu_info, describe
from slimyolo.errors import NotFoundError
from slimyolo.pipeline.config import PipelineConfig, remote_addresses
from slimyolo.pipeline.run import background_step, run_pipeline
from slimyolo.pipeline.runners import LocalRunner
from slimyolo.security import add_client_arguments, client_security

if TYPE_CHECKING:
    from slimyolo.rpc.stages import RemoteRunner


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole method: train, sparsify, sweep, prune, fine-tune, convert, evaluate")
    cmds = p.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")
    r = cmds.add_parser("run", help="run a pipeline config (configs/demo.yaml) and print the final table")
    r.add_argument("config", type=Path, help="pipeline YAML config")
    r.add_argument("--remote", action="store_true", help="run the stages as jobs of the services (addresses from "
                                                         "the config's remote section or SLIMYOLO_<SERVICE>_ADDRESS)")
    r.add_argument("--out", type=Path, help="folder for the run folder (default: the config's out, else runs)")
    add_client_arguments(r.add_argument_group("with --remote: TLS and token for every service"))
    name = r.add_mutually_exclusive_group()
    name.add_argument("--name", help="a stable run name (default: the config's name and the time); running the "
                                     "config again under it continues the run: finished stages return their results, "
                                     "an interrupted training resumes from its last epoch")
    name.add_argument("--resume", metavar="RUN", help="continue the run RUN (a folder under --out): as --name RUN, "
                                                      "but RUN must exist")
    r.set_defaults(func=_run)


class _BackgroundLogs(logging.Filter):
    """Starts each log record of the pipeline's background stage with its step (``reference: ``), as its
    progress lines are."""

    def filter(self, record: logging.LogRecord) -> bool:
        step = background_step(record.threadName or "")
        if step is not None and not str(record.msg).startswith(f"{step}: "):
            record.msg = f"{step}: {record.msg}"
        return True


def _run(args: argparse.Namespace) -> int:
    from slimyolo.stages.console import StageConsole
    from slimyolo.store import open_store
    from slimyolo.train.cli import console_line

    config = PipelineConfig.from_yaml(args.config)
    if args.out:
        config = dataclasses.replace(config, out=args.out)
    if args.resume and not (config.out / args.resume / "pipeline.yaml").is_file():
        runs = sorted(p.parent.name for p in config.out.glob("*/pipeline.yaml"))
        raise NotFoundError(f"--resume: no run {args.resume!r} in {config.out} (its folders: "
                            f"{', '.join(runs) or 'none'})")
    store = open_store()

    def say(line: str) -> None:
        console_line(line, sys.stderr)

    console = StageConsole()
    # the reference trained beside the other stages: its lines prefixed, no bars (one bar at a time fits a line),
    # and so are the log records of its thread
    background = StageConsole(bars=False, prefix="reference: ")
    logs = _BackgroundLogs()
    for handler in logging.getLogger().handlers:
        handler.addFilter(logs)
    runner: LocalRunner | RemoteRunner
    if args.remote:  # the one place the pipeline reaches the transport
        from slimyolo.rpc.stages import RemoteRunner, served_detection

        runner = RemoteRunner(remote_addresses(config, os.environ), security=client_security(args, os.environ))
        detect = served_detection(runner) if "inference" in runner.addresses else None
        say(f"remote: {', '.join(f'{s} {a}' for s, a in runner.addresses.items())}; store {store.uri}")
    else:
        runner, detect = LocalRunner(store), None
        say(f"in process; store {store.uri}")
    try:
        result = run_pipeline(config, runner, store, say=say, progress=console, background_progress=background,
                              detect=detect, name=args.resume or args.name)
    finally:
        console.close()
        background.close()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(logs)
        if args.remote:
            runner.close()
    print("\n" + "\n".join(result.story))
    if result.served is not None:
        s = result.served
        say(f"\nserved by {s['address']}: {s['model']} version {s['version']} found {len(s['detections'])} objects "
            f"in {Path(s['image']).name}: " + ", ".join(f"{d['class']} {d['score']:.2f}" for d in s["detections"][:5]))
    print(f"\n{result.table()}\n")
    for note in result.notes():
        print(f"- {note}")
    # the elapsed time beside the CPU it ran on: a pipeline's time is only comparable on the same kind of CPU
    print(f"\n{result.run_dir}: results.json, results.md, stages.json ({result.seconds:.0f} s on "
          f"{describe(cpu_info())})")
    return 0
