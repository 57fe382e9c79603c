"""Images from requests, checked before they cost memory, and per-request detection options.

An encoded image is refused beyond ``max_bytes``, and beyond ``max_pixels`` *before* it is
decoded when its header says so (PNG and JPEG: a few kilobytes of PNG can decode to gigabytes),
after decoding otherwise. Every error names the request field at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from slimyolo.darknet.graph import Head
from slimyolo.data.letterbox import Letterbox, unletterbox_boxes
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import decode, postprocess
from slimyolo.infer.engine import Detections

_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class EncodedImage:
    data: bytes  # JPEG, PNG, BMP or any format OpenCV decodes


@dataclass(frozen=True)
class RawImage:
    height: int
    width: int
    bgr: bytes  # uint8 height×width×3, row-major, no padding


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding; None for other formats."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _check_pixels(width: int, height: int, limits: ImageLimits, field: str) -> None:
    if width * height > limits.max_pixels:
        raise SlimYoloError(f"{field}: {width}x{height} is {width * height:,} pixels, more than the "
                            f"{limits.max_pixels:,} this server accepts (SLIMYOLO_MAX_IMAGE_PIXELS)")


def decode_image(image: EncodedImage | RawImage | None, limits: ImageLimits, field: str = "image") -> np.ndarray:
    """The request's image as an OpenCV BGR uint8 array; SlimYoloError naming ``field`` when unusable."""
    if isinstance(image, RawImage):
        if image.height < 1 or image.width < 1:
            raise SlimYoloError(f"{field}.raw: height and width must be positive, got {image.height}x{image.width}")
        _check_pixels(image.width, image.height, limits, f"{field}.raw")
        expected = image.height * image.width * 3
        if len(image.bgr) != expected:
            raise SlimYoloError(f"{field}.raw.bgr: {len(image.bgr)} bytes, expected height*width*3 = {expected}")
        return np.frombuffer(image.bgr, np.uint8).reshape(image.height, image.width, 3)
    if not isinstance(image, EncodedImage) or not image.data:
        raise SlimYoloError(f"{field}: an image is required (encoded bytes or raw BGR pixels)")
    data = image.data
    if len(data) > limits.max_bytes:
        raise SlimYoloError(f"{field}.encoded: {len(data):,} bytes, more than the {limits.max_bytes:,} this server "
                            "accepts (SLIMYOLO_MAX_IMAGE_BYTES)")
    size = header_size(data)
    if size is not None:
        _check_pixels(*size, limits, f"{field}.encoded")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise SlimYoloError(f"{field}.encoded: not a decodable image ({len(data):,} bytes; JPEG, PNG, BMP, TIFF, "
                            "WebP and the other formats of OpenCV are)")
    _check_pixels(decoded.shape[1], decoded.shape[0], limits, f"{field}.encoded")
    return decoded


@dataclass(frozen=True)
class DetectOptions:
    """Thresholds of one request: score (objectness × class probability), NMS IoU, most boxes kept."""

    conf_thres: float
    iou_thres: float
    max_det: int

    @classmethod
    def resolve(cls, conf: float, iou: float, max_det: int, defaults: DetectOptions,
                field: str = "options") -> DetectOptions:
        """A request's options; zero (unset in proto3) takes the server's default."""
        if not 0.0 <= conf < 1.0:
            raise SlimYoloError(f"{field}.conf_threshold: must be in [0, 1), got {conf:g}")
        if not 0.0 <= iou <= 1.0:
            raise SlimYoloError(f"{field}.iou_threshold: must be in (0, 1], got {iou:g}")
        if max_det < 0:
            raise SlimYoloError(f"{field}.max_detections: must not be negative, got {max_det}")
        return cls(conf or defaults.conf_thres, iou or defaults.iou_thres, max_det or defaults.max_det)


def detections_from_heads(raws: Sequence[np.ndarray], heads: Sequence[Head], lb: Letterbox,
                          options: DetectOptions) -> Detections:
    """Raw heads of one letterboxed image → its boxes in the image's pixels, at the request's thresholds.

    :meth:`slimyolo.infer.engine.Engine.postprocess` with thresholds per request instead of per engine.
    """
    (det,) = postprocess(decode(raws, heads), options.conf_thres, options.iou_thres, max_det=options.max_det)
    det[:, :4] = unletterbox_boxes(det[:, :4], lb)
    return Detections.from_array(det)
