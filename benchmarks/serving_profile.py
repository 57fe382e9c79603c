"""Where the inference service spends its CPU per request, against OpenVINO's own ``benchmark_app``.

For each of three IRs shaped like the ones ``make demo`` ships (yolov4-tiny, 2 classes, 160×160:
the baseline at full width and a pruned-size model at half width, both FP32, and that pruned model
INT8; random weights with a detector's objectness prior: speed does not depend on the weights'
values), or ``make demo``'s own three models (``--repository .slimyolo/store/models``: demo-baseline,
demo and demo-int8; trained weights, so Detect answers with the boxes of a trained detector),
measured in one run:

- ``benchmark_app -infer_precision f32``: with the throughput hint at batch 1 and at ``--client-batch``
  images an inference (FPS, and its CPU per image: the process's user + system CPU seconds over the
  images it ran), and with the latency hint (its 99th-percentile latency);
- the inference service (``slimyolo serve inference``, its own process, f32): with the throughput
  hint, under ``--clients`` closed-loop clients of ``ModelInfer`` (the raw tensor, one image a call
  and ``--client-batch`` images a call) and of ``Detect`` (bench's 640×480 JPEG), each call alone
  and with dynamic batching (``--max-batch``, default 8), and one client's ``ModelInfer``; with the
  latency hint, one client's ``ModelInfer`` and ``Detect``: FPS, latency, and the server's CPU per
  call and per image (its own CPU seconds, read from ``/proc/PID/stat``, over the calls it answered);
- meanwhile ``py-spy`` samples the thread holding the server's GIL (``--gil --nonblocking``: the
  Python work, on CPU), and each
  sample is put in one part of the request's road (:data:`PARTS`) by the innermost frame that names
  one: gRPC and protobuf, the servicer's messages, the status interceptor, metrics, admission and
  the model lease, batching, the KServe tensors in (input decoding) and out (output encoding), the
  inference calls (OpenVINO's Python API: submitting, waiting is not CPU), image decoding,
  letterbox, head decoding and NMS, the rest.

So ``server CPU per image − benchmark_app's CPU per image`` (at the same batch) is the service's overhead; the GIL
samples (one stands for 1/RATE s) give the part of it spent in Python and where that goes, the rest
is native: gRPC's core threads, copies, OpenVINO's hand-offs. The clients run in this process, on
the same cores, as a sidecar would; nothing else may run meanwhile (ratios of a loaded machine are
false).

    .venv/bin/python benchmarks/serving_profile.py [--seconds 10] [--clients 8] [--max-batch 8] [--client-batch 8]
                                                   [--repository .slimyolo/store/models] [--work DIR]

Needs ``py-spy`` (the ``dev`` extra) and permission to trace the server (root, or
``kernel.yama.ptrace_scope`` 0): the server is this script's child.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import announce_machine, machine, markdown_table, process_cpu, save
from serving import benchmark_app, make_ir, services

from slimyolo.convert import ConvertOptions, convert
from slimyolo.infer.engine import resolve_ir
from slimyolo.rpc.loadgen import LoadSpec, run_load

BIN = Path(sys.executable).parent
SIZE = 160
RATE = 250  # py-spy samples a second: each sample of the GIL's holder stands for 1/RATE s of Python on CPU

# The parts of a request's road, each found by the innermost frame of a sample that matches one of its
# patterns (a function name, or a file's path), tried in this order for each frame.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input decoding", ("decode_inputs", "frombuffer")),
    ("output encoding", ("encode_output", "tobytes")),
    ("image decode", ("decode_image", "imdecode", "serving/images.py")),
    ("letterbox", ("letterbox", "Engine.prepare")),
    ("head decode + NMS", ("detections_from_heads", "infer/decode.py", "NMS")),
    ("metrics", ("prometheus_client", "serving/metrics.py", "_GrpcMetrics")),
    ("batching", ("serving/batching.py",)),
    ("admission + model lease", ("_admit", "serving/manager.py")),
    ("servicer: messages in and out", ("services/inference.py",)),
    ("interceptor (status, served-by)", ("rpc/server.py",)),
    ("inference calls", ("infer/engine.py", "openvino")),
    ("gRPC + protobuf", ("grpc", "protobuf", "_pb2")),
)


def children(name: str) -> list[int]:
    """The PIDs of this process's children whose command line contains ``name``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if ppid == os.getpid() and name in cmdline:
            found.append(int(stat.parent.name))
    return found


