"""``slimyolo bench``: FPS and latency percentiles of an IR, end to end and inference only.

End to end is what a user sees per frame: letterbox + inference + decode + NMS, frames
pipelined through the engine's request pool. Inference only feeds a prepared tensor to the
same pool. With ``compare`` the same model runs in PyTorch (given its cfg and weights, else the
source files ``conversion.json`` records, when they are still there unchanged) and
ONNX Runtime (given an ONNX file and the package), in the same process and run, so the
ratios are measured under the same machine load. The inference service's BenchmarkModel times a
served model with :func:`bench_compiled` (``slimyolo bench --remote ... --server-side``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.cpuinfo import cpu_info
from slimyolo.errors import SlimYoloError
from slimyolo.infer.engine import Engine


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    if not len(ms):
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    return {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}


STOP_CHECK_SECONDS = 0.05  # how often a timed loop asks its ``stop`` whether to end early


def _timed_loop(seconds: float, in_flight: int, start: Callable[[], Any], finish: Callable[[Any], None],
                warmup: int = 3, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Keep ``in_flight`` frames going for ``seconds``; ``start`` submits one, ``finish`` completes it.

    ``stop()`` (asked every :data:`STOP_CHECK_SECONDS`) ends the run early when it returns True; the
    result then says ``"stopped": True`` (it has the key whenever ``stop`` is given)."""
    for _ in range(warmup):
        finish(start())
    latencies: list[float] = []
    pending: collections.deque = collections.deque()
    t0 = checked = time.perf_counter()
    frames = 0
    stopped = False
    while True:
        now = time.perf_counter()
        if stop is not None and not stopped and now - checked >= STOP_CHECK_SECONDS:
            checked, stopped = now, stop()
        running = now - t0 < seconds and not stopped
        if running:
            pending.append((now, start()))
        if not pending:
            break
        if len(pending) >= in_flight or not running:
            began, handle = pending.popleft()
            finish(handle)
            latencies.append(time.perf_counter() - began)
            frames += 1
    elapsed = time.perf_counter() - t0
    result = {"frames": frames, "seconds": round(elapsed, 3), "fps": round(frames / elapsed, 2),
              "latency_ms": percentiles(latencies)}
    return result if stop is None else {**result, "stopped": stopped}


def bench_engine(engine: Engine, image: np.ndarray, seconds: float) -> dict[str, Any]:
    """End-to-end and inference-only figures of one compiled engine."""

    def e2e_start() -> tuple[Future, Any]:
        tensor, lb = engine.prepare(image)
        return engine.submit(tensor), lb

    def e2e_finish(handle: tuple[Future, Any]) -> None:
        engine.postprocess(handle[0].result(), handle[1])

    tensor, _ = engine.prepare(image)
    e2e = _timed_loop(seconds, engine.num_requests, e2e_start, e2e_finish)
    return {**e2e, "infer": bench_infer(engine, tensor, seconds)}


