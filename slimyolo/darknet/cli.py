"""``slimyolo zoo``, ``slimyolo info``, ``slimyolo init``: the darknet core on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slimyolo.darknet.cfg import parse_cfg
from slimyolo.darknet.flops import layer_activation_bytes, layer_flops, model_stats
from slimyolo.darknet.graph import Conv, MaxPool, Route, Shortcut, Upsample, build_graph
from slimyolo.darknet.zoo import ZOO, make_cfg, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="write the cfg of a zoo model for C classes")
    p.add_argument("name", choices=list(ZOO), help="the zoo model")
    p.add_argument("--classes", type=int, default=80, help="number of classes (default 80)")
    p.add_argument("--size", help="input size N or WxH (default: the official cfg's)")
    p.add_argument("--width", type=float, default=1.0,
                   help="scale every convolution's filters but the heads' (multiples of 8), e.g. 0.25")
    p.add_argument("--out", type=Path, help="cfg file to write (default: standard output)")
    p.set_defaults(func=_zoo)

    p = sub.add_parser("info", help="layers, params, BFLOPs, activation traffic and .weights size of a cfg")
    p.add_argument("cfg", type=Path, help="darknet cfg file")
    p.add_argument("--weights", type=Path, help="also check that these weights fit the cfg")
    p.add_argument("--size", help="input size N or WxH (default: the cfg's [net] size)")
    p.add_argument("--layers", action="store_true",
                   help="per-layer table (with --json: a 'layers' list with each layer's BFLOPs and activation MB)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("init", help="write random weights with realistic BN statistics (or pretrained ones, "
                                    "--weights, where they fit)")
    p.add_argument("cfg", type=Path, help="darknet cfg file")
    p.add_argument("--out", type=Path, required=True, help=".weights (or .pt) file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--weights", help="pretrained weights to start from: the cfg's own, a partial darknet file "
                                     "(yolov4.conv.137, what slimyolo partial writes), another cfg's .weights "
                                     "(with --weights-cfg) or a .pt; the convolutions they do not cover stay random")
    p.add_argument("--weights-cfg", help="the cfg of --weights when it is another cfg's darknet .weights (a file, or a "
                                         "zoo name for its 80-class cfg); its convolutions load where layer index and "
                                         "shapes match")
    p.add_argument("--sparse", type=float, metavar="F",
                   help="make a fraction F of BN |γ| near 0 (the rest log-uniform in [0.05, 1.5]), "
                        "as after sparsity training, to try pruning without training")
    p.set_defaults(func=_init)

    p = sub.add_parser("partial", help="write the weights of the first N layers, as darknet's partial "
                                       "(e.g. yolov4-tiny.conv.29 is N=29)")
    p.add_argument("cfg", type=Path, help="darknet cfg file")
    p.add_argument("weights", help="weights of the cfg (.weights or .pt)")
    p.add_argument("out", type=Path, help="darknet file to write (the same header; the start of the full file)")
    p.add_argument("layers", type=int, metavar="N", help="keep the convolutions among layers 0..N-1")
    p.set_defaults(func=_partial)


def _zoo(args: argparse.Namespace) -> int:
    cfg = make_cfg(args.name, args.classes, args.size, args.width)
    if args.out:
        cfg.write(args.out)
        stats = model_stats(cfg)
        print(f"wrote {args.out}: {args.name}, {args.classes} classes, {stats.layers} layers, "
              f"{stats.input_size[1]}x{stats.input_size[0]}", file=sys.stderr)
    else:
        sys.stdout.write(cfg.to_text())
    return 0


def _info(args: argparse.Namespace) -> int:
    cfg = parse_cfg(args.cfg)
    h, w = parse_size(args.size) if args.size else (cfg.height, cfg.width)
    stats = model_stats(cfg, h, w)
    graph = build_graph(cfg, h, w)
    if args.weights:
        from slimyolo.darknet.model import load_model

        load_model(cfg, args.weights, (h, w))  # raises with expected/actual sizes on a mismatch
    traffic = layer_activation_bytes(graph)
    if args.json:
        out = stats.as_dict()
        out["heads"] = [{"layer": i, "stride": graph.stride_of(i), "shape": list(graph.shapes[i])}
                        for i in graph.yolo_layers()]
        if args.layers:
            out["layers"] = [{"layer": i, "kind": type(spec).__name__.lower(), "shape": list(graph.shapes[i]),
                              "bflops": layer_flops(graph, i) / 1e9, "activation_mb": traffic[i] / 1e6}
                             for i, spec in enumerate(graph.specs)]
        print(json.dumps(out))
        return 0
    if args.layers:
        print(f"{'layer':>5} {'kind':<14} {'filters':>7} {'size/str':>9} {'input':>14} -> "
              f"{'output':<14} {'BFLOPs':>7} {'act MB':>7}")
        for i, spec in enumerate(graph.specs):
            print(f"{_layer_row(graph, i, spec)} {traffic[i] / 1e6:>7.2f}")
    print(f"{args.cfg}: {stats.layers} layers, {stats.params:,} params, {stats.bflops:.3f} BFLOPs, "
          f"{stats.activation_mb:.1f} MB of activation traffic (f32), "
          f"{stats.weights_bytes:,} bytes of .weights, input {w}x{h}"
          + (f"; {args.weights} fits" if args.weights else ""))
    return 0


def _layer_row(graph, i: int, spec) -> str:
    c, h, w = graph.in_shape(i)
    oc, oh, ow = graph.shapes[i]
    filters, size = "", ""
    if isinstance(spec, Conv):
        filters, size = str(spec.filters), f"{spec.size}x{spec.size}/{spec.stride}"
    elif isinstance(spec, MaxPool):
        size = f"{spec.size}x{spec.size}/{spec.stride}"
    elif isinstance(spec, Upsample):
        size = f"x{spec.stride}"
    kind = type(spec).__name__.lower()
    if isinstance(spec, Route):
        kind = "route " + ",".join(map(str, spec.sources))
    elif isinstance(spec, Shortcut):
        kind = f"shortcut {spec.source}"
    return (f"{i:>5} {kind:<14} {filters:>7} {size:>9} {f'{w}x{h}x{c}':>14} -> {f'{ow}x{oh}x{oc}':<14} "
            f"{layer_flops(graph, i) / 1e9:>7.3f}")


def _init(args: argparse.Namespace) -> int:
    from slimyolo.darknet.init import init_random_weights, sparsify_gammas
    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import save_checkpoint
    from slimyolo.errors import SlimYoloError

    if args.sparse is not None and not 0.0 <= args.sparse <= 1.0:
        raise SlimYoloError(f"--sparse is a fraction in [0, 1], got {args.sparse}")
    if args.weights_cfg and not args.weights:
        raise SlimYoloError("--weights-cfg is the cfg of --weights; give --weights too")
    model = init_random_weights(load_model(args.cfg), args.seed)
    if args.weights:  # after the random init: the loaded values are kept exactly
        from slimyolo.darknet.weights import load_pretrained

        print(load_pretrained(model, args.weights, args.weights_cfg).line(), file=sys.stderr)
    if args.sparse is not None:
        sparsify_gammas(model, args.sparse, args.seed)
    if args.out.suffix == ".pt":
        save_checkpoint(model, args.out)
    else:
        model.save_darknet_weights(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, seed {args.seed})", file=sys.stderr)
    return 0


def _partial(args: argparse.Namespace) -> int:
    from slimyolo.darknet.model import load_model
    from slimyolo.darknet.weights import load_pretrained, partial_weights_bytes
    from slimyolo.errors import WeightsError
    from slimyolo.fsutil import atomic_write_bytes

    model = load_model(args.cfg)
    report = load_pretrained(model, args.weights)  # the cfg's own weights, or a partial file covering the N layers
    missing = [i for i in report.reinitialised if i < args.layers]
    if missing:
        raise WeightsError(f"{args.weights}: holds no weights for layer {missing[0]} (a convolution below "
                           f"{args.layers}): {report.line()}")
    data = partial_weights_bytes(model, args.layers)
    atomic_write_bytes(args.out, data)
    kept = sum(1 for i, _ in model.conv_blocks() if i < args.layers)
    print(f"wrote {args.out} ({len(data):,} bytes: the {kept} convolutions among layers 0..{args.layers - 1})",
          file=sys.stderr)
    return 0
