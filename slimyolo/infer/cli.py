"""``slimyolo detect`` and ``slimyolo bench``: the OpenVINO inference side on the command line.

``bench --remote TARGET`` loads a running inference service instead of a local IR
(:mod:`slimyolo.rpc.loadgen`); ``--model`` is then the model's name in the service's repository.
``bench --remote TARGET --server-side`` has the service time the model itself (its BenchmarkModel
RPC: inference only, on the server's CPU, neither the network nor a client in the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from slimyolo.security import add_client_arguments, client_security
from slimyolo.vocab import MAX_BENCHMARK_SECONDS


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.xml, its model version folder (models/NAME/VERSION), "
                                                  "or a model folder (models/NAME): its newest version")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, AUTO (default CPU)")
    p.add_argument("--precision", choices=["f32", "bf16", "f16"],
                   help="INFERENCE_PRECISION_HINT (default: the device's own choice)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects in images, folders, videos, cameras or streams")
    _engine_args(p)
    p.add_argument("--source", action="append", required=True,
                   help="image, folder, video, camera index or rtsp/http URL; repeat for several")
    p.add_argument("--mosaic", help="KxK: multiplex up to K*K sources through one inference (e.g. 2x2)")
    p.add_argument("--out", type=Path, help="folder for annotated output and detections.jsonl")
    p.add_argument("--show", action="store_true", help="show annotated frames in a window")
    p.add_argument("--hint", choices=["latency", "throughput"], default="throughput",
                   help="OpenVINO PERFORMANCE_HINT (default throughput)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.set_defaults(func=_detect)

    p = sub.add_parser("bench", help="FPS and latency of an IR, end to end and inference only; or of an "
                                      "inference service under load (--remote)")
    _engine_args(p)
    remote = p.add_argument_group("load on a running inference service")
    remote.add_argument("--remote", metavar="TARGET",
                        help="the service: HOST:PORT, dns:///NAME:PORT or ipv4:A:P,B:P (round-robin over all); "
                             "--model is then the model's name")
    load = remote.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=1, help="clients, each with one call outstanding (default 1)")
    load.add_argument("--rate", type=float, default=0.0, help="calls per second, sent whatever the answers (open loop)")
    remote.add_argument("--api", choices=["infer", "detect"], default="infer",
                        help="KServe ModelInfer with a raw tensor, or Detect with a JPEG frame (default infer)")
    remote.add_argument("--batch", type=int, default=1,
                        help="with --api infer: images in each ModelInfer call, as its tensor's batch dimension "
                             "(default 1; FPS counts images); a model with a dynamic batch runs them as one "
                             "inference, which can be cheaper per image than single calls")
    remote.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    remote.add_argument("--processes", type=int, default=1,
                        help="client processes the clients (or the rate) are spread over, so that the load generator "
                             "is not the bottleneck it measures (default 1; its own CPU is printed either way)")
    remote.add_argument("--server-side", action="store_true",
                        help="have the service time the model itself, inference only, on its own CPU (no network, "
                             f"no client; at most {MAX_BENCHMARK_SECONDS:g} seconds); --model is NAME or NAME/VERSION "
                             "of a loaded model")
    remote.add_argument("--mosaic", metavar="KxK",
                        help="with --server-side: time the KxK mosaic the service runs for video streams (one "
                             "inference serves K*K frames) instead of the model at its own input size")
    add_client_arguments(remote)
    p.add_argument("--hint", choices=["latency", "throughput"], default="throughput",
                   help="OpenVINO PERFORMANCE_HINT (default throughput)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement (default 10)")
    p.add_argument("--image", type=Path, help="benchmark on this image (default: a random 640x480 frame; with "
                                               "--remote --api detect it is sent as it is)")
    p.add_argument("--compare", action="store_true", help="also run PyTorch and ONNX Runtime in the same run")
    p.add_argument("--cfg", type=Path, help="with --compare: the cfg for PyTorch (not needed for a .pt)")
    p.add_argument("--weights", type=Path, help="with --compare: the weights for PyTorch (default: the source "
                                                "weights conversion.json records, if still there unchanged)")
    p.add_argument("--onnx", type=Path, help="with --compare: the ONNX file (default: model.onnx beside the IR)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_bench, bench_parser=p)


def _model(model: str) -> Path:
    """The IR of --model; a model folder (models/NAME) means its newest complete version, said on stderr."""
    from slimyolo.infer.engine import resolve_ir

    path = resolve_ir(model)
    if Path(model).is_dir() and path.parent.parent == Path(model):
        print(f"{model}: using version {path.parent.name}, the newest", file=sys.stderr)
    return path


def _detect(args: argparse.Namespace) -> int:
    from slimyolo.infer.detect import run_detect
    from slimyolo.progress import FrameRate
    from slimyolo.vocab import parse_grid

    def show_fps(event: FrameRate) -> None:
        print(f"\r{event.frames} frames, {event.fps:.1f} FPS", end="", file=sys.stderr, flush=True)

    summary = run_detect(_model(args.model), args.source, args.out, parse_grid(args.mosaic) if args.mosaic else 0,
                         args.show, progress=show_fps, device=args.device, hint=args.hint,
                         precision=args.precision, conf_thres=args.conf, iou_thres=args.iou)
    print(f"\r{summary.frames} frames, {summary.detections} detections, {summary.fps:.1f} FPS"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _bench_remote(args: argparse.Namespace) -> int:
    from slimyolo.errors import SlimYoloError
    from slimyolo.rpc.loadgen import LoadSpec, run_load

    if args.compare:
        raise SlimYoloError("--compare: compares runtimes on a local IR, not with --remote")
    image = b""
    if args.image:
        try:
            image = args.image.read_bytes()
        except OSError as exc:
            raise SlimYoloError(f"--image {args.image}: {exc.strerror}") from None
    spec = LoadSpec(args.remote, args.model, args.api, args.concurrency, args.rate, args.seconds, args.warmup,
                    image=image, processes=args.processes, batch=args.batch)

    def show(r: dict) -> None:
        print(f"\r{r['elapsed_s']:6.1f} s  {r['ok']} ok  {sum(r['errors'].values())} errors  {r['fps']:.1f} FPS  "
              f"p50 {r['latency_ms']['p50']:.1f} ms", end="", file=sys.stderr, flush=True)

    result = run_load(spec, progress=show, security=client_security(args, os.environ))
    print(file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return 0
    load = f"rate {result['rate']:g}/s" if "rate" in result else f"{result['concurrency']} clients"
    lat = result["latency_ms"]
    per_call = f", {result['batch']} images a call: {result['calls_per_s']:.1f} calls/s" if result["batch"] > 1 \
        else ""
    print(f"{result['api']} {result['model']} on {result['target']} ({load}, {result['elapsed_s']:.1f} s): "
          f"{result['fps']:.1f} FPS{per_call}, p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  "
          f"p99 {lat['p99']:.2f} ms")
    print(f"  errors: {', '.join(f'{k} {v}' for k, v in result['errors'].items()) or 'none'}")
    print(f"  client: {result['processes']} process{'es' if result['processes'] > 1 else ''}, "
          f"{result['client_cpu_s']:.1f} CPU s ({result['client_cpu_ms_per_call']:.2f} ms a call answered)")
    for server, n in result["by_server"].items():
        print(f"  {server}: {n} calls ({100 * n / max(result['ok'], 1):.0f} %)")
    return 0


# The bench settings of a client-side or local measurement, which --server-side (the service's own) does not take.
_CLIENT_SIDE = ("concurrency", "rate", "api", "warmup", "processes", "batch", "image", "compare", "cfg", "weights",
                "onnx", "device", "precision", "hint")


def _bench_server_side(args: argparse.Namespace) -> int:
    from slimyolo.cpuinfo import describe
    from slimyolo.errors import SlimYoloError
    from slimyolo.rpc.inference_client import InferenceClient
    from slimyolo.vocab import parse_grid

    if not args.remote:
        raise SlimYoloError("--server-side: give --remote TARGET, the inference service that times the model")
    given = [f"--{dest.replace('_', '-')}" for dest in _CLIENT_SIDE
             if getattr(args, dest) != args.bench_parser.get_default(dest)]  # set to other than its default
    if given:
        raise SlimYoloError(f"--server-side: the service times the model as it serves it (its own device, hint and "
                            f"precision, inference only, no client): {', '.join(given)} do not apply")
    name, _, version = args.model.partition("/")
    if not name or "/" in version:
        raise SlimYoloError(f"--model {args.model!r}: with --server-side, NAME or NAME/VERSION of a model the service "
                            "has loaded")
    mosaic = parse_grid(args.mosaic) if args.mosaic else 0
    with InferenceClient(args.remote, security=client_security(args, os.environ)) as client:
        r = client.benchmark(name, version, args.seconds, mosaic)
    if args.json:
        print(json.dumps(r))
        return 0
    lat = r["latency_ms"]
    print(f"{r['model']}/{r['version']} on {r['target']} (host {r['host']}), server-side, inference only "
          f"({r['device']}, {r['execution_precision']}, {r['precision']} IR, {r['requests']} requests, input "
          f"{r['input_size'][1]}x{r['input_size'][0]}, {r['inferences']} inferences in {r['seconds']:.1f} s)")
    k = r["mosaic"]
    rate = f"{r['fps']:.1f} FPS" if k == 1 else \
        f"{r['fps']:.1f} inferences/s of the {k}x{k} mosaic = {r['frames_per_second']:.1f} frames/s"
    print(f"  {rate}   p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  p99 {lat['p99']:.2f} ms   "
          f"on {describe(r['cpu'])}")
    if r["concurrent_frames"]:
        print(f"  the service ran {r['concurrent_frames']} frames for its clients meanwhile: they shared the CPU")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import cv2

    from slimyolo.errors import SlimYoloError
    from slimyolo.infer.bench import run_bench

    if args.server_side:
        return _bench_server_side(args)
    if args.mosaic:
        raise SlimYoloError("--mosaic: times the service's mosaic engine, with --remote TARGET --server-side")
    if args.remote:
        return _bench_remote(args)
    if args.batch != 1:
        raise SlimYoloError("--batch: the images a ModelInfer call carries, with --remote TARGET (a local bench "
                            "times one frame at a time, as a camera sends them)")
    image = None
    if args.image:
        image = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if image is None:
            raise SlimYoloError(f"{args.image}: not a readable image")
    if args.cfg and not args.weights:
        raise SlimYoloError("--cfg: give --weights with it (the cfg alone holds no weights to compare with)")
    result = run_bench(_model(args.model), args.device, args.hint, args.precision, args.seconds, image,
                       args.compare, args.cfg, args.weights, args.onnx)
    for name, r in result.get("compare", {}).items():  # said on stderr too: --json prints nothing else
        if "skipped" in r:
            print(f"slimyolo: --compare: {name} skipped: {r['skipped']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']} on {result['device']} ({result['hint']}, {result['execution_precision']}, "
          f"{result['requests']} requests, input {result['input_size'][1]}x{result['input_size'][0]})")
    rows = [("openvino end-to-end", result), ("openvino inference", result["infer"])]
    rows += [(f"{name} end-to-end", r) for name, r in result.get("compare", {}).items()]
    for name, r in rows:
        if "skipped" in r:
            print(f"  {name:<24} skipped: {r['skipped']}")
        else:
            lat = r["latency_ms"]
            print(f"  {name:<24} {r['fps']:8.1f} FPS   p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  "
                  f"p99 {lat['p99']:.2f} ms")
    return 0
