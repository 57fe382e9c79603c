"""The package's boundaries: where gRPC may be imported, what the wheel installs, what the services cost."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "slimyolo"
TRANSPORT = ("rpc", "services")  # the transport, and the servicers that translate protobuf


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_nothing_outside_the_transport_imports_grpc():
    offenders = [str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))
                 if path.relative_to(PACKAGE).parts[0] not in TRANSPORT
                 and any(name == "grpc" or name.startswith(("grpc.", "grpc_")) for name in _imports(path))]
    assert not offenders, offenders


def test_the_wheel_installs_slimyolo_only():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["slimyolo*"]
    assert not list((ROOT / "services").glob("**/*.py")), "services/<stage>/ holds only the image's files"


def test_the_services_package_and_the_pipeline_import_neither_torch_nor_grpc():
    code = ("import sys, slimyolo.services, slimyolo.pipeline, slimyolo.rpc.stages; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorflow', 'grpc', 'openvino'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
