"""The inference service over gRPC, in-process on 127.0.0.1: the Open Inference Protocol (KServe v2)
and the detection API against the OpenVINO engine on the same inputs, video streams multiplexed
through the mosaic, bad requests, readiness and metrics."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from slimyolo import __version__
from slimyolo.data.dataset import read_data_file
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import box_iou
from slimyolo.infer.engine import Engine
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc
from slimyolo.rpc.server import LIVENESS
from slimyolo.services.inference import INFERENCE, KSERVE
from slimyolo.serving.kserve import InputTensor, TensorSpec, datatype_of, decode_inputs, encode_output

CONF = 0.05
STRONG = 0.1  # the mini model is small: its confident detections score above this
MAX_MESSAGE = 2 * 1024 * 1024
Infer = kserve_pb2.ModelInferRequest
Tensor = kserve_pb2.ModelInferRequest.InferInputTensor


SERVER = {"max_message_bytes": MAX_MESSAGE}  # the ServerConfig of every service started here (start_inference)


@pytest.fixture(scope="module")
def served(mini_ir, tmp_path_factory, start_inference):
    import shutil

    repo = tmp_path_factory.mktemp("served")
    shutil.copytree(mini_ir, repo / "mini" / "1")
    server, plane = start_inference(repo, SERVER, poll_seconds=0, batch_window_ms=50, max_image_bytes=300_000,
                                    max_image_pixels=1_000_000)
    channel = connect(f"127.0.0.1:{server.port}", MAX_MESSAGE * 4)
    wait_ready(channel, "", timeout=120)
    yield server, plane, channel
    channel.close()
    server.stop(0)
    plane.close()


@pytest.fixture(scope="module")
def images(trained_mini, mini_ir):
    """Validation images on which the model is confident, so that detections tell images apart."""
    engine = Engine(mini_ir, precision="f32", conf_thres=STRONG)
    found = [im for im in (cv2.imread(str(p)) for p in read_data_file(trained_mini.data).valid)
             if len(engine.detect(im))]
    assert len(found) >= 12, len(found)
    return found


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _as_array(d) -> np.ndarray:
    return np.concatenate([d.boxes, d.scores[:, None], d.classes[:, None].astype(np.float32)], axis=1)


def _proto_array(detections) -> np.ndarray:
    return np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, d.class_id] for d in detections],
                    np.float32).reshape(-1, 6)


def _matched(a: np.ndarray, b: np.ndarray, iou: float) -> int:
    return sum(1 for row in a if len(b[b[:, 5] == row[5]])
               and box_iou(row[None, :4], b[b[:, 5] == row[5]][:, :4]).max() >= iou)


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=60, **kwargs)
    return err.value.code(), err.value.details()


def _metrics(server) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- Open Inference Protocol ----------------------------------------------------------------------


def test_kserve_metadata_and_infer_agree_with_the_engine(served, mini_ir, images):
    _, _, channel = served
    ks = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert ks.ServerLive(kserve_pb2.ServerLiveRequest()).live
    assert ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
    ready = [ks.ModelReady(kserve_pb2.ModelReadyRequest(name="mini", version=v)).ready for v in ("", "1", "2")]
    assert ready == [True, True, False]  # a version not (yet) served is not ready
    code, details = _code(ks.ModelReady, kserve_pb2.ModelReadyRequest(name="nothing"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nothing' is not in the model repository" in details  # as metadata
    meta = ks.ServerMetadata(kserve_pb2.ServerMetadataRequest())
    assert (meta.name, meta.version) == ("slimyolo", __version__)
    model = ks.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="mini"))
    assert (model.name, list(model.versions), model.platform) == ("mini", ["1"], "openvino")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("images", "FP32", [-1, 3, 96, 96])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("yolo_8", "FP32", [-1, 21, 6, 6])]

    engine = Engine(mini_ir, precision="f32")
    x = np.concatenate([engine.prepare(im)[0] for im in images[:2]])  # two letterboxed images: a batch of 2
    (expected,) = engine.infer(x)
    tensor = {"name": "images", "datatype": "FP32", "shape": list(x.shape)}
    raw = ks.ModelInfer(Infer(model_name="mini", id="req-1", inputs=[Tensor(**tensor)],
                              raw_input_contents=[x.astype("<f4").tobytes()]))
    typed = ks.ModelInfer(Infer(model_name="mini", model_version="1", outputs=[Infer.InferRequestedOutputTensor(
        name="yolo_8")], inputs=[Tensor(**tensor, contents=kserve_pb2.InferTensorContents(
            fp32_contents=x.ravel().tolist()))]))
    for response in (raw, typed):
        assert (response.model_name, response.model_version) == ("mini", "1")
        (out,) = response.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("yolo_8", "FP32", [2, 21, 6, 6])
        got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(out.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert raw.id == "req-1" and typed.id == ""
    code, details = _code(ks.ModelMetadata, kserve_pb2.ModelMetadataRequest(name="nothing"))
    assert code == grpc.StatusCode.NOT_FOUND and "'nothing'" in details


def test_kserve_bad_requests_name_the_field_and_the_server_keeps_serving(served):
    _, _, channel = served
    ks = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = np.zeros((1, 3, 96, 96), np.float32)
    good = {"name": "images", "datatype": "FP32", "shape": [1, 3, 96, 96]}
    raw = [x.tobytes()]
    fp32 = kserve_pb2.InferTensorContents(fp32_contents=x.ravel().tolist())
    NF, IA = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (Infer(model_name="nothing", inputs=[Tensor(**good)], raw_input_contents=raw), NF, "'nothing'"),
        (Infer(model_name="mini", model_version="7", inputs=[Tensor(**good)], raw_input_contents=raw), NF,
         "version '7' is not loaded"),
        (Infer(model_name="mini", inputs=[Tensor(**{**good, "datatype": "FP64"})], raw_input_contents=raw), IA,
         "inputs[0].datatype: 'FP64', but input images is FP32"),
        (Infer(model_name="mini", inputs=[Tensor(**{**good, "shape": [1, 3, 64, 64]})], raw_input_contents=raw), IA,
         "inputs[0].shape: [1, 3, 64, 64] does not fit input images of shape [-1, 3, 96, 96]"),
        (Infer(model_name="mini", inputs=[Tensor(**{**good, "shape": [3, 96, 96]})], raw_input_contents=raw), IA,
         "inputs[0].shape"),
        (Infer(model_name="mini", inputs=[Tensor(**good)], raw_input_contents=[raw[0][:-4]]), IA,
         "raw_input_contents[0]: 110588 bytes, shape [1, 3, 96, 96] of FP32 needs 110592"),
        (Infer(model_name="mini", inputs=[Tensor(**good, contents=kserve_pb2.InferTensorContents(
            int_contents=[0] * x.size))]), IA, "inputs[0].contents.int_contents: a FP32 tensor carries its values "
                                               "in contents.fp32_contents"),
        (Infer(model_name="mini", inputs=[Tensor(**good, contents=kserve_pb2.InferTensorContents(
            fp32_contents=[0.0] * 5))]), IA, "inputs[0].contents.fp32_contents: 5 values"),
        (Infer(model_name="mini", inputs=[Tensor(**good, contents=fp32)], raw_input_contents=raw), IA,
         "inputs[0].contents: set together with raw_input_contents"),
        (Infer(model_name="mini", inputs=[Tensor(**good)], raw_input_contents=raw * 2), IA,
         "raw_input_contents: 2 entries for 1 inputs"),
        (Infer(model_name="mini", inputs=[Tensor(**{**good, "name": "pixels"})], raw_input_contents=raw), IA,
         "inputs[0].name: 'pixels' is not an input"),
        (Infer(model_name="mini"), IA, "inputs: missing images"),
        (Infer(model_name="mini", inputs=[Tensor(**good)], raw_input_contents=raw,
               outputs=[Infer.InferRequestedOutputTensor(name="boxes")]), IA, "outputs[0].name: 'boxes'"),
    ]
    for request, code, message in cases:
        got, details = _code(ks.ModelInfer, request)
        assert (got, message in details) == (code, True), (details, message)
    ok = ks.ModelInfer(Infer(model_name="mini", inputs=[Tensor(**good)], raw_input_contents=raw))
    assert len(ok.raw_output_contents[0]) == 21 * 6 * 6 * 4


def test_tensor_rules_of_the_protocol():
    """Datatypes other than the mini model's FP32: typed fields, ranges, raw-only types, output bytes."""
    u8 = (TensorSpec("images", "UINT8", (-1, -1, -1, 3)),)
    pixels = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3) % 256
    typed = InputTensor("images", "UINT8", (2, 4, 5, 3), {"uint_contents": pixels.ravel().tolist()})
    (got,) = decode_inputs(u8, [typed], []).values()
    assert got.dtype == np.uint8 and (got == pixels).all()
    raw = decode_inputs(u8, [InputTensor("images", "UINT8", (2, 4, 5, 3))], [pixels.astype(np.uint8).tobytes()])
    assert (raw["images"] == pixels).all()
    with pytest.raises(SlimYoloError, match=r"inputs\[0\].contents.uint_contents: values outside the UINT8 range"):
        decode_inputs(u8, [InputTensor("images", "UINT8", (1, 1, 1, 3), {"uint_contents": [0, 256, 1]})], [])
    with pytest.raises(SlimYoloError, match=r"inputs\[0\].shape: \[1, 0, 1, 3\] has a dimension below 1"):
        decode_inputs(u8, [InputTensor("images", "UINT8", (1, 0, 1, 3))], [b""])
    f16 = (TensorSpec("x", "FP16", (2,)),)
    half = np.array([1.5, -2.0], "<f2")
    assert (decode_inputs(f16, [InputTensor("x", "FP16", (2,))], [half.tobytes()])["x"] == half).all()
    with pytest.raises(SlimYoloError, match=r"contents.fp32_contents: a FP16 tensor carries its values in "
                                            "raw_input_contents only"):
        decode_inputs(f16, [InputTensor("x", "FP16", (2,), {"fp32_contents": [1.5, -2.0]})], [])
    i64 = (TensorSpec("n", "INT64", (3,)),)
    assert decode_inputs(i64, [InputTensor("n", "INT64", (3,), {"int64_contents": [1, -2, 3]})], [])["n"].tolist() \
        == [1, -2, 3]
    out = encode_output("y", np.array([[1.0, 2.5]], np.float32))
    assert (out.datatype, out.shape, out.data) == ("FP32", (1, 2), np.array([1.0, 2.5], "<f4").tobytes())
    assert datatype_of(np.dtype(">f4")) == "FP32"


# -- detection ----------------------------------------------------------------------------------


def _detect(stub, image: inference_pb2.Image, model: str = "mini", **options) -> inference_pb2.DetectResponse:
    return stub.Detect(inference_pb2.DetectRequest(model_name=model, image=image,
                                                   options=inference_pb2.DetectionOptions(**options)), timeout=60)


def test_detect_returns_the_boxes_of_engine_detect(served, mini_ir, images):
    _, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    default, low = Engine(mini_ir, precision="f32"), Engine(mini_ir, precision="f32", conf_thres=CONF)
    found = 0
    for i, image in enumerate(images[:6]):
        data = _png(image) if i % 2 else cv2.imencode(".jpg", image)[1].tobytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # JPEG is lossy
        for engine, options in ((default, {}), (low, {"conf_threshold": CONF})):
            response = _detect(stub, inference_pb2.Image(encoded=data), **options)
            expected = _as_array(engine.detect(decoded))
            got = _proto_array(response.detections)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-3)
            assert [d.class_name for d in response.detections] == [engine.meta.names[int(c)] for c in expected[:, 5]]
            assert (response.model_name, response.model_version) == ("mini", "1")
            assert (response.image_width, response.image_height) == (image.shape[1], image.shape[0])
            found += len(got)
        raw = inference_pb2.Image(raw=inference_pb2.RawImage(height=image.shape[0], width=image.shape[1],
                                                             bgr=image.tobytes()))
        np.testing.assert_allclose(_proto_array(_detect(stub, raw, conf_threshold=CONF).detections),
                                   _as_array(low.detect(image)), atol=1e-3)
        top = _detect(stub, raw, conf_threshold=CONF, max_detections=1).detections
        np.testing.assert_allclose(_proto_array(top), _as_array(low.detect(image))[:1], atol=1e-3)
    assert found > 6


def test_detect_bad_requests_and_the_server_keeps_serving(served, images):
    _, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big_png, big_jpeg = _png(np.zeros((1000, 1500, 3), np.uint8)), cv2.imencode(".jpg", np.zeros((1000, 1200, 3)))[1]
    image = images[0]
    IA = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (inference_pb2.Image(encoded=_png(image)), {"model": "nothing"}, grpc.StatusCode.NOT_FOUND, "'nothing'"),
        (inference_pb2.Image(encoded=b"not an image at all"), {}, IA, "image.encoded: not a decodable image"),
        (inference_pb2.Image(), {}, IA, "image: an image is required"),
        (inference_pb2.Image(encoded=_png(noise)), {}, IA, "more than the 300,000 this server accepts"),
        (inference_pb2.Image(encoded=big_png), {}, IA, "image.encoded: 1500x1000 is 1,500,000 pixels"),
        (inference_pb2.Image(encoded=big_jpeg.tobytes()), {}, IA, "image.encoded: 1200x1000 is 1,200,000 pixels"),
        (inference_pb2.Image(raw=inference_pb2.RawImage(height=10, width=10, bgr=b"\0" * 299)), {}, IA,
         "image.raw.bgr: 299 bytes, expected height*width*3 = 300"),
        (inference_pb2.Image(encoded=_png(image)), {"conf_threshold": 1.5}, IA, "options.conf_threshold"),
        # NMS work grows with the boxes kept: a client cannot ask for unbounded work.
        (inference_pb2.Image(encoded=_png(image)), {"max_detections": 1001}, IA,
         "options.max_detections: must be in [0, 1000], got 1001"),
    ]
    for im, options, code, message in cases:
        got, details = _code(stub.Detect, inference_pb2.DetectRequest(
            model_name=options.pop("model", "mini"), image=im, options=inference_pb2.DetectionOptions(**options)))
        assert (got, message in details) == (code, True), (details, message)
    # Beyond the server's message limit gRPC itself refuses the call before it reaches the service.
    got, _ = _code(stub.Detect, inference_pb2.DetectRequest(model_name="mini", image=inference_pb2.Image(
        encoded=b"\0" * (MAX_MESSAGE + 1))))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _detect(stub, inference_pb2.Image(encoded=_png(image))).model_version == "1"


# -- video streams ----------------------------------------------------------------------------


def _frame(stream: str, frame_id: int, image: np.ndarray, model: str = "mini") -> inference_pb2.DetectStreamRequest:
    return inference_pb2.DetectStreamRequest(model_name=model, stream_id=stream, frame_id=frame_id,
                                             frame=inference_pb2.Image(encoded=_png(image)),
                                             options=inference_pb2.DetectionOptions(conf_threshold=CONF))


def _lockstep(stub, stream: str, frames: list[np.ndarray]) -> list[inference_pb2.DetectStreamResponse]:
    """A client that sends a frame, waits for its answer, sends the next (a live camera at the server's pace)."""
    outbox: queue.Queue = queue.Queue()
    responses = stub.DetectStream(iter(outbox.get, None), timeout=120)
    got = []
    for i, image in enumerate(frames):
        outbox.put(_frame(stream, i, image))
        got.append(next(responses))
    outbox.put(None)
    assert next(responses, None) is None
    return got


def _check_streams(answers: dict[str, list], frames: dict[str, list[np.ndarray]], single: Engine) -> int:
    """Each stream's answers are its own frames', in order; returns how many frames shared an inference.

    A frame that ran alone (on the native-size engine) has exactly Engine.detect's boxes. In a
    shared mosaic the context across a tile border differs, which can move or drop a box near
    the border, so there the confident one-by-one boxes must be found again (same class, IoU >= 0.5)
    as a whole: four in five of them (about 99 % are). Boxes routed to the wrong stream match about 11 %.
    """
    shared = matched = strong_boxes = 0
    for stream, responses in answers.items():
        assert [(r.stream_id, r.frame_id) for r in responses] == [(stream, i) for i in range(len(frames[stream]))]
        for response, image in zip(responses, frames[stream], strict=True):
            alone, got = _as_array(single.detect(image)), _proto_array(response.detections)
            assert response.model_version == "1"
            if response.mosaic_streams == 1:
                np.testing.assert_allclose(got, alone, atol=1e-3)
                continue
            shared += 1
            h, w = image.shape[:2]
            assert (got[:, [0, 2]] >= 0).all() and (got[:, [0, 2]] <= w).all()
            assert (got[:, [1, 3]] >= 0).all() and (got[:, [1, 3]] <= h).all()
            strong = alone[alone[:, 4] > STRONG]
            matched, strong_boxes = matched + _matched(strong, got, 0.5), strong_boxes + len(strong)
    assert matched >= 0.8 * strong_boxes, (matched, strong_boxes)
    return shared


def test_detect_stream_shares_mosaics_between_clients_and_answers_each_its_own(mini_ir, images, tmp_path,
                                                                              start_inference):
    import shutil

    shutil.copytree(mini_ir, tmp_path / "mini" / "1")
    # A long batch window, so that the cameras' frames surely meet even on a busy machine; four
    # cameras fill the 2x2 mosaic, which then runs at once.
    server, plane = start_inference(tmp_path, SERVER, poll_seconds=0, batch_window_ms=2000)
    try:
        with connect(f"127.0.0.1:{server.port}") as channel:
            wait_ready(channel, "", timeout=120)
            stub = inference_pb2_grpc.InferenceStub(channel)
            groups = {f"cam{c}": images[3 * c:3 * c + 3] for c in range(4)}
            start = threading.Barrier(len(groups))
            results: dict[str, list] = {}

            def client(stream: str) -> None:
                start.wait()
                results[stream] = _lockstep(stub, stream, groups[stream])

            threads = [threading.Thread(target=client, args=(s,)) for s in groups]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
    finally:
        server.stop(0)
        plane.close()
    assert set(results) == set(groups)
    # Each camera has one frame in flight at a time: a shared inference holds frames of several cameras.
    assert _check_streams(results, groups, Engine(mini_ir, precision="f32", conf_thres=CONF)) >= 2


def test_one_call_carries_several_streams_in_order(served, mini_ir, images):
    _, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    left, right = images[0:3], images[3:6]
    sent = [_frame("left", i, im) for i, im in enumerate(left)] + [_frame("right", i, im) for i, im in enumerate(right)]
    sent[1].ClearField("model_name")  # later messages may leave the model out
    responses = list(stub.DetectStream(iter(sent), timeout=120))
    _check_streams({"left": responses[:3], "right": responses[3:]}, {"left": left, "right": right},
                   Engine(mini_ir, precision="f32", conf_thres=CONF))


def test_a_client_that_stops_sending_does_not_stall_the_others(served, images):
    server, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    before = _metrics(server)
    resume = threading.Event()

    def silent_after_one():
        yield _frame("slow", 0, images[0])
        resume.wait(120)  # the client keeps its call open and sends nothing
        yield _frame("slow", 1, images[1])

    def gone_after_one():
        yield _frame("gone", 0, images[0])
        resume.wait(120)

    slow = stub.DetectStream(silent_after_one(), timeout=120)
    assert next(slow).frame_id == 0
    gone = stub.DetectStream(gone_after_one(), timeout=120)
    assert next(gone).frame_id == 0
    gone.cancel()  # a client that goes away while the server waits for its next frame
    fast = _lockstep(stub, "fast", images[2:7])  # answered while "slow" is silent
    assert [r.frame_id for r in fast] == list(range(5))
    resume.set()
    assert [r.frame_id for r in slow] == [1]
    with pytest.raises(grpc.RpcError) as err:
        next(gone)
    assert err.value.code() == grpc.StatusCode.CANCELLED

    assert _streams_counted(server, before, 3) == {"CANCELLED": 1, "OK": 2}


def _streams_counted(server, before: dict, calls: int) -> dict[str, float]:
    """DetectStream calls of "mini" counted since ``before``, by code, once ``calls`` of them are.

    A stream is counted when grpc ends the call, which can be just after the client saw its end.
    """
    deadline = time.monotonic() + 60
    while True:
        after = _metrics(server)
        counts = {labels["code"]: value - before.get((name, key), 0.0) for (name, key), value in after.items()
                  if name == "slimyolo_inference_requests_total"
                  and (labels := dict(key))["api"] == "detect_stream" and labels["model"] == "mini"}
        counts = {code: n for code, n in counts.items() if n}
        if sum(counts.values()) >= calls:
            return counts
        assert time.monotonic() < deadline, f"only {counts} of {calls} streams counted"
        time.sleep(0.05)


def test_every_cancelled_stream_is_counted_cancelled(served, images):
    """A cancel reaches the servicer either as a failed read or, about one time in seven, as the normal
    end of the frames (grpc cannot tell them apart then): only the end of the call says which."""
    server, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    before = _metrics(server)
    frame = _frame("cam", 0, images[0])
    for _ in range(20):
        outbox: queue.Queue = queue.Queue()
        outbox.put(frame)
        call = stub.DetectStream(iter(outbox.get, None), timeout=60)
        assert next(call).frame_id == 0
        call.cancel()  # while the server waits for the next frame
        outbox.put(None)  # ends the client's sending thread
    assert _streams_counted(server, before, 20) == {"CANCELLED": 20}


def test_bad_stream_frames_end_the_call_naming_the_frame(served, images):
    _, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    bad = _frame("cam", 1, images[1])
    bad.frame.encoded = b"garbage"
    responses = stub.DetectStream(iter([_frame("cam", 0, images[0]), bad, _frame("cam", 2, images[2])]), timeout=60)
    assert next(responses).frame_id == 0
    with pytest.raises(grpc.RpcError) as err:
        next(responses)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream 'cam', frame_id 1" in err.value.details() and "not a decodable image" in err.value.details()
    unnamed = inference_pb2.DetectStreamRequest(stream_id="cam", frame=inference_pb2.Image(encoded=_png(images[0])))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.DetectStream(iter([unnamed]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_name is required" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.DetectStream(iter([_frame("cam", 0, images[0], model="nothing")]), timeout=60))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(_lockstep(stub, "cam", images[:2])) == 2


# -- metrics and readiness -------------------------------------------------------------------------


def test_metrics_show_fps_latency_and_outcomes(served, images):
    server, _, channel = served
    stub = inference_pb2_grpc.InferenceStub(channel)
    ks = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
    before = _metrics(server)
    for image in images[:2]:
        _detect(stub, inference_pb2.Image(encoded=_png(image)))
    _code(stub.Detect, inference_pb2.DetectRequest(model_name="unheard-of", image=inference_pb2.Image(
        encoded=_png(images[0]))))
    x = np.zeros((3, 3, 96, 96), np.float32)
    ks.ModelInfer(Infer(model_name="mini", inputs=[Tensor(name="images", datatype="FP32", shape=x.shape)],
                        raw_input_contents=[x.tobytes()]))
    _lockstep(stub, "metrics", images[:2])
    after = _metrics(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "slimyolo_inference_requests_total"
    assert delta(requests, model="mini", api="detect", code="OK") == 2
    assert delta(requests, model="", api="detect", code="NOT_FOUND") == 1  # unknown names do not become labels
    assert delta(requests, model="mini", api="model_infer", code="OK") == 1
    assert _streams_counted(server, before, 1) == {"OK": 1}
    assert delta("slimyolo_inference_frames_total", model="mini") == 2 + 3 + 2
    e2e = "slimyolo_inference_end_to_end_duration_seconds_count"
    assert (delta(e2e, model="mini", api="detect"), delta(e2e, model="mini", api="model_infer"),
            delta(e2e, model="mini", api="detect_stream")) == (2, 1, 2)
    assert 3 <= delta("slimyolo_inference_duration_seconds_count", model="mini") <= 5  # stream frames may share
    assert delta("slimyolo_inference_duration_seconds_sum", model="mini") > 0
    assert after[("slimyolo_inference_fps", frozenset({"model": "mini"}.items()))] > 0
    assert after[("slimyolo_inference_models_loaded", frozenset())] == 1
    assert delta("grpc_server_handled_total", grpc_type="unary", grpc_service=INFERENCE, grpc_method="Detect",
                 grpc_code="NOT_FOUND") == 1


def test_ready_while_at_least_one_model_is_loaded(mini_ir, tmp_path, start_inference):
    """NOT_SERVING (health "", both services; KServe ServerReady) until a model is loaded, and again
    once none is (unloaded, or gone from the repository); liveness SERVING throughout."""
    import shutil

    from test_serving_repository import _corrupt

    repo = tmp_path / "not-yet"  # the folder (a volume being mounted, say) is not there yet
    server, plane = start_inference(repo, SERVER, poll_seconds=0.2)
    status = health_pb2.HealthCheckResponse
    try:
        # A probe: without health checking, since a channel that watches health sends nothing to a replica
        # that is not ready.
        with connect(f"127.0.0.1:{server.port}", health_service=None) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            ks = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub = inference_pb2_grpc.InferenceStub(channel)

            def statuses() -> list[int]:
                return [health.Check(health_pb2.HealthCheckRequest(service=s), timeout=30).status
                        for s in ("", KSERVE, INFERENCE, LIVENESS)]

            def wait_for(what: str, predicate) -> None:
                deadline = time.monotonic() + 120
                while not predicate():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    time.sleep(0.05)

            unready = [status.NOT_SERVING] * 3 + [status.SERVING]
            assert statuses() == unready
            assert ks.ServerLive(kserve_pb2.ServerLiveRequest()).live
            assert not ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
            # A repository whose one model fails to load: scanned, nothing to answer for.
            shutil.copytree(mini_ir, repo / "mini" / "1")
            _corrupt(repo / "mini" / "1")
            wait_for("the broken version to fail", lambda: [m.state for m in stub.ListModels(
                inference_pb2.ListModelsRequest(), timeout=30).models] == [inference_pb2.MODEL_STATE_FAILED])
            assert statuses() == unready
            assert not ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
            assert not ks.ModelReady(kserve_pb2.ModelReadyRequest(name="mini")).ready  # known, not loaded
            shutil.copytree(mini_ir, repo / "mini" / "2")
            wait_ready(channel, "", timeout=120)
            assert statuses() == [status.SERVING] * 4
            assert ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
            assert ks.ModelReady(kserve_pb2.ModelReadyRequest(name="mini")).ready
            stub.UnloadModel(inference_pb2.UnloadModelRequest(name="mini"), timeout=60)
            assert statuses() == unready  # at once: the last model went
            assert not ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
            stub.LoadModel(inference_pb2.LoadModelRequest(name="mini"), timeout=120)
            assert statuses() == [status.SERVING] * 4
            shutil.rmtree(repo / "mini")
            wait_for("the removed model to be unloaded", lambda: statuses() == unready)
            assert not ks.ServerReady(kserve_pb2.ServerReadyRequest()).ready
            code, details = _code(ks.ModelReady, kserve_pb2.ModelReadyRequest(name="mini"))
            assert code == grpc.StatusCode.NOT_FOUND and "not in the model repository" in details
    finally:
        server.stop(0)
        plane.close()
