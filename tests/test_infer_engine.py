"""The OpenVINO engine on a trained detector: same detections as PyTorch, pipelining, the u8 IR,
the 2x2 mosaic against one-by-one inference, sources, bench, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest
import torch
from openvino import opset13 as ops

from slimyolo.convert import convert
from slimyolo.cpuinfo import cpu_info
from slimyolo.darknet.weights import checkpoint_cfg
from slimyolo.data.dataset import read_data_file
from slimyolo.data.letterbox import letterbox, unletterbox_boxes
from slimyolo.errors import NotFoundError, SlimYoloError
from slimyolo.infer.bench import run_bench
from slimyolo.infer.decode import box_iou, detect
from slimyolo.infer.detect import run_detect
from slimyolo.infer.engine import Engine
from slimyolo.infer.meta import InputSpec, ModelMeta, attach_meta
from slimyolo.infer.mosaic import MosaicDetector
from slimyolo.infer.sources import Source

CONF = 0.05
STRONG = 0.1  # the mini model is small: its confident detections score above this


@pytest.fixture(scope="module")
def irs(trained_mini, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    plain = convert(None, trained_mini.weights, repo, name="mini", version=1, via="torch",
                    calib_data=trained_mini.data, onnx=True)
    u8 = convert(None, trained_mini.weights, repo, name="mini", version=2, via="torch",
                 calib_data=trained_mini.data, ppp="resize")
    return plain.path, u8.path


@pytest.fixture(scope="module")
def images(trained_mini):
    spec = read_data_file(trained_mini.data)
    return [cv2.imread(str(p)) for p in spec.valid[:8]]


def _torch_detections(trained_mini, image: np.ndarray) -> np.ndarray:
    """The reference: the PyTorch model on the host letterbox, decoded and mapped back."""
    from slimyolo.darknet.model import load_model

    model = load_model(checkpoint_cfg(trained_mini.weights), trained_mini.weights)
    h, w = model.input_size
    canvas, lb = letterbox(image, h, w)
    x = torch.from_numpy(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255)
    with torch.no_grad():
        raws = [r.numpy() for r in model(x)]
    (det,) = detect(raws, model.heads, CONF, 0.45)
    det[:, :4] = unletterbox_boxes(det[:, :4], lb)
    return det


def _as_array(d) -> np.ndarray:
    return np.concatenate([d.boxes, d.scores[:, None], d.classes[:, None].astype(np.float32)], axis=1)


def test_ir_detections_equal_pytorch(irs, images, trained_mini):
    engine = Engine(irs[0], precision="f32", conf_thres=CONF)
    total = 0
    for image in images:
        ours = _as_array(engine.detect(image))
        ref = _torch_detections(trained_mini, image)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours[:, :4], ref[:, :4], atol=0.05)
        np.testing.assert_allclose(ours[:, 4], ref[:, 4], atol=1e-4)
        assert np.array_equal(ours[:, 5], ref[:, 5])
        total += len(ours)
    assert total >= len(images)  # a trained model finds objects on its validation images


def test_completions_run_on_a_python_thread_the_interpreter_joins(irs, images):
    """No Python runs on OpenVINO's threads: a completion handled there could still need the
    GIL while the interpreter finalizes, and the process aborted after its work was done
    ("terminate called without an active exception", 2 % of short scripts). Completions run on
    the engine's own non-daemon thread, which the interpreter joins before it finalizes."""
    threads: list[threading.Thread] = []
    engine = Engine(irs[0], hint="throughput", on_infer=lambda _: threads.append(threading.current_thread()))
    tensor, _ = engine.prepare(images[0])
    futures = [engine.submit(tensor) for _ in range(3 * engine.num_requests)]
    engine.wait()
    assert all(f.done() for f in futures)
    assert len(threads) == len(futures)
    assert {type(t) for t in threads} == {threading.Thread}  # not threading._DummyThread: a foreign thread
    assert not any(t.daemon for t in threads)
    threads[-1].join(timeout=5)  # idle, the collector ends (it lingers a moment for the next frame)
    assert not threads[-1].is_alive()
    assert len(engine.detect(images[0])) == len(engine.detect(images[0]))  # and starts again on demand


