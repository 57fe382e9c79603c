"""The inference service's throughput and latency against OpenVINO's own ``benchmark_app``.

One IR (yolov4-tiny, 2 classes, 416×416, FP32 via TensorFlow; random weights with a detector's
objectness prior — speed does not depend on the weights' values) is measured in one run:

- ``benchmark_app -hint throughput`` and ``-hint latency`` at f32: OpenVINO alone, no gRPC;
- the inference service (``slimyolo serve inference``, its own process on 127.0.0.1, throughput
  hint, f32) with 1, 8 and 32 concurrent clients, each a thread of this process calling
  ``ModelInfer`` (KServe v2, the raw FP32 tensor, 2 MB a request) or ``Detect`` (a 640×480 JPEG
  in, boxes out: decode, letterbox, inference, decode and NMS on the server) back to back.

The service's overhead is its ModelInfer throughput over benchmark_app's throughput. Clients and
server share this machine's cores, as a sidecar client would.

    .venv/bin/python benchmarks/serving.py [--seconds 15] [--clients 1,8,32] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, percentiles_ms, save

from slimyolo.convert import convert
from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights
from slimyolo.data.synth import write_synthetic
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve_pb2
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as kserve_pb2_grpc
from slimyolo.rpc.gen.v1 import inference_pb2, inference_pb2_grpc
from slimyolo.train.loss import init_head_biases

BIN = Path(sys.executable).parent


def make_ir(work: Path, size: int) -> Path:
    cfg = make_cfg("yolov4-tiny", 2, size)
    model = init_random_weights(load_model(cfg), 0)
    init_head_biases(model)  # a detector's handful of boxes per frame, not thousands of random ones
    cfg.write(work / "model.cfg")
    model.save_darknet_weights(work / "model.weights")
    calib = write_synthetic(work / "synth", classes=2, train=8, val=4, size=size, seed=0)
    return convert(work / "model.cfg", work / "model.weights", work / "models", name="tiny", version=1,
                   calib_data=calib).path / "model.xml"


def benchmark_app(xml: Path, size: int, hint: str, seconds: float) -> dict[str, Any]:
    """OpenVINO's benchmark_app on the IR (batch 1; the IR's batch is dynamic): FPS and median latency (ms)."""
    out = subprocess.run([str(BIN / "benchmark_app"), "-m", str(xml), "-d", "CPU", "-hint", hint,
                          "-infer_precision", "f32", "-shape", f"[1,3,{size},{size}]", "-t", str(int(seconds))],
                         capture_output=True, text=True, check=True).stdout
    fps = float(re.search(r"Throughput:\s+([\d.]+) FPS", out).group(1))
    median = float(re.search(r"Median:\s+([\d.]+) ms", out).group(1))
    return {"fps": fps, "latency_ms": {"p50": median}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(call: Callable[[], Any], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads calling back to back for ``seconds``: requests per second and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    for _ in range(2):  # warm-up: the first calls pay for the channel and the model's first inference
        call()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(latencies), "fps": round(len(latencies) / (time.perf_counter() - t0), 2),
            "latency_ms": percentiles_ms(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each measurement")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-serving"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    xml = make_ir(args.work, args.size)
    result: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "model": "yolov4-tiny 2c",
                              "size": args.size}
    result["benchmark_app"] = {hint: benchmark_app(xml, args.size, hint, args.seconds)
                               for hint in ("throughput", "latency")}
    print(f"benchmark_app: {result['benchmark_app']}", flush=True)

    port = free_port()
    env = {**os.environ, "SLIMYOLO_MODEL_REPOSITORY": str(args.work / "models")}
    server = subprocess.Popen([str(BIN / "slimyolo"), "serve", "inference", "--bind", "127.0.0.1", "--port", str(port),
                               "--metrics-port", "0", "--precision", "f32", "--hint", "throughput",
                               "--poll-seconds", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        channel = connect(f"127.0.0.1:{port}")
        wait_ready(channel, "", timeout=300)
        kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        detect = inference_pb2_grpc.InferenceStub(channel)
        rng = np.random.default_rng(0)
        tensor = rng.random((1, 3, args.size, args.size), dtype=np.float32)
        infer_request = kserve_pb2.ModelInferRequest(
            model_name="tiny", inputs=[kserve_pb2.ModelInferRequest.InferInputTensor(
                name="images", datatype="FP32", shape=list(tensor.shape))], raw_input_contents=[tensor.tobytes()])
        frame = cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))[1].tobytes()
        detect_request = inference_pb2.DetectRequest(model_name="tiny", image=inference_pb2.Image(encoded=frame))
        result["service"] = {}
        for n in (int(c) for c in args.clients.split(",")):
            infer = drive(lambda: kserve.ModelInfer(infer_request, timeout=120), n, args.seconds)
            det = drive(lambda: detect.Detect(detect_request, timeout=120), n, args.seconds)
            result["service"][n] = {"model_infer": infer, "detect": det}
            print(f"{n} clients: ModelInfer {infer['fps']} FPS {infer['latency_ms']}, Detect {det['fps']} FPS "
                  f"{det['latency_ms']}", flush=True)
        channel.close()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["machine_after"] = machine()["load_average"]
    save("serving", result)
    ba = result["benchmark_app"]
    rows = [["benchmark_app -hint throughput", "", ba["throughput"]["fps"], ba["throughput"]["latency_ms"]["p50"], "",
             1.0, ""],
            ["benchmark_app -hint latency", "", ba["latency"]["fps"], ba["latency"]["latency_ms"]["p50"], "",
             round(ba["latency"]["fps"] / ba["throughput"]["fps"], 2), ""]]
    for n, m in result["service"].items():
        for api in ("model_infer", "detect"):
            lat = m[api]["latency_ms"]
            rows.append([f"service {api}", n, m[api]["fps"], lat["p50"], lat["p99"],
                         round(m[api]["fps"] / ba["throughput"]["fps"], 2),
                         round(m[api]["fps"] / ba["latency"]["fps"], 2)])
    print(f"\nmachine: {result['machine']}\n")
    print(markdown_table(["what", "clients", "FPS", "p50 ms", "p99 ms", "÷ benchmark_app throughput",
                          "÷ benchmark_app latency"], rows))


if __name__ == "__main__":
    main()
