"""Speed of the original projects' best pruning points on this CPU.

yolov3-spp (2 classes, 416) pruned at global 0.89 + 17 residual units and yolov4 at 0.88 + 18,
with and without ``--round-to 8/16``, each unpruned and pruned model converted to OpenVINO IR
(FP32 via TensorFlow, as the design asks, and INT8 with NNCF) and measured in one run:

- OpenVINO f32, bf16 (asked; this CPU may run f32) and int8: throughput-hint FPS (end to end:
  letterbox + inference + decode + NMS; and inference only) and latency-hint p50/p99;
- PyTorch, ONNX Runtime and OpenCV DNN (its darknet reader) on the same model, one frame at a
  time;
- the pruned/unpruned FPS ratio beside the BFLOPs ratio, and the achieved GFLOP/s beside the
  peak GFLOP/s OpenVINO reaches on this CPU on one large 3x3 convolution.

No trained detector of this size can be trained on 2 CPU cores, so the sparse models are random
weights (``init_random_weights``) whose BN |γ| follow a stated distribution: each channel of
the convolution at relative depth d is near zero (< 1e-3) with probability 0.97·√d, otherwise
log-uniform in [0.05, 1.5] (``sparsify_gammas``) — early high-resolution layers stay wide, as
in trained models — and the heads' objectness biases at yolov5's prior (about 8 objects per
image), so that decode and NMS see a detector's handful of boxes, not thousands of random ones.
Inference speed does not depend on the weights' values.

    .venv/bin/python benchmarks/speed.py [--seconds 8] [--models yolov3-spp,yolov4] [--size 416] [--work DIR]
    .venv/bin/python benchmarks/speed.py --report benchmarks/results/speed.json   # tables and plot again
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save, time_sync

from slimyolo.convert import convert
from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.init import init_random_weights, sparsify_gammas
from slimyolo.data.synth import write_synthetic
from slimyolo.infer.bench import run_bench
from slimyolo.prune import prune_both
from slimyolo.train.loss import init_head_biases

POINTS = {"yolov3-spp": (0.89, 17), "yolov4": (0.88, 18)}


def near_zero(depth: float) -> float:
    return 0.97 * math.sqrt(depth)


def peak_gflops(seconds: float) -> float:
    """OpenVINO f32 throughput on one 3x3 convolution, 256→256 channels at 104x104 (9.7 GFLOP)."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 256, 104, 104], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).normal(0, 0.02, (256, 256, 3, 3)).astype(np.float32))
    conv = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = ov.Core().compile_model(ov.Model([conv], [x]), "CPU",
                                       {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"})
    queue = ov.AsyncInferQueue(compiled)
    data = np.random.default_rng(1).random((1, 256, 104, 104), dtype=np.float32)
    done = 0

    def count(*_: Any) -> None:
        nonlocal done
        done += 1

    queue.set_callback(count)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async({0: data})
    queue.wait_all()
    flops = 2 * 256 * 256 * 9 * 104 * 104
    return flops * done / (time.perf_counter() - t0) / 1e9


def opencv_dnn(cfg: Path, weights: Path, image: np.ndarray, size: int, seconds: float) -> dict[str, Any]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = net.getUnconnectedOutLayersNames()

    def run() -> None:
        net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (size, size), swapRB=True, crop=False))
        net.forward(names)

    return time_sync(run, seconds)


def prepare(name: str, size: int, work: Path, calib: Path) -> dict[str, dict[str, Any]]:
    """cfg/weights and IRs of the unpruned model and its pruned variants (round-to 1, 8, 16)."""
    percent, units = POINTS[name]
    cfg = make_cfg(name, 2, size)
    model = sparsify_gammas(init_random_weights(load_model(cfg), 0), near_zero, 0)
    init_head_biases(model)  # a detector's objectness prior: a handful of boxes per frame, not thousands
    variants: dict[str, dict[str, Any]] = {}
    base = work / name / "unpruned"
    base.mkdir(parents=True)
    cfg.write(base / "model.cfg")
    model.save_darknet_weights(base / "model.weights")
    variants["unpruned"] = {"cfg": base / "model.cfg", "weights": base / "model.weights", "bflops": None}
    for round_to in (1, 8, 16):
        result = prune_both(model, percent, units, layer_keep=0.01, round_to=round_to)
        files = result.save(work / name / f"pruned-r{round_to}")
        variants[f"pruned r{round_to}"] = {"cfg": files["cfg"], "weights": files["weights"],
                                           "params": result.after.params, "bflops": result.after.bflops,
                                           "activation_mb": result.after.activation_mb}
        variants["unpruned"].update(params=result.before.params, bflops=result.before.bflops,
                                    activation_mb=result.before.activation_mb)
    for key, v in variants.items():
        tag = key.replace(" ", "-")
        t0 = time.perf_counter()
        v["fp32"] = convert(v["cfg"], v["weights"], work / "models", name=f"{name}-{tag}", version=1, via="tf",
                            calib_data=calib, onnx=key in ("unpruned", "pruned r1")).path
        v["convert_s"] = round(time.perf_counter() - t0, 1)
        v["int8"] = convert(v["cfg"], v["weights"], work / "models", name=f"{name}-{tag}", version=2, via="tf",
                            precision="int8", calib_data=calib, calib_images=32).path
        print(f"{name} {key}: {v['bflops']:.2f} BFLOPs, converted in {v['convert_s']} s", flush=True)
    return variants


