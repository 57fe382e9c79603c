"""What every benchmark script shares: the machine description, timing of other runtimes, and
writing results (JSON for the record, Markdown for BENCHMARKS.md).

Each script in this folder runs alone (``.venv/bin/python benchmarks/<name>.py``) and measures
everything it compares in the same run, so ratios are taken under the same machine load.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimyolo.cpuinfo import cpu_info

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, the SIMD extensions that matter to OpenVINO, library versions, load."""
    info = cpu_info()
    import openvino

    info["openvino"] = openvino.__version__.split("-")[0]
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    info["date"] = time.strftime("%Y-%m-%d %H:%M")
    return info


def announce_machine() -> dict[str, Any]:
    """:func:`machine`, printed first as one line: every figure that follows is read beside the CPU and the load."""
    info = machine()
    print(f"{info['cpu']} ({info['cores']} cores; {', '.join(info['isa'])}), load {info['load_average']}",
          flush=True)
    return info


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} if len(ms) else {}


def time_sync(run: Callable[[], Any], seconds: float, warmup: int = 2) -> dict[str, Any]:
    """Frames per second and latency percentiles of a blocking call, one frame at a time."""
    for _ in range(warmup):
        run()
    latencies = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or not latencies:
        t = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    return {"frames": len(latencies), "fps": round(len(latencies) / elapsed, 3),
            "latency_ms": percentiles_ms(latencies)}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
