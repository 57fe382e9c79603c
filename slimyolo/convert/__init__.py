"""Conversion: cfg + weights → Keras/TensorFlow → OpenVINO IR (or PyTorch → IR), INT8, parity.

``from slimyolo.convert import convert`` is the public entry point (see
:mod:`slimyolo.convert.conversion`), steered by a :class:`ConvertOptions`; the heavy packages
(torch, tensorflow, openvino, nncf) load on first use, so importing this package — as
``slimyolo --help`` does — costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimyolo.convert.options import ConvertOptions
from slimyolo.lazy import lazy_attributes

if TYPE_CHECKING:
    from slimyolo.convert.conversion import ConversionResult, convert

_LAZY = {"convert": "slimyolo.convert.conversion", "ConversionResult": "slimyolo.convert.conversion"}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["ConversionResult", "ConvertOptions", "convert"]