def test_callers_infer_concurrently_on_the_request_pool_each_its_own_result(irs, images, monkeypatch):
    """Engine.infer from many threads at once (the inference service's gRPC threads): each caller gets the heads of
    its own frame, bit-equal to the frame inferred alone, ``started`` is called once per call, at most
    ``num_requests`` run at a time, and wait() waits for them; mixed with submit() on the same requests."""
    import openvino as ov

    engine = Engine(irs[0], hint="throughput", precision="f32", num_requests=2)
    tensors = [engine.prepare(im)[0] for im in images]
    alone = [engine.infer(t) for t in tensors]
    running, most, lock = [0], [0], threading.Lock()
    infer = ov.InferRequest.infer

    def counted(self, *args, **kwargs):  # counts the inferences in flight
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return infer(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(ov.InferRequest, "infer", counted)
    results: dict[int, list] = {}
    started: list[int] = []

    def call(i: int) -> None:
        results[i] = engine.infer(tensors[i % len(tensors)], lambda: started.append(i))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4 * len(tensors))]
    futures = [engine.submit(t) for t in tensors]  # the collector's path shares the pool meanwhile
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.wait()
    assert sorted(started) == list(range(len(threads)))
    assert 1 <= most[0] <= engine.num_requests
    for i, heads in results.items():
        assert all(np.array_equal(h, a) for h, a in zip(heads, alone[i % len(tensors)], strict=True))
    for future, own in zip(futures, alone, strict=True):
        assert all(np.array_equal(h, a) for h, a in zip(future.result(), own, strict=True))
    # a strided array (not C-contiguous, as an NHWC IR's RGB view of a BGR frame) is read as its values
    strided = np.asfortranarray(tensors[0])
    assert not strided.flags["C_CONTIGUOUS"]
    for heads in (engine.infer(strided), engine.submit(strided).result()):
        assert all(np.array_equal(h, a) for h, a in zip(heads, alone[0], strict=True))


def test_pipelined_stream_keeps_order_and_results(irs, images):
    engine = Engine(irs[0], hint="throughput", precision="f32", conf_thres=CONF, num_requests=3)
    one_by_one = [_as_array(engine.detect(im)) for im in images]
    streamed = [_as_array(d) for d in engine.detect_stream(iter(images))]
    assert len(streamed) == len(images)
    for a, b in zip(one_by_one, streamed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_u8_ir_with_letterbox_inside_matches(irs, images):
    plain = Engine(irs[0], precision="f32", conf_thres=CONF)
    u8 = Engine(irs[1], precision="f32", conf_thres=CONF)
    assert u8.meta.input.resize_inside and u8.meta.input.element_type == "u8"
    checked = 0
    for image in images:
        a, b = _as_array(plain.detect(image)), _as_array(u8.detect(image))
        confident = a[a[:, 4] > STRONG]
        for row in confident:  # OpenVINO's resize differs from OpenCV's by rounding only
            same = b[(b[:, 5] == row[5])]
            assert len(same) and box_iou(row[None, :4], same[:, :4]).max() > 0.9
            checked += 1
    assert checked >= 3


def _matched(a: np.ndarray, b: np.ndarray, iou: float) -> int:
    return sum(1 for row in a if len(b[b[:, 5] == row[5]])
               and box_iou(row[None, :4], b[b[:, 5] == row[5]][:, :4]).max() >= iou)


def test_mosaic_matches_one_by_one_and_stays_in_its_stream(irs, images):
    single = Engine(irs[0], precision="f32", conf_thres=CONF)
    mosaic = MosaicDetector.open(irs[0], 2, precision="f32", conf_thres=CONF)
    assert mosaic.engine.input_size == (192, 192)
    four = images[:4]
    tiles = mosaic.detect(four)
    confident = 0
    for image, tile in zip(four, tiles, strict=True):
        alone = _as_array(single.detect(image))
        together = _as_array(tile)
        h, w = image.shape[:2]
        assert (together[:, [0, 2]] >= 0).all() and (together[:, [0, 2]] <= w).all()
        assert (together[:, [1, 3]] >= 0).all() and (together[:, [1, 3]] <= h).all()
        strong = alone[alone[:, 4] > STRONG]
        confident += len(strong)
        # Confident objects are found again at the same place (the context across a tile
        # border differs, so a tolerance on the boxes).
        assert _matched(strong, together, 0.5) == len(strong)
    assert confident >= 2


def test_mosaic_streams_of_different_lengths_do_not_stall(irs, images, tmp_path):
    videos = []
    for n, frames in enumerate((3, 9)):
        path = tmp_path / f"v{n}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
        for i in range(frames):
            writer.write(cv2.resize(images[i % len(images)], (96, 96)))
        writer.release()
        videos.append(str(path))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images[:2]):
        cv2.imwrite(str(folder / f"im{i}.png"), image)
    summary = run_detect(irs[0], [*videos, str(folder)], tmp_path / "out", mosaic=2, precision="f32")
    assert summary.frames == 3 + 9 + 2
    lines = [json.loads(line) for line in (tmp_path / "out/detections.jsonl").read_text().splitlines()]
    per_source = {s: sorted(r["frame"] for r in lines if r["source"] == s) for s in range(3)}
    assert per_source == {0: [0, 1, 2], 1: list(range(9)), 2: [0, 1]}
    assert (tmp_path / "out/0-v0.mp4").stat().st_size > 0 and len(list((tmp_path / "out/2-imgs").glob("*.jpg"))) == 2


