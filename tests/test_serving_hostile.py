"""The inference service against hostile images: decompression bombs in every accepted format (a
header declaring 20000x20000 in a few hundred bytes, junk bytes between JPEG segments, progressive
JPEG, a valid 1-bit PNG that inflates to 1.2 GB), truncated headers, other formats. Each is refused
with INVALID_ARGUMENT naming the field before it is decoded: the server process (a real
``slimyolo serve inference``) keeps its peak memory and goes on serving."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from slimyolo.errors import SlimYoloError
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc
from slimyolo.serving.images import DECODE_BYTES_PER_PIXEL, EncodedImage, ImageLimits, decode_image, header_size

SERVING_LINE = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+), metrics on 127\.0\.0\.1:(\d+)")
MAX_PIXELS = 4_000_000
BOMB = (20000, 20000)  # 400 M pixels: 1.2 GB as BGR


def _jpeg(image: np.ndarray, progressive: bool = False) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()


def _declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0 or SOF2) declaring another size."""
    at = min(i for i in (jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2")) if i > 0)
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _junk_after_app0(jpeg: bytes, junk: bytes = b"\x00") -> bytes:
    """Junk between the APP0 segment and the next marker: libjpeg skips it (with a warning)."""
    assert jpeg[2:4] == b"\xff\xe0"
    end = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:end] + junk + jpeg[end:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of zeros: about 60 kB that decode to width x height x 3 bytes."""
    rows = (b"\x00" * (1 + (width + 7) // 8)) * height
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows, 9)) + _png_chunk(b"IEND", b""))


def _animated(png: bytes) -> bytes:
    """The PNG with an acTL chunk (APNG) after its IHDR."""
    return png[:33] + _png_chunk(b"acTL", struct.pack(">II", 1, 0)) + png[33:]


def _bmp_header(width: int, height: int) -> bytes:
    """A BMP file and info header declaring width x height (24-bit), and a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\0" * 64


def _small() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 90, np.uint8)
    cv2.rectangle(image, (30, 20), (90, 80), (20, 200, 240), -1)
    return (image + rng.integers(0, 20, image.shape)).astype(np.uint8)


# (name, encoded bytes, what the refusal says) — every one must be refused before decoding.
def _hostile() -> list[tuple[str, bytes, str]]:
    small = _small()
    png = cv2.imencode(".png", small)[1].tobytes()
    bmp = cv2.imencode(".bmp", small)[1].tobytes()
    pixels = "400,000,000 pixels, more than the 4,000,000"
    return [
        ("jpeg bomb", _declaring(_jpeg(small), *BOMB), pixels),
        ("jpeg bomb, junk byte between segments", _junk_after_app0(_declaring(_jpeg(small), *BOMB)), pixels),
        ("jpeg bomb, junk and 0xFF00 between segments",
         _junk_after_app0(_declaring(_jpeg(small), *BOMB), b"\x12\xff\x00\x34"), pixels),
        ("progressive jpeg bomb", _junk_after_app0(_declaring(_jpeg(small, progressive=True), *BOMB)), pixels),
        ("png bomb (valid, inflates to 1.2 GB)", _png_bomb(*BOMB), pixels),
        ("png header claiming 20000x20000", png[:16] + struct.pack(">II", *BOMB) + png[24:], pixels),
        ("bmp header claiming 20000x20000", _bmp_header(*BOMB), pixels),
        ("bmp top-down header claiming 20000x20000", _bmp_header(BOMB[0], -BOMB[1]), pixels),
        ("jpeg cut before its frame header", _jpeg(small)[:20], "the JPEG ends before its frame header"),
        ("jpeg with no frame header", b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 40, "no frame header before marker 0xDA"),
        ("png cut in its header", png[:20], "its header is cut short"),
        ("bmp cut in its header", bmp[:20], "its header is cut short"),
        ("animated png", _animated(png), "animated PNGs are not accepted"),
        # Costly to walk rather than to decode: a Python loop turn per segment would take seconds.
        ("jpeg of 100k stuffed 0xFF00 before its frame", b"\xff\xd8" + b"\xff\x00" * 100_000 + _jpeg(small)[2:],
         "more than 1000 markers before its frame header"),
        ("jpeg of 50k empty comments", b"\xff\xd8" + b"\xff\xfe\x00\x02" * 50_000 + _jpeg(small)[2:],
         "more than 1000 markers before its frame header"),
        ("png of 20k empty chunks", png[:33] + _png_chunk(b"tEXt", b"") * 20_000 + png[33:],
         "more than 1000 chunks before its image data"),
        ("png declaring 0x0", png[:16] + struct.pack(">II", 0, 0) + png[24:], "declares 0x0"),
        ("webp", cv2.imencode(".webp", small)[1].tobytes(), "accepts JPEG, PNG or BMP"),
        ("tiff", cv2.imencode(".tiff", small)[1].tobytes(), "accepts JPEG, PNG or BMP"),
    ]


def test_headers_give_the_size_the_decoder_uses():
    small = _small()
    for name, data in [("jpeg", _jpeg(small)), ("progressive", _jpeg(small, progressive=True)),
                       ("junk", _junk_after_app0(_jpeg(small), b"\x00\x01\xff\x00")),
                       ("png", cv2.imencode(".png", small)[1].tobytes()),
                       ("bmp", cv2.imencode(".bmp", small)[1].tobytes()),
                       ("bmp top-down", _bmp_header(7, -5)[:-64] + b"\0" * (5 * 24))]:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None, name
        assert header_size(data) == (decoded.shape[1], decoded.shape[0]), name
    limits = ImageLimits(1 << 20, MAX_PIXELS, MAX_PIXELS * DECODE_BYTES_PER_PIXEL)
    junk = _junk_after_app0(_jpeg(small))  # accepted: junk between segments is not an error, only a hiding place
    assert decode_image(EncodedImage(junk), limits).shape == small.shape
    for name, data, message in _hostile():
        with pytest.raises(SlimYoloError, match=re.escape(message)) as err:
            decode_image(EncodedImage(data), limits, "frame")
        assert str(err.value).startswith("frame.encoded: "), name


def test_decodes_share_the_memory_budget():
    """A decode waits while others hold the budget: the order of events shows it, whatever the timing."""
    limits = ImageLimits(1 << 20, 100, 100 * DECODE_BYTES_PER_PIXEL)
    events: list[str] = []
    second_started = threading.Event()

    def second() -> None:
        second_started.set()
        with limits.decoding(60):
            events.append("second decodes")

    with limits.decoding(60):
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(30)
        events.append("first done")
    thread.join(30)
    assert events == ["first done", "second decodes"]
    with limits.decoding(10**6):  # more than the whole budget: decodes alone rather than never
        pass


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes (VmHWM of /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


@pytest.fixture(scope="module")
def service(mini_ir, tmp_path_factory):
    """``slimyolo serve inference`` in its own process, serving the mini model, 4 M pixels at most."""
    import shutil

    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(mini_ir, root / "models" / "mini" / "1")
    env = dict(os.environ, SLIMYOLO_MAX_IMAGE_PIXELS=str(MAX_PIXELS), OMP_NUM_THREADS="1")
    log = root / "inference.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "slimyolo", "serve", "inference", "--bind", "127.0.0.1",
                                 "--port", "0", "--metrics-port", "0", "--model-repository", str(root / "models"),
                                 "--poll-seconds", "0", "--precision", "f32", "--grace-seconds", "2"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 240
        while not (found := SERVING_LINE.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, f"the service exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the service did not start: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        channel = connect(f"127.0.0.1:{found.group(1)}")
        wait_ready(channel, "", timeout=120)
        yield proc, inference_pb2_grpc.InferenceStub(channel), log
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _detect(stub, data: bytes) -> inference_pb2.DetectResponse:
    return stub.Detect(inference_pb2.DetectRequest(model_name="mini", image=inference_pb2.Image(encoded=data)),
                       timeout=60)


def test_hostile_images_are_refused_before_decoding_and_the_server_keeps_serving(service):
    proc, stub, log = service
    small = _small()
    assert _detect(stub, _jpeg(small)).image_width == 160
    before = _vm_hwm(proc.pid)
    for name, data, message in _hostile():
        with pytest.raises(grpc.RpcError) as err:
            _detect(stub, data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
        assert err.value.details().startswith("image.encoded: ") and message in err.value.details(), name
    # All at once, as 32 clients would send them: still refused, still no memory.
    hostile = [data for _, data, _ in _hostile()] * 2
    codes: list[grpc.StatusCode] = []

    def send(data: bytes) -> None:
        try:
            _detect(stub, data)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=send, args=(data,)) for data in hostile]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * len(hostile)
    grown = _vm_hwm(proc.pid) - before
    assert grown < 64 * 1024 * 1024, f"peak memory grew by {grown / 2**20:.0f} MiB"  # one bomb decoded: 1.2 GB
    # Still serving, and junk between JPEG segments is no reason to refuse an honest image.
    assert _detect(stub, _junk_after_app0(_jpeg(small))).image_height == 120
    assert proc.poll() is None and "Traceback" not in log.read_text(errors="replace")


def test_opencv_limit_follows_the_service_setting(tmp_path):
    """OPENCV_IO_MAX_IMAGE_PIXELS is set from SLIMYOLO_MAX_IMAGE_PIXELS when slimyolo.serving loads
    before cv2, as in `slimyolo serve inference`: OpenCV itself then refuses larger images."""
    png = tmp_path / "100x100.png"
    cv2.imwrite(str(png), np.zeros((100, 100, 3), np.uint8))
    script = ("import slimyolo.serving, cv2, numpy as np, os, sys\n"
              f"data = np.fromfile({str(png)!r}, np.uint8)\n"
              "try:\n    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)\nexcept cv2.error:\n    decoded = None\n"
              "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'], decoded is None)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    for pixels, refused in (("9999", True), ("10000", False)):
        out = subprocess.run([sys.executable, "-c", script], env={**env, "SLIMYOLO_MAX_IMAGE_PIXELS": pixels},
                             capture_output=True, text=True, timeout=120, check=True).stdout.split()
        assert out == [pixels, str(refused)]
