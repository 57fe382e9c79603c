"""The pipeline's report: the final table, its notes and the story of the run, from the stages' metrics.

One row a model (the PyTorch rows of :data:`ROWS`, then the INT8 IR): P, R, mAP@0.5, params, size,
BFLOPs and OpenVINO FPS; :func:`story` says what each stage did, one sentence each, and the
headline ratios. :class:`slimyolo.pipeline.run.PipelineResult` prints and saves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slimyolo.cpuinfo import describe
from slimyolo.pipeline.config import PipelineConfig
from slimyolo.progress import sweep_row_method

ROWS = ("baseline", "reference", "sparse", "pruned", "fine-tuned")  # the table's PyTorch rows (then int8)


def table(rows: list[dict[str, Any]]) -> str:
    """The final table as Markdown (also what is printed)."""
    head = "| model | P | R | mAP@0.5 | params | size MB | BFLOPs | OpenVINO FPS | FPS end to end |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        shared = " *" if r["fps_from"] != r["model"] else ""
        lines.append(f"| {r['model']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.3f} | "
                     f"{r['params']:,} | {r['size_bytes'] / 1e6:.3g} | {_bflops(r['bflops'])} | "
                     f"{r['infer_fps']:.1f}{shared} | {r['fps']:.1f}{shared} |")
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]], stages: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What the table does not say: what was pruned, what size and FPS measure, which rows share a network."""
    precisions = sorted({r["infer_precision"] for r in rows if r.get("infer_precision")})
    bench = (stages.get("convert baseline", {}).get("metrics") or {}).get("bench") or {}
    machine = f" ({describe(bench['cpu'])})" if bench.get("cpu") else ""
    pruned = (stages.get("prune", {}).get("metrics") or {}).get("channel_report")
    channels = [] if not pruned else [
        f"pruned: asked {pruned['asked']:.1%} of {pruned['prunable']:,} prunable channels, removed "
        f"{pruned['removed_fraction']:.1%} (kept back: "
        + (", ".join(f"{k} {v:,}" for k, v in pruned["kept_back"].items() if v) or "none") + ")."]
    return [*channels, "size: the darknet .weights file; for int8 the IR's model.bin.",
            f"OpenVINO FPS: inference-only throughput of the IR on this machine{machine}, throughput hint, "
            f"inference precision {'/'.join(precisions) or 'the device default'}; end to end adds letterbox, "
            "decode and NMS.",
            "* the same network as the row it is measured on (reference, sparse: baseline; pruned: "
            "fine-tuned); only the weights differ.",
            "int8: P, R and mAP@0.5 of the INT8 IR run by OpenVINO; the other rows of the PyTorch model "
            "(the FP32 IRs match it within 1e-3)."]


def story(config: PipelineConfig, trained: Mapping[str, Mapping[str, Any]], swept: Mapping[str, Any],
          rows: list[dict[str, Any]]) -> list[str]:
    """What happened, one sentence per stage, and the three headline ratios (params, FPS, mAP against
    the reference): what a user needs to read the table, from the stages' own metrics."""
    by = {r["model"]: r for r in rows}
    base, tuned = by["baseline"], by["fine-tuned"]
    sparse, pruned = trained["sparse"], trained["pruned"]
    lines = [f"base training: {config.epochs('base')} epochs, mAP@0.5 {base['map50']:.3f}.",
             f"sparsity training: {config.epochs('sparsity')} epochs (s {config.train_options('sparsity').get('s')}) "
             f"took the prunable |γ| below 0.01 from {trained['baseline'].get('gamma_below_0.01', 0):.0%} to "
             f"{sparse.get('gamma_below_0.01', 0):.0%}; mAP@0.5 {by['sparse']['map50']:.3f}."]
    best = swept.get("best")
    if config.prune:
        lines.append(f"sweep: not used, the config's prune section names the point ({dict(config.prune)}).")
    elif best is not None:
        point = " + ".join(p for p in (f"{best['global_percent']:.2f} of the channels"
                                       if best.get("global_percent") is not None else "",
                                       f"{best['shortcuts']} residual units" if best.get("shortcuts") else "") if p)
        if swept.get("objective") == "accuracy":
            budget = swept["budget"]
            lines.append(f"sweep: chose {sweep_row_method(best)} pruning of {point}: of the points that reach "
                         f"{budget['text']}, the one with the highest mAP@0.5 ({best['map50']:.3f} before "
                         f"fine-tuning, {best['fps']:.1f} FPS; {budget['evaluations_saved']} evaluations saved).")
        else:
            rule = "the most measured FPS" if swept.get("objective") == "fps" else "the fewest BFLOPs"
            lines.append(f"sweep: chose {sweep_row_method(best)} pruning of {point}: of the points whose mAP@0.5 "
                         f"stays within {swept.get('max_map_drop')} of the sparse model's "
                         f"{swept['baseline']['map50']:.3f} (before fine-tuning), the one with {rule} "
                         f"({best['map50']:.3f}).")
    report = pruned.get("channel_report")
    removed = (f"asked {report['asked']:.0%} of the {report['prunable']:,} prunable channels, removed "
               f"{report['removed_fraction']:.0%}; " if report else "")
    lines.append(f"pruning: {removed}params {base['params']:,} → {by['pruned']['params']:,}, BFLOPs "
                 f"{_bflops(base['bflops'])} → {_bflops(by['pruned']['bflops'])}; mAP@0.5 {by['pruned']['map50']:.3f} "
                 "before fine-tuning.")
    distilled = " distilled from the sparse model" if config.distill else ""
    lines.append(f"fine-tuning: {config.epochs('finetune')} epochs{distilled} brought mAP@0.5 to {tuned['map50']:.3f}.")
    ref = by.get("reference")
    if ref is not None:
        lines.append(f"reference: the baseline trained {config.epochs('reference')} more epochs (as many as sparsity "
                     f"training and fine-tuning) reaches mAP@0.5 {ref['map50']:.3f}.")
    fps = tuned["infer_fps"] / base["infer_fps"] if base["infer_fps"] else 0.0
    against = ref or base
    params = tuned["params"] / base["params"]
    precision = tuned.get("infer_precision") or "default precision"
    lines.append(f"headline: {params:.2f}× the params ({1 - params:.0%} fewer), {fps:.2f}× the OpenVINO FPS "
                 f"({precision}), "
                 f"mAP@0.5 {100 * (tuned['map50'] - against['map50']):+.1f} points against the "
                 f"{'reference' if ref is not None else 'baseline'} ({tuned['map50']:.3f} vs {against['map50']:.3f}).")
    return lines


def _bflops(value: float) -> str:
    """Three decimals as darknet prints them; tiny test models get significant digits instead of 0.000."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.2g}"
