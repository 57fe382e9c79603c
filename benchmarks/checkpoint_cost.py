"""What a durable train stage pays per epoch: the checkpoint upload, against the epoch it protects.

Trains full YOLOv4 (2 classes) at 416 for one epoch on a few synthetic images, which gives the
run folder a real checkpoint (``last.pt``: raw and EMA weights and the optimizer state; ``best.pt``;
``results.csv``; ``config.yaml``) and the training speed in images/s. Then publishes that folder
as checkpoint trees (:class:`slimyolo.stages.durable.Checkpoints`, exactly what the train stage
does after every epoch, the removal of the previous checkpoint included) to a local S3 server
(``weed server -s3``, as the tests start it) several times, and reports bytes, seconds and the
upload's share of an epoch of 1,000 images at the measured speed.

    .venv/bin/python benchmarks/checkpoint_cost.py [--images 8] [--uploads 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import machine, markdown_table, save
from seaweed import SeaweedServer

from slimyolo.darknet import make_cfg
from slimyolo.data.synth import write_synthetic
from slimyolo.stages.durable import Checkpoints
from slimyolo.stages.specs import TrainSpec
from slimyolo.store import open_store
from slimyolo.train.config import TrainConfig
from slimyolo.train.trainer import train

EPOCH_IMAGES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="synthetic training images of the measured epoch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=3, help="checkpoint uploads timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slimyolo-bench-checkpoint"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}

    data = write_synthetic(args.work / "synth", classes=2, train=args.images, val=2, size=416, seed=0)
    cfg = args.work / "yolov4-416.cfg"
    make_cfg("yolov4", 2, 416).write(cfg)
    run_dir = args.work / "run"
    run = train(TrainConfig(data=str(data), cfg=str(cfg), out=str(run_dir), epochs=1, batch_size=args.batch_size,
                            img_size=416, threads=args.threads, eval_interval=100, max_eval_images=2))
    epoch_s = EPOCH_IMAGES / run.images_per_s
    files = {p.relative_to(run_dir).as_posix(): p.stat().st_size for p in run_dir.rglob("*")
             if p.is_file() and p.relative_to(run_dir).parts[0] != "tensorboard"}
    print(f"yolov4 416: {run.images_per_s:.3f} img/s, an epoch of {EPOCH_IMAGES} images {epoch_s:.0f} s; "
          f"checkpoint files {files}", flush=True)

    server = SeaweedServer(args.work / "weed").start()
    try:
        bucket = server.new_bucket()
        store = open_store(f"s3://{bucket}", server.env(bucket))
        spec = TrainSpec.from_dict({"cfg": "inputs/yolov4.cfg", "data": "inputs/synth", "out": "runs/bench",
                                    "epochs": 100})
        checkpoints = Checkpoints(store, "runs/bench", spec)
        seconds = []
        for epoch in range(1, args.uploads + 1):
            started = time.perf_counter()
            checkpoints.publish(run_dir, epoch, args.work / "staging")
            seconds.append(time.perf_counter() - started)
            print(f"checkpoint {epoch}: {seconds[-1]:.2f} s", flush=True)
        assert [c.epoch for c in checkpoints.complete()] == [args.uploads]
    finally:
        server.stop()
    upload_s = statistics.median(seconds)
    total = sum(files.values())
    result.update(images_per_s=round(run.images_per_s, 4), epoch_images=EPOCH_IMAGES, epoch_s=round(epoch_s, 1),
                  checkpoint_bytes=total, files=files, upload_s=[round(s, 3) for s in seconds],
                  upload_median_s=round(upload_s, 3), fraction_of_epoch=round(upload_s / epoch_s, 5),
                  machine_after=machine()["load_average"])
    save("checkpoint_cost", result)
    print(f"\nmachine: {result['machine']}\n")
    print(markdown_table(["model", "checkpoint bytes", "upload s (median)", f"epoch of {EPOCH_IMAGES} images s",
                          "upload / epoch"],
                         [["yolov4 416, 2 classes", f"{total:,}", round(upload_s, 2), round(epoch_s),
                           f"{100 * upload_s / epoch_s:.2f} %"]]))


if __name__ == "__main__":
    main()
