"""The words of the stage settings, defined once: prune methods, conversion paths, precisions.

Two different things are called "precision" in this field, and they have different names here
on purpose, as OpenVINO names them:

- the **IR precision** (:data:`IR_PRECISIONS`: ``fp32``, ``fp16``, ``int8``) is how a converted
  model stores its weights: what the converter writes (FP16-compressed weights, NNCF INT8);
- the **execution precision** (:data:`EXEC_PRECISIONS`: ``f32``, ``bf16``, ``f16``) is what
  the CPU plugin computes in, OpenVINO's ``INFERENCE_PRECISION_HINT``. An fp32 IR runs in bf16
  by default on a CPU with AVX-512 BF16 or AMX, so the two are independent settings.

Where a setting takes an execution precision, the IR spellings ``fp32``/``fp16`` are accepted
too (:func:`exec_precision`) and mean ``f32``/``f16``: a user who writes one or the other means
the same thing. Nothing here imports the heavy libraries or the generated protobuf code; the
proto enum of the IR precision is named in :data:`IR_PRECISION_ENUM` and looked up by name in
:mod:`slimyolo.rpc.messages`.
"""

from __future__ import annotations

from slimyolo.errors import SlimYoloError

PRUNE_METHODS = ("channel", "layer", "both")  # "both": layer pruning first, then channel pruning
CONVERSION_PATHS = ("tf", "torch")  # cfg + weights → Keras/TF → OpenVINO, or PyTorch → OpenVINO
PPP_MODES = ("fixed", "resize")  # u8 NHWC BGR input of the model size / of any size (letterboxed inside)
IR_PRECISIONS = ("fp32", "fp16", "int8")
EXEC_PRECISIONS = ("f32", "bf16", "f16")
# Execution precision of a benchmark: a hint, or "default" (the device's own choice, bf16 on some CPUs).
BENCH_PRECISIONS = (*EXEC_PRECISIONS, "default")
# What the sweep measures FPS at: an execution precision of the f32 IR, or the INT8 IR.
FPS_PRECISIONS = ("f32", "bf16", "int8")
SWEEP_OBJECTIVES = ("bflops", "fps", "accuracy")
# The inference service's --model-control: LoadModel/UnloadModel refused (none, as Triton's default) or served.
MODEL_CONTROL = ("none", "explicit")
MAX_BENCHMARK_SECONDS = 60.0  # the inference service's BenchmarkModel holds a worker and the CPU: bounded
# OpenVINO performance hints, by the name the settings use.
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
# The IR precision's enum value in the protos (slimyolo.v1.Precision), by name.
IR_PRECISION_ENUM = {"fp32": "PRECISION_FP32", "fp16": "PRECISION_FP16", "int8": "PRECISION_INT8"}
_EXEC_ALIASES = {"fp32": "f32", "fp16": "f16"}


def exec_precision(value: str) -> str:
    """The canonical execution precision of ``value`` (``fp32`` → ``f32``, ``fp16`` → ``f16``)."""
    return _EXEC_ALIASES.get(value, value)


def choose(value: object, options: tuple[str, ...], where: str) -> str:
    """``value`` if it is one of ``options`` (aliases of execution precisions resolved), else an error."""
    canonical = exec_precision(value) if isinstance(value, str) and "f32" in options else value
    if canonical not in options:
        raise SlimYoloError(f"{where} must be one of {', '.join(options)}, got {value!r}")
    return canonical  # type: ignore[return-value]


def parse_grid(text: str) -> int:
    """'2x2' → 2: a mosaic setting (``--mosaic``, the service's ``SLIMYOLO_MOSAIC``) is a square grid of k×k tiles."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SlimYoloError(f"bad mosaic {text!r}: expected KxK, e.g. 2x2") from None
    if rows != cols or rows < 1:
        raise SlimYoloError(f"bad mosaic {text!r}: the mosaic must be square (KxK with K >= 1)")
    return rows
