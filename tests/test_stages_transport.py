"""``slimyolo.stages`` and ``slimyolo.pipeline`` know nothing of gRPC: the wire lives in ``slimyolo.rpc``.

Importing any of their modules loads neither ``grpc`` nor ``slimyolo.rpc.gen``; a stage run in
process (``slimyolo stage prune --spec F``) loads neither either; and no module of theirs imports
gRPC, protobuf or ``slimyolo.rpc`` anywhere, function bodies included (an import inside a function
is an import once the function runs), except for type annotations (``if TYPE_CHECKING:``) and the
``--remote`` branch of the two commands that reach a service: ``slimyolo stage KIND --remote``
and ``slimyolo pipeline run --remote``.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import slimyolo.pipeline
import slimyolo.stages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (slimyolo.stages, slimyolo.pipeline)
WIRE = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "slimyolo.rpc")
# module → the function whose ``if args.remote:`` branch may import the client (slimyolo.rpc.stages)
REMOTE_BRANCHES = {"slimyolo.stages.cli": "_stage", "slimyolo.pipeline.cli": "_run"}


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return sorted(names)


def _loaded_after(code: str) -> list[str]:
    """The wire modules loaded once ``code`` has run in a fresh interpreter."""
    probe = code + textwrap.dedent("""
        import sys, json
        print(json.dumps(sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "grpc_"))
                                or m.startswith("slimyolo.rpc.gen"))))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_packages_have_modules_to_check():
    names = _modules()
    assert {"slimyolo.stages.kinds", "slimyolo.stages.runners", "slimyolo.stages.durable", "slimyolo.pipeline.run",
            "slimyolo.pipeline.cli"} <= set(names)


def test_importing_every_module_of_stages_and_pipeline_loads_no_grpc():
    code = "".join(f"import {name}\n" for name in _modules())
    assert _loaded_after(code) == []


def test_a_stage_run_in_process_loads_no_grpc(tmp_path):
    """``slimyolo stage prune --spec F``, the whole command, on a small model in a local store."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import torch, yaml
        from conftest import MINI_CFG
        from slimyolo.cli import main
        from slimyolo.darknet.model import load_model
        from slimyolo.darknet.weights import save_darknet_weights
        from slimyolo.store import LocalStore

        root = Path({str(tmp_path)!r})
        (root / "inputs").mkdir()
        (root / "inputs" / "mini.cfg").write_text(MINI_CFG)
        torch.manual_seed(0)
        save_darknet_weights(load_model(root / "inputs" / "mini.cfg"), root / "inputs" / "mini.weights")
        LocalStore(root / "store").put_tree("inputs", root / "inputs")
        os.environ["SLIMYOLO_STORE"] = str(root / "store")
        spec = root / "prune.yaml"
        spec.write_text(yaml.safe_dump({{"cfg": "inputs/mini.cfg", "weights": "inputs/mini.weights",
                                         "out": "runs/p", "global_percent": 0.3}}))
        assert main(["stage", "prune", "--spec", str(spec)]) == 0
        assert LocalStore(root / "store").list_trees("runs") == ["runs/p"]
    """)
    assert _loaded_after(code) == []


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _wire_imports(tree: ast.AST, module: str) -> list[str]:
    """``line: name`` of each import of the wire outside TYPE_CHECKING blocks and the allowed remote branch."""
    found: list[str] = []

    def visit(node: ast.AST, function: str | None, client_allowed: bool) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return
        if isinstance(node, ast.If) and ast.unparse(node.test) == "args.remote" \
                and REMOTE_BRANCHES.get(module) == function:
            for child in node.body:
                visit(child, function, True)
            for child in node.orelse:
                visit(child, function, client_allowed)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if client_allowed and node.module == "slimyolo.rpc.stages":
                return
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.extend(f"{node.lineno}: {name}" for name in names
                     if any(name == w or name.startswith(w + ".") for w in WIRE))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        for child in ast.iter_child_nodes(node):
            visit(child, function, client_allowed)

    visit(tree, None, False)
    return found


def test_no_module_of_stages_or_pipeline_imports_the_wire_even_inside_a_function():
    offenders = {}
    for name in _modules():
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        path = Path(module.__file__)
        imports = _wire_imports(ast.parse(path.read_text()), name)
        if imports:
            offenders[str(path.relative_to(ROOT))] = imports
    assert not offenders, offenders


def test_the_check_sees_an_import_inside_a_function_and_allows_only_the_remote_branch():
    code = textwrap.dedent("""
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from slimyolo.rpc.stages import RemoteRunner
        def _run(args):
            if args.remote:
                from slimyolo.rpc.stages import RemoteRunner
            else:
                import grpc
        def other(args):
            if args.remote:
                from slimyolo.rpc.stages import run_remote
            from slimyolo.rpc import messages
    """)
    tree = ast.parse(code)
    assert _wire_imports(tree, "slimyolo.pipeline.cli") == ["9: grpc", "12: slimyolo.rpc.stages",
                                                              "12: slimyolo.rpc.stages.run_remote",
                                                              "13: slimyolo.rpc", "13: slimyolo.rpc.messages"]
    assert len(_wire_imports(tree, "slimyolo.pipeline.run")) == 7  # no branch allowed outside the two commands