def test_bench_reports_fps_and_latency_percentiles(irs):
    result = run_bench(irs[0], hint="latency", precision="f32", seconds=0.5, compare=True)
    for part in (result, result["infer"], result["compare"]["onnxruntime"]):
        lat = part["latency_ms"]
        assert part["fps"] > 0 and part["frames"] >= 1
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    # No --cfg/--weights: PyTorch runs the .pt that conversion.json records (still there, same sha256).
    assert result["compare"]["pytorch"]["fps"] > 0 and result["compare"]["pytorch"]["weights"].endswith(".pt")
    # The figure names the CPU it was measured on (model name, cores, the SIMD flags OpenVINO picks kernels by).
    assert result["cpu"] == cpu_info() and result["cpu"]["cores"] >= 1 and isinstance(result["cpu"]["isa"], list)


def _bare_ir(path: Path, channels: int = 3, meta: bool = True, heads=()) -> Path:
    param = ops.parameter([1, channels, 32, 32], np.float32, name="images")
    model = ov.Model([ops.relu(param)], [param], "m")
    if meta:
        attach_meta(model, ModelMeta(("a",), InputSpec("images", 32, 32), tuple(heads), ("out",)))
    ov.save_model(model, path)
    return path


def test_bad_models_and_inputs_are_clear_errors(irs, tmp_path):
    with pytest.raises(NotFoundError, match="no such IR"):
        Engine(tmp_path / "missing.xml")
    with pytest.raises(SlimYoloError, match="carries no SlimYOLO metadata"):
        Engine(_bare_ir(tmp_path / "bare.xml", meta=False))
    with pytest.raises(SlimYoloError, match="does not fit a 3-channel NCHW image input"):
        Engine(_bare_ir(tmp_path / "gray.xml", channels=1))
    (tmp_path / "junk.xml").write_text("<net>")
    with pytest.raises(SlimYoloError, match="not a readable OpenVINO IR"):
        Engine(tmp_path / "junk.xml")
    with pytest.raises(SlimYoloError, match="resizes its input inside"):
        MosaicDetector.open(irs[1], 2)
    engine = Engine(irs[0])
    with pytest.raises(SlimYoloError, match="expected a BGR uint8 image"):
        engine.detect(np.zeros((32, 32), np.uint8))


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no such file or folder"):
        Source(str(tmp_path / "missing.mp4"))
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SlimYoloError, match="not a readable video or image"):
        Source(str(tmp_path / "broken.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlimYoloError, match="holds no images"):
        Source(str(tmp_path / "empty"))


def test_inference_side_needs_neither_torch_nor_tensorflow(irs, images, tmp_path):
    """The inference image has no torch/tensorflow: the engine must run without them."""
    cv2.imwrite(str(tmp_path / "im.png"), images[0])
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'keras', 'nncf'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import cv2
from slimyolo.infer.engine import Engine
from slimyolo.infer.mosaic import MosaicDetector
from slimyolo.infer.detect import run_detect
import slimyolo.cli
det = Engine({str(irs[0])!r}).detect(cv2.imread({str(tmp_path / "im.png")!r}))
print(len(det))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 0


def test_a_model_folder_means_its_newest_version_and_compare_finds_the_source(tmp_path, run_cli, monkeypatch):
    """``--model models/NAME``: the newest complete version (as the server serves); ``bench --compare``
    without --cfg/--weights takes the source files conversion.json records, or says on stderr why not."""
    import shutil

    from conftest import mini_cfg

    from slimyolo.infer.engine import resolve_ir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.cfg").write_text(mini_cfg(64))
    assert run_cli("init", "m.cfg", "--out", "m.weights")[0] == 0
    first = convert("m.cfg", "m.weights", "models", name="mini", version=1, via="torch", parity_images=1).path
    shutil.copytree(first, "models/mini/2")
    (tmp_path / "models/mini/10").mkdir()  # a version still arriving: no conversion.json
    assert resolve_ir("models/mini") == Path("models/mini/2/model.xml")
    cv2.imwrite("street.jpg", np.full((48, 80, 3), 90, np.uint8))
    code, _, err = run_cli("detect", "--model", "models/mini", "--source", "street.jpg", "--out", "out")
    assert code == 0 and "models/mini: using version 2, the newest" in err, err
    assert (tmp_path / "out/0-street/street.jpg").is_file() and (tmp_path / "out/detections.jsonl").is_file()
    code, _, err = run_cli("detect", "--model", "nothing", "--source", "street.jpg")
    assert code == 2 and "no such IR" in err

    result = run_bench("models/mini/1", seconds=0.2, compare=True)
    assert result["compare"]["pytorch"]["fps"] > 0 and result["compare"]["pytorch"]["weights"] == "m.weights"
    Path("m.weights").unlink()  # the source is gone: skipped, and said so on stderr (also with --json)
    code, out, err = run_cli("bench", "--model", "models/mini/1", "--seconds", "0.2", "--compare", "--json")
    assert code == 0 and "skipped" in json.loads(out)["compare"]["pytorch"]
    assert "slimyolo: --compare: pytorch skipped: give --weights" in err
    assert "slimyolo: --compare: onnxruntime skipped: no ONNX file" in err