def classify(stack: str) -> str:
    """The part of the road a py-spy raw stack (``frame;frame;...``, outermost first) belongs to."""
    for frame in reversed(stack.split(";")):
        for part, patterns in PARTS:
            if any(p in frame for p in patterns):
                return part
    return "other Python"


def frames_and_inferences(metrics_url: str, model: str) -> tuple[float, float]:
    """The server's ``slimyolo_inference_frames_total`` and inference count of ``model`` so far."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    found = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.labels.get("model") == model and s.name in ("slimyolo_inference_frames_total",
                                                               "slimyolo_inference_duration_seconds_count")}
    return found.get("slimyolo_inference_frames_total", 0.0), found.get("slimyolo_inference_duration_seconds_count",
                                                                          0.0)


def profiled_load(target: str, pid: int, metrics_url: str, model: str, api: str, clients: int, seconds: float,
                  work: Path, batch: int = 1) -> dict[str, Any]:
    """``clients`` closed-loop clients of ``api`` (``batch`` images a ModelInfer call) for ``seconds`` while py-spy
    samples the server: FPS (images), latency, the server's CPU per answered call and per image, frames per
    inference, and the Python samples by part of the road."""
    spec = LoadSpec(target, model, api, concurrency=clients, seconds=seconds, warmup=0.0, batch=batch)
    run_load(dataclasses.replace(spec, seconds=2.0, warmup=1.0))  # connections, caches
    raw = work / f"{model}-{api}-{batch}.txt"
    spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(RATE), "--gil",
                            "--nonblocking",
                            "--format", "raw", "--output", str(raw), "--duration", str(int(seconds) + 1)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attached
    cpu0, (frames0, inferences0) = process_cpu(pid), frames_and_inferences(metrics_url, model)
    result = run_load(spec)
    cpu = process_cpu(pid) - cpu0
    frames, inferences = (b - a for a, b in zip((frames0, inferences0), frames_and_inferences(metrics_url, model),
                                                 strict=True))
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[classify(stack)] += int(count)
    total = sum(samples.values())
    answered = result["ok"]
    per_request = 1000 * cpu / answered
    print(f"{work.name} {model} {api} x{batch}: {result['fps']} FPS, server {per_request:.3f} ms CPU per request, "
          f"{total} Python samples", flush=True)
    return {"fps": result["fps"], "batch": batch, "answered": answered, "errors": result["errors"],
            "latency_ms": result["latency_ms"], "client_cpu_ms_per_call": result["client_cpu_ms_per_call"],
            "server_cpu_ms_per_request": round(per_request, 3),
            "server_cpu_ms_per_image": round(per_request / batch, 3), "python_samples": total,
            "python_ms_per_request": round(1000 * total / RATE / answered, 3),
            "frames_per_inference": round(frames / max(inferences, 1), 2),
            "python_share": {part: round(n / total, 4) for part, n in samples.most_common()} if total else {}}


def make_models(work: Path) -> dict[str, Path]:
    """The three IRs in ``work/models``: baseline and pruned-size FP32, pruned-size INT8 (those of an earlier run
    with the same ``--work`` are measured again as they are)."""
    made = {name: work / "models" / name / "1" / "model.xml" for name in ("baseline", "pruned", "pruned-int8")}
    if all(xml.is_file() for xml in made.values()):
        return made
    baseline = make_ir(work / "baseline", SIZE, width=1.0)
    pruned = make_ir(work / "pruned", SIZE, width=0.5)
    int8 = convert(work / "pruned" / "model.cfg", work / "pruned" / "model.weights", work / "models",
                   ConvertOptions(precision="int8", calib_images=8), name="pruned-int8", version=1,
                   calib_data=work / "pruned" / "synth").path / "model.xml"
    models = work / "models"
    for xml in (baseline, pruned):  # make_ir writes each model under its own folder
        target = models / xml.parent.parent.name
        if not target.exists():
            shutil.copytree(xml.parent.parent, target)
    return {"baseline": baseline, "pruned": pruned, "pruned-int8": int8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8, help="the batched service's --max-batch (default 8)")
    parser.add_argument("--client-batch", type=int, default=8,
                        help="images in each ModelInfer call of the batched-call rows (default 8)")
    parser.add_argument("--repository", type=Path,
                        help="measure the models make demo shipped instead: demo-baseline, demo and demo-int8 of "
                             "this model repository (e.g. .slimyolo/store/models), each at its newest version")
    parser.add_argument("--work", type=Path, help="keep the models and py-spy's samples here (default: a "
                                                  "temporary folder)")
    args = parser.parse_args()
    if shutil.which("py-spy", path=str(BIN)) is None:
        raise SystemExit("py-spy is not installed in this environment: pip install py-spy (the dev extra)")
    work = args.work or Path(tempfile.mkdtemp(prefix="slimyolo-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    info = announce_machine()
    if args.repository:  # table label → the name the service serves it under
        served = {"baseline": "demo-baseline", "pruned": "demo", "pruned-int8": "demo-int8"}
        models = {label: resolve_ir(args.repository / name) for label, name in served.items()}
        repository = args.repository
    else:
        models, repository = make_models(work), work / "models"
        served = {label: label for label in models}
    cb = args.client_batch
    apps: dict[str, dict[str, Any]] = {}
    for name, xml in models.items():
        apps[name] = {"throughput": benchmark_app(xml, SIZE, "throughput", args.seconds),
                      f"throughput x{cb}": benchmark_app(xml, SIZE, "throughput", args.seconds, batch=cb),
                      "latency": benchmark_app(xml, SIZE, "latency", args.seconds, percentile=99)}
        print(f"{name}: benchmark_app {apps[name]}", flush=True)
    # (service mode, server environment, hint) → the calls measured: (api, images a call, clients)
    modes = {"alone": ({}, "throughput", [("infer", 1, args.clients), ("infer", cb, args.clients),
                                         ("detect", 1, args.clients), ("infer", 1, 1)]),
             f"max-batch {args.max_batch}": ({"SLIMYOLO_INFERENCE_MAX_BATCH": str(args.max_batch)}, "throughput",
                                             [("infer", 1, args.clients), ("detect", 1, args.clients)]),
             "latency hint": ({}, "latency", [("infer", 1, 1), ("detect", 1, 1)])}
    runs: dict[str, dict[str, Any]] = {name: {} for name in models}
    for mode, (env, hint, calls) in modes.items():
        logs = work / mode.replace(" ", "-")
        logs.mkdir(exist_ok=True)
        with services(repository, 1, logs, env=env, hint=hint) as target:
            (pid,) = children("serve inference")
            port = re.search(r"metrics on [\d.]+:(\d+)", (logs / "serve-0.log").read_text()).group(1)
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            for name in models:
                for api, batch, clients in calls:
                    key = f"{api} x{batch}, {clients} client{'s' if clients > 1 else ''}, {mode}"
                    runs[name][key] = profiled_load(target, pid, metrics_url, served[name], api, clients,
                                                    args.seconds, logs, batch)
    for name, measured in runs.items():
        base = apps[name]["throughput"]
        for run in measured.values():
            same = apps[name][f"throughput x{cb}"] if run["batch"] == cb and cb > 1 else base
            run["fps_ratio"] = round(run["fps"] / base["fps"], 3)
            run["fps_ratio_same_batch"] = round(run["fps"] / same["fps"], 3)
            run["overhead_cpu_ms_per_image"] = round(run["server_cpu_ms_per_image"] - same["cpu_ms_per_image"], 3)
            run["p99_ratio_latency_hint"] = round(run["latency_ms"]["p99"] / apps[name]["latency"]["latency_ms"]["p99"],
                                                  3)
    result = {"machine": info, "machine_after": machine()["load_average"], "seconds": args.seconds,
              "models": {label: str(xml) for label, xml in models.items()},
              "clients": args.clients, "client_batch": cb, "size": SIZE, "benchmark_app": apps, "service": runs}
    path = save("serving_profile", result)
    print(markdown_table(["model", "benchmark_app", "FPS", "CPU ms/image", "p99 ms"],
                         [[name, what, r["fps"], r["cpu_ms_per_image"], r["latency_ms"].get("p99", "")]
                          for name, app in apps.items() for what, r in app.items()]))
    print()
    print(markdown_table(["model", "calls", "service FPS", "÷ benchmark_app (batch 1)", "÷ same batch",
                          "p50 ms", "p99 ms", "p99 ÷ latency-hint p99", "frames/inference", "server CPU ms/image",
                          "overhead ms/image", "Python ms/call", "that Python by part (≥ 3 %)"],
                         [[name, key, r["fps"], r["fps_ratio"], r["fps_ratio_same_batch"], r["latency_ms"]["p50"],
                           r["latency_ms"]["p99"], r["p99_ratio_latency_hint"], r["frames_per_inference"],
                           r["server_cpu_ms_per_image"], r["overhead_cpu_ms_per_image"], r["python_ms_per_request"],
                           ", ".join(f"{part} {100 * share:.0f} %" for part, share in r["python_share"].items()
                                     if share >= 0.03)]
                          for name, measured in runs.items() for key, r in measured.items()]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
