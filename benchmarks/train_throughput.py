"""Training throughput (images/s) in fp32 and in bfloat16 autocast on this CPU.

``slimyolo.train.train`` itself (mosaic augmentation, loss, backward, Adam step, EMA) runs two
epochs per setting on the synthetic data set; the second epoch's images/s is reported, so that
the first epoch's one-time costs (allocations, oneDNN kernel selection) are left out. Evaluation
is limited to a few images and not counted. bf16 autocast pays off only where the CPU has native
bf16 (AVX512-BF16 or AMX); elsewhere PyTorch emulates it.

    .venv/bin/python benchmarks/train_throughput.py [--images 64] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, save

from slimyolo.darknet import make_cfg
from slimyolo.data.synth import write_synthetic
from slimyolo.train.config import TrainConfig
from slimyolo.train.trainer import train

MODELS = (("yolov4-tiny", 1.0, 160), ("yolov4", 0.25, 160), ("yolov4-tiny", 1.0, 320))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-train"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    rows = []
    sets = {size: write_synthetic(args.work / f"synth-{size}", classes=2, train=args.images, val=4, size=size, seed=0)
            for size in sorted({size for _, _, size in MODELS})}
    for name, width, size in MODELS:
        data = sets[size]
        cfg = args.work / f"{name}-w{width}-{size}.cfg"
        make_cfg(name, 2, size, width=width).write(cfg)
        speeds = {}
        for bf16 in (False, True):
            tag = "bf16" if bf16 else "fp32"
            run = train(TrainConfig(data=str(data), cfg=str(cfg), out=str(args.work / f"{cfg.stem}-{tag}"), epochs=2,
                                    batch_size=args.batch_size, img_size=size, optimizer="adam", threads=args.threads,
                                    bf16=bf16, eval_interval=2, max_eval_images=4))
            speeds[tag] = run.images_per_s
            result["runs"].append({"model": name, "width": width, "size": size, "precision": tag,
                                   "images_per_s": round(run.images_per_s, 2)})
            print(f"{name} w{width} {size}px {tag}: {run.images_per_s:.2f} img/s", flush=True)
        rows.append([f"{name}" + (f" ×{width} width" if width != 1 else ""), size, round(speeds["fp32"], 2),
                     round(speeds["bf16"], 2), round(speeds["bf16"] / speeds["fp32"], 2)])
    result["machine_after"] = machine()["load_average"]
    save("train_throughput", result)
    print(f"\nmachine: {result['machine']}\n")
    print(markdown_table(["model", "px", "fp32 img/s", "bf16 autocast img/s", "bf16 / fp32"], rows))


if __name__ == "__main__":
    main()
