"""Images from requests, checked before they cost memory, and per-request detection options.

An encoded image is refused (SlimYoloError naming the request field, INVALID_ARGUMENT) unless

- it is at most ``max_bytes`` long;
- it is a JPEG, PNG or BMP whose header this module reads the size from *without decoding*
  (:func:`header_size`): any other format, a header cut short or malformed, an animated PNG, is
  refused before the decoder sees it, because a decoder trusts the size its header declares
  (a few hundred bytes of JPEG can declare 20000×20000 and make OpenCV allocate gigabytes);
- that size is at most ``max_pixels``.

The JPEG header is read the way libjpeg reads it (bytes other than a marker between segments are
skipped, as the decoder skips them), so the size checked is the size the decoder will allocate.
Decoding then takes its memory from a budget shared by the server's requests (``max_decode_bytes``:
:data:`DECODE_BYTES_PER_PIXEL` per declared pixel), so that many large images at once wait for
each other instead of exhausting memory. OpenCV's own limit, ``OPENCV_IO_MAX_IMAGE_PIXELS``,
backs this up (set by :mod:`slimyolo.serving` before OpenCV loads).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from slimyolo.darknet.graph import Head
from slimyolo.data.letterbox import Letterbox, unletterbox_boxes
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import decode, postprocess
from slimyolo.infer.engine import Detections

FORMATS = "JPEG, PNG or BMP"
# The most memory decoding takes per pixel: the BGR result (3 bytes) and, for a progressive JPEG,
# every DCT coefficient of up to 4 components (2 bytes each) until the last scan.
DECODE_BYTES_PER_PIXEL = 12

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_BMP = b"BM"
# JPEG start-of-frame markers (they carry the size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RST0-7: markers without a segment
_JPEG_FILL = re.compile(rb"\xff+")  # scanned at C speed: a hostile image may hold megabytes of junk
# Segments (JPEG) or chunks (PNG) read before the size is known: real images have a few dozen; a
# hostile one could hold millions of empty ones, each a turn of a Python loop.
MAX_HEADER_SEGMENTS = 1000
# BMP info-header sizes OpenCV reads (OS/2 1.x core, Windows v1, v2, v3, OS/2 2.x, v4, v5).
_BMP_CORE, _BMP_INFO = 12, frozenset([40, 52, 56, 64, 108, 124])


@dataclass(frozen=True)
class EncodedImage:
    data: bytes  # JPEG, PNG or BMP


@dataclass(frozen=True)
class RawImage:
    height: int
    width: int
    bgr: bytes  # uint8 height×width×3, row-major, no padding


class ImageLimits:
    """One server's limits on request images, and the decode memory its requests share."""

    def __init__(self, max_bytes: int, max_pixels: int, max_decode_bytes: int) -> None:
        self.max_bytes, self.max_pixels, self.max_decode_bytes = max_bytes, max_pixels, max_decode_bytes
        self._free = max_decode_bytes
        self._cond = threading.Condition()

    @contextmanager
    def decoding(self, pixels: int) -> Iterator[None]:
        """Hold the decode memory of an image of ``pixels``, waiting until the budget has it.

        An image that needs more than the whole budget waits until it has all of it, and decodes alone.
        """
        need = min(pixels * DECODE_BYTES_PER_PIXEL, self.max_decode_bytes)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()


class _Header(Exception):
    """Why a header gives no size (the caller names the field)."""