def measure(variants: dict[str, dict[str, Any]], image: np.ndarray, size: int, seconds: float) -> None:
    for key, v in variants.items():
        m: dict[str, Any] = {}
        m["f32"] = run_bench(v["fp32"], hint="throughput", precision="f32", seconds=seconds, image=image)
        m["bf16"] = run_bench(v["fp32"], hint="throughput", precision="bf16", seconds=seconds, image=image)
        m["int8"] = run_bench(v["int8"], hint="throughput", seconds=seconds, image=image)
        m["f32 latency"] = run_bench(v["fp32"], hint="latency", precision="f32", seconds=seconds, image=image)
        m["int8 latency"] = run_bench(v["int8"], hint="latency", seconds=seconds, image=image)
        if key in ("unpruned", "pruned r1"):
            compare = run_bench(v["fp32"], hint="latency", precision="f32", seconds=seconds, image=image,
                                compare=True, cfg=v["cfg"], weights=v["weights"])["compare"]
            m["pytorch"], m["onnxruntime"] = compare["pytorch"], compare["onnxruntime"]
            m["opencv"] = opencv_dnn(v["cfg"], v["weights"], image, size, seconds)
        v["measured"] = m
        print(f"  {key}: f32 {m['f32']['fps']} FPS, int8 {m['int8']['fps']} FPS", flush=True)


def p50_p99(measured: dict[str, Any]) -> str:
    lat = measured["latency_ms"]
    return f"{lat['p50']:.3g}/{lat['p99']:.3g}"


def report(name: str, size: int, variants: dict[str, dict[str, Any]], peak: float) -> str:
    base = variants["unpruned"]
    f32_base = base["measured"]["f32"]["infer"]["fps"]
    rows = []
    for key, v in variants.items():
        m = v["measured"]
        flop_ratio = base["bflops"] / v["bflops"]
        rows.append([key, f"{v['params'] / 1e6:.2f}M", round(v["bflops"], 2), v.get("activation_mb", ""),
                     m["f32"]["fps"], m["f32"]["infer"]["fps"], m["bf16"]["infer"]["fps"], m["int8"]["infer"]["fps"],
                     p50_p99(m["f32 latency"]), p50_p99(m["int8 latency"]),
                     round(m["f32"]["infer"]["fps"] / f32_base, 2), round(flop_ratio, 2),
                     round(m["f32"]["infer"]["fps"] / f32_base / flop_ratio, 2),
                     round(m["int8"]["infer"]["fps"] / f32_base, 2),
                     round(v["bflops"] * m["f32"]["infer"]["fps"], 1),
                     round(100 * v["bflops"] * m["f32"]["infer"]["fps"] / peak, 1)])
    table = markdown_table(
        ["model", "params", "BFLOPs", "activation MB", "f32 FPS e2e", "f32 FPS", "bf16 FPS", "int8 FPS",
         "f32 p50/p99 ms", "int8 p50/p99 ms", "f32 speed-up", "BFLOPs ratio", "speed-up / BFLOPs ratio",
         "int8 vs unpruned f32", "f32 GFLOP/s", "% of peak"], rows)
    others = []
    for key in ("unpruned", "pruned r1"):
        m = variants[key]["measured"]
        for runtime in ("pytorch", "onnxruntime", "opencv"):
            r = m[runtime]
            if "fps" in r:
                others.append([key, runtime, r["fps"], p50_p99(r),
                               round(m["f32 latency"]["fps"] / r["fps"], 2)])
    other = markdown_table(["model", "runtime (1 frame at a time, end to end)", "FPS", "p50/p99 ms",
                            "OpenVINO f32 (latency hint) / this"], others)
    return f"### {name}, 2 classes, {size}x{size}\n\n{table}\n\n{other}\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Inference-only FPS of every variant in f32, bf16 and int8, one panel per model (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, (name, variants) in zip(axes[0], models.items(), strict=True):
        keys = list(variants)
        for i, precision in enumerate(("f32", "bf16", "int8")):
            fps = [variants[k]["measured"][precision]["infer"]["fps"] for k in keys]
            bars = ax.bar(np.arange(len(keys)) + (i - 1) * 0.27, fps, 0.27, label=precision)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(np.arange(len(keys)), [f"{k}\n{variants[k]['bflops']:.2f} BFLOPs" for k in keys], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("OpenVINO FPS (inference, throughput hint)")
        ax.set_title(f"{name}, 2 classes, {result.get('size', 416)}x{result.get('size', 416)}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    parser.add_argument("--models", default="yolov3-spp,yolov4")
    parser.add_argument("--size", type=int, default=416, help="input size (the original projects' 416)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-speed"))
    parser.add_argument("--report", type=Path, help="only print the tables (and redraw the plot) of a saved speed.json")
    args = parser.parse_args()
    if args.report:
        result = json.loads(args.report.read_text())
        size = result.get("size", 416)
        print(f"machine: {result['machine']}\npeak f32 GFLOP/s: {result['peak_gflops_f32']}\n")
        print("\n".join(report(name, size, variants, result["peak_gflops_f32"])
                        for name, variants in result["models"].items()))
        plot(result, args.report.with_suffix(".png"))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    calib = write_synthetic(args.work / "synth", classes=2, train=32, val=8, size=args.size, seed=0)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    result: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "size": args.size, "models": {}}
    sections = []
    result["peak_gflops_f32"] = peak = round(peak_gflops(args.seconds), 1)
    print(f"peak f32: {peak} GFLOP/s", flush=True)
    for name in args.models.split(","):
        variants = prepare(name, args.size, args.work, calib)
        measure(variants, frame, args.size, args.seconds)
        sections.append(report(name, args.size, variants, peak))
        result["models"][name] = {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                                  for k, v in variants.items()}
    result["machine_after"] = machine()["load_average"]
    plot(result, save("speed", result).with_suffix(".png"))
    print(f"\nmachine: {result['machine']}\npeak f32 GFLOP/s (one 3x3 conv 256→256 at 104x104): {peak}\n")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
