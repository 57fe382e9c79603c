"""The floor of a Python gRPC frontend: server CPU per KServe ModelInfer call that does no work at all.

A server process answers ``ModelInfer`` with a fixed response the size of a small model's heads (no
decoding, no inference, no metrics), once with grpcio's thread-pool server and once with its asyncio
server (``grpc.aio``); ``slimyolo bench --remote`` loads it with ``--clients`` closed-loop clients
spread over ``--processes`` client processes. The server's own CPU seconds (``/proc/PID/stat``, over
the measured seconds alone) per answered call are what any Python servicer pays before its own
work: the part of the inference service's overhead (benchmarks/serving_profile.py) that no change
inside the servicer can remove; and one client's latency per call (p50, p99: the round trip of a
160 px FP32 tensor, 300 KB, and its answer), the floor under the service's latency. Alternating
runs, each mode ``--repeats`` times; nothing else may run meanwhile.

    .venv/bin/python benchmarks/grpc_floor.py [--seconds 5] [--clients 8] [--processes 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import announce_machine, process_cpu, save

BIN = Path(sys.executable).parent
MODES = ("sync", "aio")


def serve(mode: str, port: int) -> None:
    """The do-nothing KServe server (run in a child process: ``grpc_floor.py --serve MODE PORT``)."""
    import grpc

    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as pb
    from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2_grpc as rpc

    heads = os.urandom(2 * 21 * 12 * 12 * 4)  # about the raw heads of a 2-class tiny model at 160 px
    tensor = pb.ModelMetadataResponse.TensorMetadata
    meta = pb.ModelMetadataResponse(name="floor", versions=["1"], platform="none",
                                    inputs=[tensor(name="images", datatype="FP32", shape=[-1, 3, 160, 160])])
    answer = pb.ModelInferResponse(model_name="floor", model_version="1", raw_output_contents=[heads],
                                   outputs=[pb.ModelInferResponse.InferOutputTensor(name="heads", datatype="FP32",
                                                                                    shape=[2, 21, 12, 12])])

    class Sync(rpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            return answer

        def ModelMetadata(self, request, context):
            return meta

    class Aio(rpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            return answer

        async def ModelMetadata(self, request, context):
            return meta

    if mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(64))
        rpc.add_GRPCInferenceServiceServicer_to_server(Sync(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        rpc.add_GRPCInferenceServiceServicer_to_server(Aio(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """One run of ``mode``: the load's FPS, the server's and the clients' CPU ms per answered call; then one
    client's latency."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(port)])
    try:
        time.sleep(3)  # imported and listening
        warm = subprocess.run([str(BIN / "slimyolo"), "bench", "--remote", f"127.0.0.1:{port}", "--model", "floor",
                               "--concurrency", str(args.clients), "--seconds", "2", "--warmup", "0"],
                              capture_output=True, text=True)
        if warm.returncode:
            raise RuntimeError(f"the warm-up load failed: {warm.stderr[-500:]}")
        # The server's CPU is read around the whole command; the clients' start and warm-up add to it, so their
        # time is kept short next to the measured seconds, and the same in both modes.
        cpu0 = process_cpu(server.pid)
        out = subprocess.run([str(BIN / "slimyolo"), "bench", "--remote", f"127.0.0.1:{port}", "--model", "floor",
                              "--concurrency", str(args.clients), "--processes", str(args.processes), "--seconds",
                              str(args.seconds), "--warmup", "0.5", "--json"], capture_output=True, text=True)
        cpu = process_cpu(server.pid) - cpu0
        if out.returncode:
            raise RuntimeError(f"the load failed: {out.stderr[-500:]}")
        result = json.loads(out.stdout)
        alone = subprocess.run([str(BIN / "slimyolo"), "bench", "--remote", f"127.0.0.1:{port}", "--model", "floor",
                                "--concurrency", "1", "--seconds", str(args.seconds), "--warmup", "0.5", "--json"],
                               capture_output=True, text=True)
        if alone.returncode:
            raise RuntimeError(f"the one-client load failed: {alone.stderr[-500:]}")
        latency = json.loads(alone.stdout)["latency_ms"]
    finally:
        server.terminate()
        server.wait(30)
    calls = result["ok"] * (1 + 0.5 / args.seconds)  # the calls of the warm-up half-second too, at the same rate
    return {"fps": result["fps"], "server_cpu_ms_per_call": round(1000 * cpu / calls, 3),
            "client_cpu_ms_per_call": result["client_cpu_ms_per_call"], "one_client_p50_ms": latency["p50"],
            "one_client_p99_ms": latency["p99"]}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    info = announce_machine()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:  # alternating, so that a change in the machine's load falls on both
            runs[mode].append(measure(mode, args))
            print(mode, runs[mode][-1], flush=True)
    summary = {mode: {key: round(statistics.median(r[key] for r in rs), 3) for key in rs[0]}
               for mode, rs in runs.items()}
    path = save("grpc_floor", {"machine": info, "clients": args.clients, "processes": args.processes,
                               "seconds": args.seconds, "runs": runs, "median": summary})
    for mode, figures in summary.items():
        print(f"{mode}: {figures['fps']:.0f} calls/s, server {figures['server_cpu_ms_per_call']:.3f} ms CPU a call, "
              f"clients {figures['client_cpu_ms_per_call']:.3f} ms; one client's call p50 "
              f"{figures['one_client_p50_ms']:.2f} ms, p99 {figures['one_client_p99_ms']:.2f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
