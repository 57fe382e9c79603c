"""Configuration of the inference service: environment variables, overridden by flags.

Like :class:`slimyolo.rpc.server.ServerConfig` (which configures the ports and limits shared by
every service), each setting has an environment variable (what deployments set) and a flag of
``slimyolo serve inference`` (what a person types), and the flag wins::

    SLIMYOLO_MODEL_REPOSITORY          --model-repository  models  where the models are (see below)
    SLIMYOLO_MODEL_POLL_SECONDS        --poll-seconds      10      repository scan interval (0: only at start)
    SLIMYOLO_INFERENCE_DEVICE          --device            CPU     OpenVINO device
    SLIMYOLO_INFERENCE_HINT            --hint              throughput  OpenVINO PERFORMANCE_HINT
    SLIMYOLO_INFERENCE_PRECISION       --precision         (device default)  f32, bf16 or f16
    SLIMYOLO_INFERENCE_MOSAIC          --mosaic            2x2     largest mosaic for video streams (1x1: none)
    SLIMYOLO_INFERENCE_BATCH_WINDOW_MS --batch-window-ms   10      how long a stream frame waits for others
    SLIMYOLO_MAX_IMAGE_BYTES           --max-image-bytes   16777216  largest encoded image accepted
    SLIMYOLO_MAX_IMAGE_PIXELS          --max-image-pixels  50000000  largest image (width × height) accepted
    SLIMYOLO_MAX_DECODE_BYTES          --max-decode-bytes  1073741824  memory images being decoded take at once
                                                                   (12 bytes per pixel; more requests wait)
    SLIMYOLO_INFERENCE_MAX_QUEUE       --max-queue         32      Detect/ModelInfer calls that may wait for
                                                                   inference; beyond: RESOURCE_EXHAUSTED
    SLIMYOLO_INFERENCE_MAX_BATCH       --max-batch         1       frames of concurrent calls run as one
                                                                   inference (1: each call alone)
    SLIMYOLO_INFERENCE_MAX_QUEUE_DELAY_US --max-queue-delay-us 0   microseconds a call waits for others to
                                                                   batch with while a request is free
    SLIMYOLO_MODEL_CONTROL             --model-control     none    LoadModel/UnloadModel: refused (none) or
                                                                   served (explicit)

Model control is off by default, as in Triton (``--model-control-mode``): the repository's models
load at start and follow its new versions either way; only the calls that change what is served
(LoadModel, UnloadModel) need ``explicit``, which the pipeline's Detect check and the sweep's FPS
meter (``--measure-on``) rely on.

``SLIMYOLO_MAX_IMAGE_PIXELS`` also becomes OpenCV's own decode limit ``OPENCV_IO_MAX_IMAGE_PIXELS``
(unless that is set): OpenCV reads it once, as it loads (:mod:`slimyolo.serving`), so the flag
does not change it; images are refused from their header first anyway
(:mod:`slimyolo.serving.images`).

The model repository is ``s3://bucket/prefix`` (trees in that S3 location), a local folder
(``/abs/path``, ``./rel/path``, ``../rel``, ``~/path`` or ``file:///path``: as ``convert``
writes it), or else a key prefix in the artifact store that ``SLIMYOLO_STORE`` names (the
deployments' ``models``). See :func:`slimyolo.serving.repository.open_repository`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

from slimyolo import vocab
from slimyolo.envconfig import EnvConfig
from slimyolo.errors import SlimYoloError

ENV_MODEL_REPOSITORY = "SLIMYOLO_MODEL_REPOSITORY"

_ENV = {
    "model_repository": ENV_MODEL_REPOSITORY,
    "poll_seconds": "SLIMYOLO_MODEL_POLL_SECONDS",
    "device": "SLIMYOLO_INFERENCE_DEVICE",
    "hint": "SLIMYOLO_INFERENCE_HINT",
    "precision": "SLIMYOLO_INFERENCE_PRECISION",
    "mosaic": "SLIMYOLO_INFERENCE_MOSAIC",
    "batch_window_ms": "SLIMYOLO_INFERENCE_BATCH_WINDOW_MS",
    "max_image_bytes": "SLIMYOLO_MAX_IMAGE_BYTES",
    "max_image_pixels": "SLIMYOLO_MAX_IMAGE_PIXELS",
    "max_decode_bytes": "SLIMYOLO_MAX_DECODE_BYTES",
    "max_queue": "SLIMYOLO_INFERENCE_MAX_QUEUE",
    "max_batch": "SLIMYOLO_INFERENCE_MAX_BATCH",
    "max_queue_delay_us": "SLIMYOLO_INFERENCE_MAX_QUEUE_DELAY_US",
    "model_control": "SLIMYOLO_MODEL_CONTROL",
}
_HELP = {
    "model_repository": "s3://bucket/prefix, a local folder (/abs, ./rel, file:///abs, or a path through a hidden "
                        "folder such as .slimyolo/store/models) or a key prefix in the artifact store "
                        "($SLIMYOLO_STORE)",
    "poll_seconds": "seconds between scans of the repository for new versions (0: scan only at start)",
    "device": "OpenVINO device",
    "hint": f"OpenVINO performance hint ({', '.join(vocab.PERFORMANCE_HINTS)})",
    "precision": "OpenVINO inference precision (f32, bf16, f16; empty: the device's default)",
    "mosaic": "largest KxK mosaic that frames of concurrent video streams share (1x1: no mosaic)",
    "batch_window_ms": "milliseconds a stream frame waits for frames of other streams to share its inference",
    "max_image_bytes": "largest encoded image accepted (beyond it: INVALID_ARGUMENT)",
    "max_image_pixels": "largest image accepted, in pixels (width x height)",
    "max_decode_bytes": "memory that images being decoded may take at once (12 bytes per pixel; more wait)",
    "max_queue": "Detect and ModelInfer calls that may wait for an inference request at once; a call beyond "
                 "them is answered RESOURCE_EXHAUSTED at once (keep --workers above it)",
    "max_batch": "Detect and ModelInfer calls of one model that wait together run as one inference of up to this "
                 "many frames (dynamic batching, slimyolo.serving.batching; 1: each call alone; an IR with a fixed "
                 "batch size is never batched)",
    "max_queue_delay_us": "microseconds the first call of a batch waits for others while an inference request is "
                          "free (0: batch only the calls already waiting)",
    "model_control": f"{' or '.join(vocab.MODEL_CONTROL)}: whether LoadModel and UnloadModel calls are served "
                     "(none: refused, FAILED_PRECONDITION; the repository's models load either way)",
}


@dataclass(frozen=True)
class ServingConfig(EnvConfig):
    """What the inference service serves and how (see the module docstring for each field)."""

    model_repository: str = "models"
    poll_seconds: float = 10.0
    device: str = "CPU"
    # The service answers many clients at once: throughput keeps every core busy across requests.
    hint: str = "throughput"
    precision: str = ""
    mosaic: str = "2x2"
    batch_window_ms: float = 10.0
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_decode_bytes: int = 1024 ** 3
    # 32 concurrent clients, each with one call outstanding, never fill it (see slimyolo.serving.dataplane).
    max_queue: int = 32
    max_batch: int = 1
    max_queue_delay_us: int = 0
    model_control: str = "none"

    @property
    def mosaic_k(self) -> int:
        return vocab.parse_grid(self.mosaic)

    @property
    def batch_window(self) -> float:
        return self.batch_window_ms / 1000.0

    VARIABLES: ClassVar[Mapping[str, str]] = _ENV

    def _check(self) -> None:
        def where(name: str) -> str:
            return f"--{name.replace('_', '-')} / {_ENV[name]}"

        if not self.model_repository:
            raise SlimYoloError(f"{where('model_repository')}: a model repository is required")
        if self.poll_seconds < 0:
            raise SlimYoloError(f"{where('poll_seconds')}: must not be negative")
        if self.hint not in vocab.PERFORMANCE_HINTS:
            raise SlimYoloError(f"{where('hint')}: {self.hint!r} is not one of {', '.join(vocab.PERFORMANCE_HINTS)}")
        if self.precision:
            vocab.choose(self.precision, vocab.EXEC_PRECISIONS, where("precision"))
        try:
            self.mosaic_k  # noqa: B018 - parsed for its error
        except SlimYoloError as exc:
            raise SlimYoloError(f"{where('mosaic')}: {exc}") from None
        if self.batch_window_ms < 0:
            raise SlimYoloError(f"{where('batch_window_ms')}: must not be negative")
        vocab.choose(self.model_control, vocab.MODEL_CONTROL, where("model_control"))
        if self.max_queue_delay_us < 0:
            raise SlimYoloError(f"{where('max_queue_delay_us')}: must not be negative")
        for name in ("max_image_bytes", "max_image_pixels", "max_decode_bytes", "max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise SlimYoloError(f"{where(name)}: must be at least 1, got {getattr(self, name)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``slimyolo serve inference``; each overrides its environment variable."""
    for f in fields(ServingConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None,
                            help=f"{_HELP[f.name]} (env {_ENV[f.name]}, default {f.default or 'unset'})")
