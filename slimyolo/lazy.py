"""Names of a package that are imported on first use: a package's light API stays cheap to import.

``slimyolo --help``, the services and the pipeline's configuration check import the packages whose
heavy parts (PyTorch, OpenVINO, TensorFlow) they never run; a package exports those parts through
:func:`lazy_attributes` (PEP 562's module ``__getattr__``) so that they load only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``modules[name]`` when ``name`` is first asked for."""

    def attribute(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute
