"""Dynamic batching (slimyolo/serving/batching.py): concurrent calls' frames run as one inference, and each caller
gets its own rows, in the service and alone."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from slimyolo.errors import SlimYoloError
from slimyolo.infer.engine import Engine
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.serving.batching import DynamicBatcher
from slimyolo.serving.config import ServingConfig


@pytest.fixture(scope="module")
def engine(mini_ir) -> Engine:
    return Engine(mini_ir, hint="throughput", precision="f32")


def _frames(engine: Engine, count: int, seed: int = 0) -> list[np.ndarray]:
    """Distinct random frames of the model's input: rows that mixed up would show."""
    h, w = engine.input_size
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, h, w), dtype=np.float32) for _ in range(count)]


def test_a_batch_answers_each_caller_its_own_rows(engine):
    frames = _frames(engine, 6)
    alone = [engine.infer(f) for f in frames]
    batcher = DynamicBatcher(engine, max_batch=4, max_delay=0.5)  # the first frame waits for the next three
    try:
        futures = [batcher.submit(f) for f in frames]
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert (batcher.batches, batcher.frames) == (2, 6)  # 4 + 2: the last two waited out the delay together
    together = engine.infer(np.concatenate(frames[:4]))
    for i, (got, own) in enumerate(zip(results, alone, strict=True)):
        assert [g.shape for g in got] == [o.shape for o in own]
        if i < 4:  # exactly the batch's rows
            assert all(np.array_equal(g, t[i:i + 1]) for g, t in zip(got, together, strict=True))
        for g, o in zip(got, own, strict=True):  # and the frame's own inference (bit-equal on the CPUs we know)
            np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-5)


def test_a_call_leaves_the_queue_when_its_batch_runs_not_when_it_is_handed_to_the_batcher(engine):
    """``started`` marks the end of the wait that --max-queue bounds: a call waiting for others to batch with is
    still queued (the service refuses beyond max_queue), and leaves the queue once its batch runs."""
    started: list[int] = []
    batcher = DynamicBatcher(engine, max_batch=4, max_delay=1.0)
    try:
        futures = [batcher.submit(f, lambda i=i: started.append(i)) for i, f in enumerate(_frames(engine, 2))]
        assert started == []  # both wait out the delay for two more frames
        for future in futures:
            future.result(timeout=60)
        assert started == [0, 1]
        big = np.concatenate(_frames(engine, 4))
        batcher.submit(big, lambda: started.append(9)).result(timeout=60)  # runs alone, started at once
        assert started == [0, 1, 9]
    finally:
        batcher.close()


def test_frames_that_do_not_fit_run_apart_and_an_error_reaches_only_its_caller(engine):
    h, w = engine.input_size
    good = _frames(engine, 2, seed=1)
    pair = np.concatenate(_frames(engine, 2, seed=2))  # a client's own batch of two
    wrong = np.zeros((1, 3, h + 32, w), np.float32)  # the IR's size is fixed: this inference fails
    big = np.concatenate(_frames(engine, 3, seed=3))  # max_batch frames: runs as it is
    batcher = DynamicBatcher(engine, max_batch=3, max_delay=0.3)
    try:
        futures = [batcher.submit(t) for t in (good[0], wrong, pair, good[1], big)]
        first, bad, both, second, alone = futures
        for future, tensor in ((first, good[0]), (both, pair), (second, good[1]), (alone, big)):
            (got,) = future.result(timeout=60)
            np.testing.assert_allclose(got, engine.infer(tensor)[0], rtol=1e-5, atol=1e-5)
        with pytest.raises(Exception, match=r"(?i)shape|dimension"):
            bad.result(timeout=60)
    finally:
        batcher.close()
    # good[0] + pair fill a batch of 3, wrong runs alone (another shape), good[1] alone; big bypasses the batcher
    assert (batcher.batches, batcher.frames) == (3, 5)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(good[0])
    with pytest.raises(ValueError, match="max_batch >= 2"):
        DynamicBatcher(engine, max_batch=1)


def test_the_service_batches_concurrent_model_infer_calls(mini_ir, engine, tmp_path, start_inference):
    """Eight clients at once through a service with --max-batch 4: every answer is its own frame's heads, and
    fewer inferences ran than calls."""
    shutil.copytree(mini_ir, tmp_path / "mini" / "1")
    server, plane = start_inference(tmp_path, poll_seconds=0, max_batch=4, max_queue_delay_us=500_000)
    frames = _frames(engine, 8, seed=4)
    answers: dict[int, np.ndarray] = {}
    try:
        with connect(f"127.0.0.1:{server.port}") as channel:
            wait_ready(channel, "", timeout=120)
            stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)

            def call(i: int) -> None:
                tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="images", datatype="FP32",
                                                                       shape=list(frames[i].shape))
                response = stub.ModelInfer(kserve_pb2.ModelInferRequest(
                    model_name="mini", inputs=[tensor], raw_input_contents=[frames[i].tobytes()]), timeout=60)
                out = response.outputs[0]
                answers[i] = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(out.shape)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(frames))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        with plane.manager.acquire("mini") as model:
            batches = model.batcher.batches
    finally:
        server.stop(0)
        plane.close()
    assert sorted(answers) == list(range(8))
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(answers[i], engine.infer(frame)[0], rtol=1e-5, atol=1e-5)
    assert batches < len(frames)  # 500 ms for the others to join: some calls shared an inference


@pytest.mark.parametrize(("setting", "message"), [
    ({"max_batch": 0}, r"--max-batch / SLIMYOLO_INFERENCE_MAX_BATCH: must be at least 1, got 0"),
    ({"max_queue_delay_us": -1}, r"--max-queue-delay-us / SLIMYOLO_INFERENCE_MAX_QUEUE_DELAY_US: must not be"),
])
def test_batching_settings_are_checked_naming_flag_and_variable(setting, message):
    with pytest.raises(SlimYoloError, match=message):
        ServingConfig.from_env({}, **setting)
    assert ServingConfig.from_env({"SLIMYOLO_INFERENCE_MAX_BATCH": "8"}).max_batch == 8
