"""What TLS and tokens cost the inference service: ``bench --remote`` throughput over TLS against plaintext.

Two processes of ``slimyolo serve inference`` on 127.0.0.1 serve the same IR (yolov4-tiny,
2 classes, random weights with a detector's objectness prior; FP32 via PyTorch; throughput hint):
one plaintext and open, one with TLS (a certificate of a CA made here, deploy/certs.py) and a tokens
file. ``slimyolo bench --remote``'s load generator (:func:`slimyolo.rpc.loadgen.run_load`, closed
loop, 8 clients, 2 s warm-up) drives each in turn, plaintext then TLS, ``rounds`` times, so that
each pair sees the same machine load (the ratio reported is the median of the pairs'), with
``ModelInfer`` (the raw FP32 tensor: 2 MB a request at 416 px, the most bytes TLS must encrypt)
and ``Detect`` (a 640×480 JPEG in, boxes out). The smaller input size makes inference cheap, so
that the transport's share of each call, and TLS's cost, shows. Clients and servers share this
machine's cores, so other work on it moves the throughput; the CPU seconds each call costs the
server (its ``process_cpu_seconds_total``) and the client (the load generator's own CPU time) move
far less, and are reported beside it. Each measured run follows a warm-up run of its own and has no
warm-up inside, so that the CPU counted is that of the calls counted.

    .venv/bin/python benchmarks/tls.py [--seconds 10] [--sizes 416,128] [--clients 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import certs
from common import machine, markdown_table, save
from serving import make_ir, services

from slimyolo.rpc.loadgen import LoadSpec, run_load
from slimyolo.security import ClientSecurity


def _server_cpu(log: Path) -> float:
    """The CPU seconds a server has used so far (``process_cpu_seconds_total`` of the metrics port its log names)."""
    port = re.search(r"metrics on [\d.]+:(\d+)", log.read_text(errors="replace")).group(1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return float(re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M).group(1))


def measure(work: Path, size: int, seconds: float, clients: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Each round's run_load figures, by ``"<api> <plain|tls>"``, for one input size."""
    shutil.rmtree(work / f"tiny{size}", ignore_errors=True)  # a run before this one's
    make_ir(work / f"tiny{size}", size, via="torch")
    models = work / f"tiny{size}" / "models"
    tls = work / "certs"
    certs.make_ca(tls)
    server = certs.make_cert(tls, "localhost", ["localhost"], ["127.0.0.1"])
    line = certs.make_token("infer", "bench", tls / "bench.token")
    (tls / "tokens").write_text(line + "\n")
    secure = {"SLIMYOLO_TLS_CERT": str(server / "tls.crt"), "SLIMYOLO_TLS_KEY": str(server / "tls.key"),
              "SLIMYOLO_AUTH_TOKENS": str(tls / "tokens")}
    client = ClientSecurity(tls_ca=str(tls / "ca.crt"), token=(tls / "bench.token").read_text())
    figures: dict[str, list[dict[str, Any]]] = {}
    for name in ("plain", "tls"):
        (work / f"logs-{name}-{size}").mkdir(parents=True, exist_ok=True)
    with services(models, 1, work / f"logs-plain-{size}") as plain:
        os.environ.update({"SLIMYOLO_CLIENT_TLS_CA": client.tls_ca, "SLIMYOLO_TOKEN": client.token})
        try:  # the readiness wait of services() connects as the environment says
            with services(models, 1, work / f"logs-tls-{size}", env=secure) as over_tls:
                targets = {"plain": (plain, ClientSecurity()), "tls": (over_tls, client)}
                for api in ("infer", "detect"):
                    for _ in range(rounds):
                        for mode, (target, security) in targets.items():
                            spec = LoadSpec(target, f"tiny{size}", api, concurrency=clients, seconds=2, warmup=0)
                            run_load(spec, security=security)  # connections made, first inferences done
                            log = work / f"logs-{mode}-{size}" / "serve-0.log"
                            before = _server_cpu(log)
                            result = run_load(dataclasses.replace(spec, seconds=seconds), security=security)
                            assert not result["errors"], result["errors"]
                            result["server_cpu_ms_per_call"] = round(1000 * (_server_cpu(log) - before) /
                                                                     max(result["ok"], 1), 3)
                            print(f"{size} px {api} {mode}: {result['fps']} FPS, p50 {result['latency_ms']['p50']} ms, "
                                  f"CPU ms per call: server {result['server_cpu_ms_per_call']}, client "
                                  f"{result.get('client_cpu_ms_per_call')}", flush=True)
                            figures.setdefault(f"{api} {mode}", []).append(result)
        finally:
            for name in ("SLIMYOLO_CLIENT_TLS_CA", "SLIMYOLO_TOKEN"):
                os.environ.pop(name, None)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", default="416,128")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-tls"))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "clients": args.clients, "seconds": args.seconds, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        result["sizes"][size] = measure(args.work, size, args.seconds, args.clients, args.rounds)
    result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\nmachine: {result['machine']}\n")
    rows = []
    for size, figures in result["sizes"].items():
        for api in ("infer", "detect"):
            plain, tls = figures[f"{api} plain"], figures[f"{api} tls"]
            ratios = [t["fps"] / p["fps"] for p, t in zip(plain, tls, strict=True)]
            rows.append([size, api, median(r["fps"] for r in plain), median(r["fps"] for r in tls),
                         round(median(ratios), 3), f"{min(ratios):.2f}–{max(ratios):.2f}",
                         *(median(r[key] for r in runs) for key in ("server_cpu_ms_per_call", "client_cpu_ms_per_call")
                           for runs in (plain, tls))])
    print(markdown_table(["input px", "api", "plaintext FPS", "TLS + token FPS", "TLS ÷ plaintext (median of pairs)",
                          "pairs' range", "server CPU ms/call plain", "TLS", "client CPU ms/call plain", "TLS"], rows))
    print(f"\nsaved {save('tls', result)}")


if __name__ == "__main__":
    main()
