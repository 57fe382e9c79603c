"""The darknet package has no import circle: an import inside a function counts, one under ``if TYPE_CHECKING:``
does not (it never runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import slimyolo.darknet

PACKAGE = Path(slimyolo.darknet.__file__).parent


def _runtime_imports(path: Path) -> set[str]:
    """The slimyolo.darknet modules ``path`` imports when it runs, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n.rsplit(".", 1)[1] for n in names if n.startswith("slimyolo.darknet.")
                   and (PACKAGE / f"{n.rsplit('.', 1)[1]}.py").is_file())
    return out


def test_no_import_circle_in_the_darknet_package():
    graph = {p.stem: _runtime_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert circles == [], f"modules on an import circle: {circles} ({ {m: sorted(graph[m]) for m in circles} })"
    assert "graph" in graph["cfg"] and "weights" in graph["model"]  # the edges kept, the reverse ones cut
