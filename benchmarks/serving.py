"""The inference service's throughput and latency against OpenVINO's own ``benchmark_app``, its
spread over replicas, and the cost of post-processing with few and with many candidate boxes.

One IR (yolov4-tiny, 2 classes, 416×416, FP32 via TensorFlow; random weights with a detector's
objectness prior — speed does not depend on the weights' values) is measured in one run:

- ``benchmark_app -hint throughput`` and ``-hint latency`` at f32: OpenVINO alone, no gRPC;
- the inference service (``slimyolo serve inference``, its own process on 127.0.0.1, throughput
  hint, f32) with 1, 8 and 32 concurrent clients through ``slimyolo bench --remote``'s load
  generator (:func:`slimyolo.rpc.loadgen.run_load`, one round-robin channel, closed loop):
  ``ModelInfer`` (KServe v2, the raw FP32 tensor, 2 MB a request) and ``Detect`` (a 640×480 JPEG
  in, boxes out: decode, letterbox, inference, YOLO decode and NMS on the server);
- three replicas of the service behind one ``ipv4:`` target: the share of calls each answered;
- ``slimyolo bench`` (in process) on yolov3-spp ×0.25 (a pruned-size model), end to end against
  inference only, with a detector's objectness prior (few candidates) and with random heads
  (nearly every box a candidate at conf 0.25: a weak or freshly pruned model).

The service's overhead is its ModelInfer throughput over benchmark_app's throughput. Clients and
server share this machine's cores, as a sidecar client would.

    .venv/bin/python benchmarks/serving.py [--seconds 15] [--clients 1,8,32] [--replicas 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save

from slimyolo.convert import convert
from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights
from slimyolo.data.synth import write_synthetic
from slimyolo.infer.bench import run_bench
from slimyolo.infer.decode import decode
from slimyolo.infer.engine import Engine
from slimyolo.rpc.client import connect, wait_ready
from slimyolo.rpc.loadgen import LoadSpec, run_load
from slimyolo.train.loss import init_head_biases

BIN = Path(sys.executable).parent


def make_ir(work: Path, size: int, name: str = "yolov4-tiny", width: float = 1.0, prior: bool = True,
            via: str = "tf") -> Path:
    """A random-weight IR of zoo model ``name`` in ``work/models/<stem>/1``; ``prior``: a detector's
    objectness prior (a handful of boxes a frame), else random heads (thousands of candidates)."""
    stem = work.name
    cfg = make_cfg(name, 2, size, width=width)
    model = init_random_weights(load_model(cfg), 0)
    if prior:
        init_head_biases(model)
    work.mkdir(parents=True, exist_ok=True)
    cfg.write(work / "model.cfg")
    model.save_darknet_weights(work / "model.weights")
    calib = write_synthetic(work / "synth", classes=2, train=8, val=4, size=size, seed=0)
    return convert(work / "model.cfg", work / "model.weights", work / "models", name=stem, version=1, via=via,
                   calib_data=calib).path / "model.xml"


def benchmark_app(xml: Path, size: int, hint: str, seconds: float, batch: int = 1,
                  percentile: int = 50) -> dict[str, Any]:
    """OpenVINO's benchmark_app on the IR at f32, ``batch`` images an inference (the IR's batch is dynamic; the
    shape is fixed for the run): FPS (images a second), the ``percentile`` latency of one inference (ms), and
    its CPU per image (the process's user + system seconds over the images it ran)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([str(BIN / "benchmark_app"), "-m", str(xml), "-d", "CPU", "-hint", hint,
                          "-infer_precision", "f32", "-shape", f"[{batch},3,{size},{size}]",
                          "-latency_percentile", str(percentile), "-t", str(int(seconds))],
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    fps = float(re.search(r"Throughput:\s+([\d.]+) FPS", out).group(1))
    label = "Median" if percentile == 50 else f"{percentile} percentile"
    value, unit = re.search(rf"{label}:\s+([\d.]+) (ms|us)", out).groups()  # below 1 ms it says us
    latency = float(value) / (1000 if unit == "us" else 1)
    images = batch * int(re.search(r"Count:\s+(\d+) iterations", out).group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"fps": fps, "latency_ms": {f"p{percentile}": latency}, "images": images,
            "cpu_ms_per_image": round(1000 * cpu / images, 3)}


