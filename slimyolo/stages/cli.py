"""``slimyolo stage NAME --spec FILE.yaml``: one stage over the artifact store, as a batch Job runs it.

The store comes from the environment (``SLIMYOLO_STORE`` and, for S3, ``SLIMYOLO_S3_*``); the spec
names the inputs in the store and the output prefix (:mod:`slimyolo.stages.specs`). Progress goes
to stderr; the result (artifacts by role, metrics) is printed to stdout as JSON. Under
``torchrun`` only rank 0 prints the result (and uploads).

With ``--remote HOST:PORT`` the same spec goes to the running service of the stage as its
Start... request and the job is followed to its end: the same progress lines, the same result
JSON, the same errors and exit status (2) as in process. This is how a shell triggers one stage
of a deployment; the service must use the same store as the spec's keys name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import textwrap
from pathlib import Path

from slimyolo.fsutil import read_yaml
from slimyolo.helptext import plain_text
from slimyolo.params import fields_help
from slimyolo.security import add_client_arguments, client_security
from slimyolo.stages.kinds import KINDS, parse_spec, run_stage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="run one pipeline stage over the artifact store (the Kubernetes batch Jobs)",
                       description="Run one stage over the artifact store of SLIMYOLO_STORE, as the Kubernetes "
                                   "batch Jobs do, and print its result (artifacts, metrics) as JSON. "
                                   "slimyolo stage KIND --help lists the spec fields of KIND.")
    kinds = p.add_subparsers(dest="name", required=True, metavar="KIND")
    for kind, entry in KINDS.items():
        cls = entry.spec
        what = plain_text(cls.__doc__)
        description = textwrap.fill(f"{what} The spec is a YAML file of the fields below; inputs are store keys.",
                                    100)
        title = f"Spec fields (the YAML keys of {kind} specs; the same fields as the gRPC request's spec):"
        q = kinds.add_parser(kind, help=what.rstrip("."), description=description,
                             epilog=fields_help(cls, title, cls.help_footer),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--spec", type=Path, required=True, help="YAML spec: inputs (store keys), output prefix, "
                                                                "parameters (the fields below)")
        q.add_argument("--remote", metavar="HOST:PORT", help=f"submit the spec to the running {entry.service} "
                       "service, which must use the same store, and follow its job; the result is the same JSON "
                       "as in process")
        add_client_arguments(q.add_argument_group("with --remote: TLS and token"))
        q.set_defaults(func=_stage)


def load_spec_file(kind: str, path: Path):
    """The spec of stage ``kind`` in a YAML file; errors name the file and the field."""
    doc = read_yaml(path)
    return parse_spec(kind, doc, str(path))


def _stage(args: argparse.Namespace) -> int:
    from slimyolo.stages.console import StageConsole

    spec = load_spec_file(args.name, args.spec)  # checked here either way: a bad field fails alike, before any call
    console = StageConsole()
    try:
        if args.remote:
            from slimyolo.rpc.stages import run_remote

            result = run_remote(args.remote, spec, console, client_security(args, os.environ))
        else:
            from slimyolo.store import open_store

            result = run_stage(open_store(), spec, console)
    finally:
        console.close()
    if int(os.environ.get("RANK", "0")) == 0:
        from slimyolo.prune.report import print_warnings

        print_warnings(result.metrics.get("warnings") or [])  # a prune's asked-vs-removed and sparsity warnings
        artifacts = {role: dataclasses.asdict(a) for role, a in result.artifacts.items()}
        print(json.dumps({"artifacts": artifacts, "metrics": result.metrics}, indent=1, default=str))
    return 0
