"""Conversion: cfg + weights → Keras/TensorFlow → OpenVINO IR (or PyTorch → IR), INT8, parity.

``from slimyolo.convert import convert`` is the public entry point (see
:mod:`slimyolo.convert.conversion`); the heavy packages (torch, tensorflow, openvino, nncf)
load on first use, so importing this package — as ``slimyolo --help`` does — costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimyolo.convert.conversion import ConversionResult, convert

_LAZY = {"convert": "slimyolo.convert.conversion", "ConversionResult": "slimyolo.convert.conversion"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimyolo.convert' has no attribute {name!r}")


__all__ = ["ConversionResult", "convert"]
