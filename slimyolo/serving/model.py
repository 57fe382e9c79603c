"""One loaded model version: its OpenVINO engines, tensor signature and stream multiplexer.

The native-size engine answers Detect and ModelInfer calls, through a dynamic batcher
(:mod:`slimyolo.serving.batching`) when ``max_batch`` is above 1 and the IR's batch size is not
fixed; an IR whose input is letterboxed on
the host (the default ``convert`` output) is also compiled at k× its size for the k×k mosaics of
video streams (k = 2 … the configured mosaic), which the multiplexer shares between streams.
An IR that letterboxes inside (``convert --ppp resize``) cannot be tiled: its stream frames run
one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimyolo.infer.engine import Engine
from slimyolo.infer.meta import ModelMeta
from slimyolo.infer.mosaic import MosaicDetector
from slimyolo.serving.batching import DynamicBatcher
from slimyolo.serving.config import ServingConfig
from slimyolo.serving.images import DetectOptions
from slimyolo.serving.kserve import Signature, signature
from slimyolo.serving.streams import StreamMultiplexer

log = logging.getLogger(__name__)


class ServedModel:
    """A model version compiled for serving (see the module docstring)."""

    def __init__(self, name: str, version: str, path: Path, config: ServingConfig, core: Any,
                 on_infer: Callable[[float], None]) -> None:
        self.name, self.version, self.path = name, version, path
        settings = {"device": config.device, "hint": config.hint, "precision": config.precision or None,
                    "core": core, "on_infer": on_infer}
        self.engine = Engine(path / "model.xml", **settings)
        self.meta: ModelMeta = self.engine.meta
        self.signature: Signature = signature(self.engine.compiled, self.meta.outputs)
        self.defaults = DetectOptions(self.engine.conf_thres, self.engine.iou_thres, self.engine.max_det)
        batchable = config.max_batch > 1 and self.signature.inputs[0].shape[0] == -1
        self.batcher = DynamicBatcher(self.engine, config.max_batch, config.max_queue_delay_us / 1e6,
                                      f"{name}-{version}") if batchable else None
        spec = self.meta.input
        tileable = not spec.resize_inside and spec.layout == "NCHW"
        mosaics = {k: MosaicDetector(Engine(path / "model.xml", input_size=(k * spec.height, k * spec.width),
                                                 **settings), k)
                   for k in range(2, config.mosaic_k + 1)} if tileable else {}
        self.mux = StreamMultiplexer(self.engine, mosaics, config.batch_window, name=f"{name}-{version}")
        self.closed = False

    def infer(self, tensor: Any, started: Callable[[], None]) -> list[Any]:
        """Where Detect and ModelInfer run an inference, in the calling thread: through the batcher, or on a free
        request of the engine's pool (:meth:`Engine.infer`); ``started()`` is called once it runs. Returns the
        raw heads."""
        if self.batcher is not None:
            return self.batcher.submit(tensor, started).result()
        return self.engine.infer(tensor, started)

    def close(self) -> None:
        """Finish queued frames and wait for running requests; the engines go with the last reference."""
        self.mux.close()
        if self.batcher is not None:
            self.batcher.close()
        self.engine.wait()
        for mosaic in self.mux.mosaics.values():
            mosaic.engine.wait()
        self.closed = True
        log.info("model %s version %s released", self.name, self.version)