def _int(data: bytes, at: int, size: int, order: Literal["big", "little"] = "big", signed: bool = False) -> int:
    if at + size > len(data):
        raise _Header("its header is cut short")
    return int.from_bytes(data[at:at + size], order, signed=signed)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The frame header's size, finding markers as libjpeg's next_marker() does."""
    i = 2  # after SOI
    for _ in range(MAX_HEADER_SEGMENTS):
        i = data.find(b"\xff", i)  # bytes between segments before it: libjpeg skips them
        if i >= 0:
            i = _JPEG_FILL.match(data, i).end()  # type: ignore[union-attr]  # fill bytes
        if not 0 <= i < len(data):
            raise _Header("the JPEG ends before its frame header")
        marker, i = data[i], i + 1
        if marker == 0x00 or marker in _JPEG_NO_LENGTH:  # a stuffed 0xFF (skipped as junk) or a lone marker
            continue
        if marker in _JPEG_SOF:
            return _int(data, i + 5, 2), _int(data, i + 3, 2)
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI, SOS: no frame header came first
            raise _Header(f"the JPEG has no frame header before marker 0x{marker:02X}")
        length = _int(data, i, 2)
        if length < 2:
            raise _Header(f"JPEG segment 0x{marker:02X} has a bad length {length}")
        i += length
    raise _Header(f"the JPEG has more than {MAX_HEADER_SEGMENTS} markers before its frame header")


def _png_size(data: bytes) -> tuple[int, int]:
    """IHDR's size; animated PNGs (an acTL chunk before the image data) are refused."""
    if data[12:16] != b"IHDR":
        raise _Header("the PNG does not start with its IHDR chunk" if len(data) >= 16 else "its header is cut short")
    width, height = _int(data, 16, 4), _int(data, 20, 4)
    i = 8
    for _ in range(MAX_HEADER_SEGMENTS):
        if i + 8 > len(data) or data[i + 4:i + 8] == b"IDAT":
            return width, height
        if data[i + 4:i + 8] == b"acTL":
            raise _Header("animated PNGs are not accepted")
        i += 12 + _int(data, i, 4)
    raise _Header(f"the PNG has more than {MAX_HEADER_SEGMENTS} chunks before its image data")


def _bmp_size(data: bytes) -> tuple[int, int]:
    header = _int(data, 14, 4, "little")
    if header == _BMP_CORE:
        return _int(data, 18, 2, "little"), _int(data, 20, 2, "little")
    if header in _BMP_INFO:
        return abs(_int(data, 18, 4, "little", signed=True)), abs(_int(data, 22, 4, "little", signed=True))
    raise _Header(f"the BMP info header has an unknown size {header}")


def header_size(data: bytes, field: str = "image.encoded") -> tuple[int, int]:
    """(width, height) from the header of a JPEG, PNG or BMP, without decoding; SlimYoloError naming ``field``
    for any other format, or a header that gives no size."""
    readers = ((_JPEG, _jpeg_size, "JPEG"), (_PNG, _png_size, "PNG"), (_BMP, _bmp_size, "BMP"))
    for magic, read, name in readers:
        if data.startswith(magic):
            try:
                width, height = read(data)
            except _Header as exc:
                raise SlimYoloError(f"{field}: not a decodable image: {exc} ({name}, {len(data):,} bytes)") from None
            if width < 1 or height < 1:
                raise SlimYoloError(f"{field}: not a decodable image: its {name} header declares {width}x{height}")
            return width, height
    raise SlimYoloError(f"{field}: not a decodable image ({len(data):,} bytes): the server accepts {FORMATS}, "
                        "whose header gives the size before decoding")


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
    width, height = header_size(data, f"{field}.encoded")
    _check_pixels(width, height, limits, f"{field}.encoded")
    with limits.decoding(width * height):
        try:
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV's own checks (OPENCV_IO_MAX_IMAGE_PIXELS) raise rather than return None
            decoded = None
    if decoded is None:
        raise SlimYoloError(f"{field}.encoded: not a decodable image: its {width}x{height} data is damaged "
                            f"({len(data):,} bytes)")
    _check_pixels(decoded.shape[1], decoded.shape[0], limits, f"{field}.encoded")
    return decoded


# Most boxes one request may ask for: NMS costs candidates × boxes kept, so a client's
# max_detections must not buy unbounded work (ultralytics keeps 300 by default; 1000 covers
# crowded scenes).
MAX_DETECTIONS = 1000


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
        if not 0 <= max_det <= MAX_DETECTIONS:
            raise SlimYoloError(f"{field}.max_detections: must be in [0, {MAX_DETECTIONS}], got {max_det}")
        return cls(conf or defaults.conf_thres, iou or defaults.iou_thres, max_det or defaults.max_det)


def detections_from_heads(raws: Sequence[np.ndarray], heads: Sequence[Head], lb: Letterbox,
                          options: DetectOptions) -> Detections:
    """Raw heads of one letterboxed image → its boxes in the image's pixels, at the request's thresholds.

    :meth:`slimyolo.infer.engine.Engine.postprocess` with thresholds per request instead of per engine.
    """
    (det,) = postprocess(decode(raws, heads), options.conf_thres, options.iou_thres, max_det=options.max_det)
    det[:, :4] = unletterbox_boxes(det[:, :4], lb)
    return Detections.from_array(det)