def bench_infer(engine: Engine, tensor: np.ndarray, seconds: float,
                stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Inference only: one prepared tensor through the engine's whole request pool for ``seconds``
    (or until ``stop()``, see :func:`_timed_loop`)."""
    return _timed_loop(seconds, engine.num_requests, lambda: engine.submit(tensor), lambda f: f.result(),
                       stop=stop)


def sample_tensor(engine: Engine) -> np.ndarray:
    """The engine's input tensor of a random frame of its input size (inference only cares for the shape)."""
    frame = np.random.default_rng(0).integers(0, 255, (*engine.input_size, 3), dtype=np.uint8)
    return engine.prepare(frame)[0]


def execution_precision(engine: Engine) -> str:
    """What the compiled model computes in, OpenVINO's short name (f32, bf16, f16): the vocabulary of --precision."""
    return engine.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def bench_compiled(engine: Engine, seconds: float, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Inference only on an engine compiled already (a served model's own, with its request pool), as the
    inference service's BenchmarkModel runs it: :func:`bench_infer` of :func:`sample_tensor`, with the precision
    OpenVINO ran at, the requests kept in flight, the input size and this machine's CPU (:func:`cpu_info`).
    ``stop()`` ends it early (the caller went away): see :func:`_timed_loop`."""
    return {**bench_infer(engine, sample_tensor(engine), seconds, stop),
            "execution_precision": execution_precision(engine), "device": engine.device, "hint": engine.hint,
            "requests": engine.num_requests, "input_size": list(engine.input_size), "cpu": cpu_info()}


def _bench_sync(predict: Callable[[np.ndarray], list[np.ndarray]], engine: Engine, image: np.ndarray,
                seconds: float) -> dict[str, Any]:
    """Another runtime, one frame at a time, with the engine's own pre- and post-processing."""

    def run() -> None:
        tensor, lb = engine.prepare(image)
        engine.postprocess(predict(tensor), lb)

    return _timed_loop(seconds, 1, run, lambda _: None)


def recorded_source(ir_dir: Path) -> tuple[Path | None, Path] | None:
    """(cfg, weights) the IR in ``ir_dir`` was converted from, as its ``conversion.json`` records them, when
    those files are still there with the recorded sha256 (cfg None: it is inside the ``.pt`` weights); else None.
    Relative paths are relative to where ``convert`` ran, so they are tried against the working directory."""
    import json

    from slimyolo.store import hash_file

    try:
        source = json.loads((ir_dir / "conversion.json").read_text())["source"]
        weights, cfg_where = Path(source["weights"]), str(source["cfg"])
        if not weights.is_file() or hash_file(weights)[0] != source["weights_sha256"]:
            return None
        if cfg_where.endswith("[cfg]"):
            return None, weights
        cfg = Path(cfg_where)
        return (cfg, weights) if cfg.is_file() and hash_file(cfg)[0] == source["cfg_sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _torch_predictor(cfg: Path | None, weights: Path,
                     size: tuple[int, int]) -> Callable[[np.ndarray], list[np.ndarray]]:
    import torch

    from slimyolo.darknet.model import load_model

    model = load_model(cfg, weights, size)

    def predict(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [h.numpy() for h in model(torch.from_numpy(x))]

    return predict


def _onnx_predictor(onnx_path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def run_bench(model: str | Path, device: str = "CPU", hint: str = "throughput", precision: str | None = None,
              seconds: float = 10.0, image: np.ndarray | None = None, compare: bool = False,
              cfg: Path | None = None, weights: Path | None = None, onnx: Path | None = None) -> dict[str, Any]:
    """Benchmark ``model``; the result's keys include ``fps`` and ``latency_ms`` {p50, p90, p99}."""
    engine = Engine(model, device=device, hint=hint, precision=precision)
    if image is None:  # a camera-sized frame: the letterbox resize is part of the real cost
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    result: dict[str, Any] = {
        "model": str(engine.path), "device": device, "hint": hint, "precision": precision or "default",
        "execution_precision": execution_precision(engine),
        "input_size": list(engine.input_size), "requests": engine.num_requests,
        "cpu": cpu_info(), **bench_engine(engine, image, seconds)}  # model name, cores, SIMD flags
    if compare:
        others: dict[str, Any] = {}
        onnx = onnx or engine.path.with_name("model.onnx")
        source = (cfg, weights) if weights else recorded_source(engine.path.parent)
        if source is not None:
            others["pytorch"] = _bench_sync(_torch_predictor(*source, engine.input_size), engine, image, seconds)
            others["pytorch"]["weights"] = str(source[1])
        else:
            others["pytorch"] = {"skipped": "give --weights (and --cfg unless they are a .pt) to compare with "
                                            "PyTorch: the IR's conversion.json names no source weights that are "
                                            "still there unchanged"}
        try:
            if not onnx.is_file():
                raise SlimYoloError(f"no ONNX file at {onnx} (convert with --onnx, or give --onnx)")
            others["onnxruntime"] = _bench_sync(_onnx_predictor(onnx), engine, image, seconds)
        except ImportError:
            others["onnxruntime"] = {"skipped": "onnxruntime is not installed"}
        except SlimYoloError as exc:
            others["onnxruntime"] = {"skipped": str(exc)}
        result["compare"] = others
    return result
