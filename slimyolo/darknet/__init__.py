"""The darknet core: cfg files, the model zoo, the PyTorch model, ``.weights`` I/O, FLOPs.

The cfg, graph, zoo and FLOPs modules need no PyTorch (the inference image has none); the
torch-based names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimyolo.darknet.cfg import Cfg, Section, parse_cfg, parse_cfg_text
from slimyolo.darknet.flops import ModelStats, model_stats
from slimyolo.darknet.graph import Graph, build_graph
from slimyolo.darknet.zoo import ZOO, make_cfg
from slimyolo.lazy import lazy_attributes

if TYPE_CHECKING:
    from slimyolo.darknet.model import Darknet, load_model

_LAZY = {"Darknet": "slimyolo.darknet.model", "load_model": "slimyolo.darknet.model"}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["ZOO", "Cfg", "Darknet", "Graph", "ModelStats", "Section", "build_graph", "load_model",
           "make_cfg", "model_stats", "parse_cfg", "parse_cfg_text"]