@contextmanager
def services(models: Path | str, replicas: int, logs: Path, env: dict[str, str] | None = None,
             ready: str = "", hint: str = "throughput") -> Iterator[str]:
    """``replicas`` processes of ``slimyolo serve inference`` on free ports of 127.0.0.1 serving the model
    repository ``models`` (a folder, or a store prefix with ``env``'s SLIMYOLO_STORE); yields their ``ipv4:``
    target once all are SERVING (``ready``: the health service name, "liveness" for a server without models
    yet), compiled with the performance ``hint``. Each logs to ``logs/serve-<i>.log``, which names its port."""
    env = {**os.environ, **(env or {}), "SLIMYOLO_MODEL_REPOSITORY": str(models)}
    procs, paths = [], [logs / f"serve-{i}.log" for i in range(replicas)]
    for path in paths:
        with path.open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "slimyolo"), "serve", "inference", "--bind", "127.0.0.1", "--port", "0",
                 "--metrics-port", "0", "--precision", "f32", "--hint", hint, "--poll-seconds", "0",
                 "--mosaic", "1x1"], env=env, stdout=subprocess.DEVNULL, stderr=log))
    try:
        ports = [_port(proc, path) for proc, path in zip(procs, paths, strict=True)]
        for port in ports:
            with connect(f"127.0.0.1:{port}", health_service=ready) as channel:
                wait_ready(channel, ready, timeout=300)
        yield "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _port(proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> int:
    """The gRPC port a server with ``--port 0`` chose, from its log line "serving gRPC on HOST:PORT"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving gRPC on [\d.]+:(\d+)", log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"slimyolo serve inference exited with {proc.returncode}; see {log}")
        time.sleep(0.2)
    raise RuntimeError(f"slimyolo serve inference did not start in {timeout:g} s; see {log}")


def load(target: str, model: str, api: str, clients: int, seconds: float) -> dict[str, Any]:
    result = run_load(LoadSpec(target, model, api, concurrency=clients, seconds=seconds, warmup=2.0))
    print(f"{clients} clients {api}: {result['fps']} FPS {result['latency_ms']} errors {result['errors']} "
          f"{result['by_server']}", flush=True)
    return result


def candidates(xml: Path) -> int:
    """Boxes above the default conf 0.25 (objectness) on the benchmark's random frame: NMS's input."""
    engine = Engine(xml, precision="f32")
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    tensor, _ = engine.prepare(image)
    return int((decode(engine.infer(tensor), engine.meta.heads)[0][:, 4] > engine.conf_thres).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each measurement")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--replicas", type=int, default=3, help="replicas for the spread (0: skip)")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-serving"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    xml = make_ir(args.work / "tiny", args.size)
    result: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "model": "yolov4-tiny 2c",
                              "size": args.size}
    result["benchmark_app"] = {hint: benchmark_app(xml, args.size, hint, args.seconds)
                               for hint in ("throughput", "latency")}
    print(f"benchmark_app: {result['benchmark_app']}", flush=True)

    models = args.work / "tiny" / "models"
    result["service"] = {}
    with services(models, 1, args.work) as target:
        for n in (int(c) for c in args.clients.split(",")):
            result["service"][n] = {"model_infer": load(target, "tiny", "infer", n, args.seconds),
                                    "detect": load(target, "tiny", "detect", n, args.seconds)}
    if args.replicas:
        with services(models, args.replicas, args.work) as target:
            result["spread"] = load(target, "tiny", "infer", 8, args.seconds)

    result["postprocess"] = {}
    for label, prior in (("few", True), ("many", False)):
        post = make_ir(args.work / f"spp-{label}", args.size, "yolov3-spp", width=0.25, prior=prior, via="torch")
        bench = run_bench(post, hint="throughput", precision="f32", seconds=args.seconds)
        result["postprocess"][label] = {"candidates": candidates(post), "e2e_fps": bench["fps"],
                                        "infer_fps": bench["infer"]["fps"],
                                        "ratio": round(bench["fps"] / bench["infer"]["fps"], 3)}
        print(f"postprocess {label}: {result['postprocess'][label]}", flush=True)
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
    if "spread" in result:
        spread = result["spread"]
        print("\n" + markdown_table(["replica", "calls", "share"],
                                    [[s, n, round(n / spread["ok"], 3)] for s, n in spread["by_server"].items()]))
    print("\n" + markdown_table(["yolov3-spp x0.25", "candidates (conf 0.25)", "e2e FPS", "inference FPS",
                                 "e2e ÷ inference"],
                                [[k, v["candidates"], v["e2e_fps"], v["infer_fps"], v["ratio"]]
                                 for k, v in result["postprocess"].items()]))


if __name__ == "__main__":
    main()
