"""The CPU a measurement ran on: model name, cores, and the SIMD extensions OpenVINO uses.

Speed figures are only comparable between machines of the same kind: OpenVINO picks AVX2,
AVX-512, VNNI (int8 dot products), AMX and native bf16 kernels when the CPU has them, which
changes f32/bf16/int8 throughput by integer factors. So every measured figure (the sweep's
FPS, the benchmarks) carries this description.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag names, in the order printed.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """{"cpu": model name, "cores": logical CPUs, "isa": the flags of :data:`ISA_FLAGS` it has}."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "isa": []}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line for line in lines if line.startswith("flags")).split(":", 1)[1].split())
        info["isa"] = [f for f in ISA_FLAGS if f in flags]
    except (OSError, StopIteration):  # not Linux, or an unusual cpuinfo: the model name from platform
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    """One line: ``model name (N cores; avx2, avx512f, ...)``."""
    return f"{info['cpu']} ({info['cores']} cores; {', '.join(info['isa']) or 'no AVX2'})"
