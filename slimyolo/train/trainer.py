"""The training engine: base training, sparsity training and fine-tuning, on one or many processes.

:func:`train` runs a :class:`~slimyolo.train.config.TrainConfig` and writes the run
directory; :func:`resume` continues a stopped run from that directory alone.

Exact resumption: nothing in the loop depends on hidden random state. The sample order of
epoch ``e`` comes from ``DistributedSampler(seed).set_epoch(e)``, augmentation of sample
``i`` from ``default_rng((seed, e, i))``, the multi-scale size of step ``k`` from
``default_rng((seed, e, k))``, and the learning rate and momentum are functions of the
iteration number. The checkpoint holds the raw and EMA weights, the optimizer state, the EMA
update count, the best fitness and the results so far, so a resumed run repeats, step for
step, what the uninterrupted run would have done.

Distributed data parallel: started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment),
each process trains on its share of every batch (gloo on CPU, nccl on CUDA); only rank 0
evaluates, logs and writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from slimyolo.darknet.cfg import Cfg, parse_cfg
from slimyolo.darknet.model import Darknet, load_model, seeded_model
from slimyolo.darknet.weights import checkpoint_cfg, is_checkpoint, load_pretrained, read_checkpoint, save_checkpoint
from slimyolo.darknet.zoo import ZOO, make_cfg
from slimyolo.data.dataset import DataSpec, read_data_file
from slimyolo.data.loader import YoloDataset
from slimyolo.errors import NotFoundError, SlimYoloError, WeightsError
from slimyolo.fsutil import atomic_write_text
from slimyolo.progress import ClassMetrics, Event, Progress, TrainEpoch, TrainStep
from slimyolo.train.config import CONTINUES_A_TRAINED_MODEL, TrainConfig
from slimyolo.train.curves import plot_results
from slimyolo.train.ema import ModelEMA
from slimyolo.train.evaluate import EvalResult, evaluate
from slimyolo.train.loss import YoloLoss, init_head_biases
from slimyolo.train.sparsity import Sparsity, fraction_below, layer_gammas, plot_gammas, prunable_bn_layers

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.csv"
CURVE_FILE = "results.png"  # the training curve (slimyolo.train.curves)
PHASE_TITLES = {"train": "base training", "sparsity": "sparsity training", "finetune": "fine-tuning"}
RESULTS_COLUMNS = ("epoch", "phase", "lr", "box", "obj", "cls", "distill", "loss", "precision", "recall", "map50",
                   "f1", "gamma_below_0.01", "s", "images_per_s", "time_s")


@dataclass
class TrainResult:
    """What a run produced (all paths inside ``run_dir``)."""

    run_dir: Path
    last: Path  # last.pt: EMA weights + everything needed to resume
    best: Path  # best.pt: EMA weights of the epoch with the best mAP@0.5
    results_csv: Path
    config: Path  # the resolved config.yaml
    weights: Path | None  # best.weights (darknet layout) when save_weights
    epochs: int  # epochs completed
    best_map50: float
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation (EvalResult.as_dict())
    images_per_s: float = 0.0  # training throughput of the last epoch (all processes)
    elapsed_s: float = 0.0
    pretrained: dict[str, Any] | None = None  # what --weights loaded (WeightsReport.as_dict()); config.yaml records it


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_distributed(device_kind: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SlimYoloError("device 'cuda' was asked for but no CUDA device is available")
    device = torch.device("cuda", d.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, device


def resolved_yaml(config: TrainConfig) -> str:
    """config.yaml's settings: the resolved config, where ``cfg: null`` says that the cfg is the one inside
    ``weights`` (a .pt holds its cfg; the run's best.pt and last.pt hold it too)."""
    text = config.to_yaml()
    if config.cfg is None:
        text = text.replace("\ncfg: null\n", f"\ncfg: null  # the cfg inside weights ({config.weights})\n", 1)
    return text


def resolve_cfg(config: TrainConfig, spec: DataSpec) -> Cfg:
    """The model cfg: a cfg file, a zoo name (for the data's classes), or the cfg inside a ``.pt``."""
    if config.cfg is None:
        return checkpoint_cfg(config.weights)
    path = Path(config.cfg)
    if path.is_file():
        return checkpoint_cfg(path) if is_checkpoint(path) else parse_cfg(path)
    if config.cfg in ZOO:
        return make_cfg(config.cfg, spec.classes, config.img_size)
    raise NotFoundError(f"cfg {config.cfg!r}: no such file, and not a zoo model ({', '.join(ZOO)})")


def _check_classes(model: Darknet, spec: DataSpec, cfg_name: str) -> None:
    classes = {h.classes for h in model.heads}
    if classes != {spec.classes}:
        raise SlimYoloError(f"{cfg_name}: the cfg's yolo layers have classes={sorted(classes)} but {spec.path} "
                            f"has classes={spec.classes}")


def _param_groups(model: nn.Module) -> tuple[list, list, list]:
    """BN weights (no decay), conv weights (decay), biases (no decay; warm-up from a high lr)."""
    bn_w, conv_w, biases = [], [], []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            bn_w.append(module.weight)
            biases.append(module.bias)
        elif isinstance(module, nn.Conv2d):
            conv_w.append(module.weight)
            if module.bias is not None:
                biases.append(module.bias)
    return bn_w, conv_w, biases


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    bn_w, conv_w, biases = _param_groups(model)
    groups = [{"params": bn_w, "weight_decay": 0.0}, {"params": conv_w, "weight_decay": config.weight_decay},
              {"params": biases, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr0, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr0, momentum=config.momentum, nesterov=True)


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: cosine from 1 to ``lrf``, or darknet's steps."""
    if config.schedule == "step":
        return 1.0 if epoch < 0.8 * config.epochs else 0.1 if epoch < 0.9 * config.epochs else 0.01
    return ((1 - math.cos(epoch * math.pi / config.epochs)) / 2) * (config.lrf - 1) + 1


def _set_lr(config: TrainConfig, optimizer: torch.optim.Optimizer, epoch: int, ni: int, nw: int) -> float:
    """Set lr (and SGD momentum) for global iteration ``ni``; linear warm-up over the first ``nw``."""
    base = config.lr0 * lr_factor(config, epoch)
    key = "betas" if config.optimizer == "adam" else "momentum"
    for j, group in enumerate(optimizer.param_groups):
        if ni < nw:
            start = config.warmup_bias_lr if j == 2 else 0.0
            group["lr"] = float(np.interp(ni, [0, nw], [start, base]))
            momentum = float(np.interp(ni, [0, nw], [config.warmup_momentum, config.momentum]))
        else:
            group["lr"] = base
            momentum = config.momentum
        group[key] = (momentum, 0.999) if key == "betas" else momentum
    return optimizer.param_groups[1]["lr"]


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _emit(progress: Progress | None, event: Event) -> None:
    if progress is not None:
        progress(event)


def _epoch_event(row: dict[str, Any], epochs: int, result: EvalResult | None, bad_images: int,
                 bad_label_lines: int) -> TrainEpoch:
    """The progress event of an epoch's ``results.csv`` row (whose evaluation columns are "" when not evaluated)."""
    evaluation: dict[str, Any] = {}
    if result is not None:
        evaluation = {"precision": result.precision, "recall": result.recall, "map50": result.map50, "f1": result.f1,
                      "per_class": tuple(ClassMetrics(c["class"], c["name"], c["targets"], c["precision"],
                                                      c["recall"], c["ap50"], c["f1"]) for c in result.per_class)}
    return TrainEpoch(phase=row["phase"], epoch=row["epoch"], epochs=epochs, lr=row["lr"], box=row["box"],
                      obj=row["obj"], cls=row["cls"], distill=row["distill"], loss=row["loss"],
                      gamma_below_001=row["gamma_below_0.01"], s=row["s"], images_per_s=row["images_per_s"],
                      time_s=row["time_s"], bad_images=bad_images, bad_label_lines=bad_label_lines, **evaluation)


def train(config: TrainConfig, progress: Progress | None = None, *,
          resume: bool = False) -> TrainResult:
    """Train (base, sparsity or fine-tuning, as ``config`` says) and return what the run wrote.

    The run directory ``config.out`` receives:

    - ``config.yaml``: the resolved config (``slimyolo train --config`` repeats the run), and with
      ``weights`` a ``pretrained`` record of what they loaded (:meth:`WeightsReport.as_dict`);
    - ``last.pt`` after every epoch: a SlimYOLO checkpoint whose model is the EMA weights
      (``load_model(cfg, "last.pt")`` works; the cfg is inside), plus the raw weights,
      optimizer, EMA and results state that :func:`resume` needs;
    - ``best.pt``: the EMA weights of the epoch with the best mAP@0.5 (the last epoch when
      there is no validation split);
    - ``results.csv``: one row per epoch (losses, lr, P, R, mAP@0.5, F1, fraction of |γ| below
      0.01, sparsity rate, images/s), and ``results.png`` (loss and P, R, mAP@0.5 against the epoch) at the end;
    - ``tensorboard/``: the same scalars and the γ histogram (tag ``bn_weights/hist``);
    - with ``sr``: ``gamma_start.png`` and ``gamma_end.png`` (|γ| distributions);
    - with ``save_weights``: ``best.weights`` in darknet's layout.

    Every file is written atomically, so killing the process at any moment leaves the previous
    epoch's files intact. ``progress`` receives a :class:`~slimyolo.progress.TrainStep` per
    step and a :class:`~slimyolo.progress.TrainEpoch` per epoch (rank 0 only); raising
    :class:`~slimyolo.errors.Cancelled` from it stops the run after the last complete epoch,
    which :func:`resume` can continue. ``resume=True`` continues ``config.out`` from its
    ``last.pt``; otherwise ``config.out`` must not already hold a run.

    The loop is torchvision's reference one: :func:`_setup` (the model, data, optimizer and files),
    then per epoch :func:`_train_one_epoch` (every rank) and :func:`_end_epoch` (rank 0: evaluate,
    record, checkpoint), then :func:`_finish`.
    """
    started = time.monotonic()
    run = _setup(config.resolved(), resume)
    bad_images: set[str] = set()
    metrics: dict[str, Any] = {}
    images_per_s = 0.0
    try:
        for epoch in range(run.start.epoch, run.config.epochs):
            totals = _train_one_epoch(run, epoch, progress, bad_images)
            images_per_s = totals.seen / max(time.monotonic() - totals.started, 1e-9)
            if run.ddp.main:
                result = _end_epoch(run, epoch, totals, images_per_s, progress, bad_images)
                metrics = result.as_dict() if result is not None else metrics
            run.ddp.barrier()
        weights_path = _finish(run)
    finally:
        if run.writer is not None:
            run.writer.close()
    return TrainResult(run_dir=run.run_dir, last=run.last_path, best=run.best_path,
                       results_csv=run.run_dir / RESULTS_FILE, config=run.run_dir / CONFIG_FILE, weights=weights_path,
                       epochs=run.config.epochs, best_map50=max(run.best_fitness, 0.0), metrics=metrics,
                       images_per_s=images_per_s, elapsed_s=time.monotonic() - started, pretrained=run.pretrained)


@dataclass
class _Run:
    """A training run once set up (:func:`_setup`): what every epoch uses, and what it carries to the next
    (``best_fitness``, ``rows``: rank 0's)."""

    config: TrainConfig  # resolved, ``img_size`` filled in (config.yaml records the size trained at)
    ddp: _Dist
    device: torch.device
    run_dir: Path
    spec: DataSpec
    model: Darknet
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    teacher: Darknet | None
    loss_fn: YoloLoss
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    sparsity: Sparsity | None
    gamma_layers: list[int]
    dataset: YoloDataset
    sampler: _SkippingSampler
    loader: DataLoader
    autocast: Any  # bfloat16 autocast, or a context that does nothing
    start: _Start
    pretrained: dict[str, Any] | None
    writer: Any  # TensorBoard's, on rank 0
    best_fitness: float
    rows: list[dict[str, Any]]

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def steps(self) -> int:
        return len(self.loader)

    @property
    def final_model(self) -> Darknet:
        """What is evaluated and saved: the EMA weights (the raw ones without EMA)."""
        return self.ema.ema if self.ema else self.model


@dataclass
class _EpochTotals:
    """What one epoch's steps add up to (the loss sums over its steps, the images of every process)."""

    started: float  # time.monotonic() at its start
    sums: dict[str, float]
    seen: int
    lr: float
    s_rate: float


def _setup(config: TrainConfig, resume: bool) -> _Run:
    """Everything the epochs need, from a resolved config: processes and threads, the data set, the model (its
    initial weights, or the state of ``last.pt`` when resuming), the teacher, the optimizer, EMA and sparsity, the
    loader; on rank 0 the run folder's config.yaml and TensorBoard writer."""
    ddp, device = _setup_distributed(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ddp.world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world))))
    run_dir = Path(config.out)
    last_path = run_dir / "last.pt"
    if not resume and last_path.exists():
        raise SlimYoloError(f"{run_dir} already holds a training run; resume it (--resume {run_dir}) "
                            f"or choose another --out")
    if config.batch_size < ddp.world:
        raise SlimYoloError(f"batch size {config.batch_size} is smaller than the {ddp.world} processes")

    spec = read_data_file(config.data)
    cfg = resolve_cfg(config, spec)
    img_size = config.img_size or cfg.width
    config = dataclasses.replace(config, img_size=img_size)  # config.yaml records the size trained at
    model = seeded_model(cfg, img_size, config.seed)
    _check_classes(model, spec, str(config.cfg or config.weights))
    pretrained = _initial_weights(config, model, run_dir, resume, ddp.main)
    teacher = None
    if config.teacher_weights:
        teacher_cfg = config.teacher_cfg or checkpoint_cfg(config.teacher_weights)
        teacher = load_model(teacher_cfg, config.teacher_weights, img_size).to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    model.to(device)

    loss_fn = YoloLoss(model, config.loss)
    optimizer = _make_optimizer(config, model)
    ema = ModelEMA(model) if config.ema else None
    sparsity = Sparsity(model, config.s, config.prune, config.s_schedule) if config.sr else None
    gamma_layers = sparsity.layers if sparsity else prunable_bn_layers(model, config.prune)
    start = _restore(last_path, model, optimizer, ema, config) if resume else _Start()

    dataset, sampler, loader = _training_data(config, spec, ddp, device)
    net: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None) if ddp.world > 1 else model
    writer = None
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, resolved_yaml(config) + (yaml.safe_dump(
            {"pretrained": pretrained}, sort_keys=False) if pretrained else ""))
        writer = _summary_writer(run_dir / "tensorboard", start.epoch)
        if sparsity and start.epoch == 0 and start.step == 0:
            plot_gammas(layer_gammas(model, gamma_layers), run_dir / "gamma_start.png", "before sparsity training")
    if config.bf16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("bf16 autocast on a CPU without native bfloat16 (AVX512-BF16/AMX; this one has %s): "
                    "expect training to be far slower than in fp32", torch.backends.cpu.get_cpu_capability())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.bf16 else nullcontext()
    return _Run(config, ddp, device, run_dir, spec, model, net, teacher, loss_fn, optimizer, ema, sparsity,
                gamma_layers, dataset, sampler, loader, autocast, start, pretrained, writer, start.best_fitness,
                start.rows)


def _initial_weights(config: TrainConfig, model: Darknet, run_dir: Path, resume: bool,
                     main: bool) -> dict[str, Any] | None:
    """Initialise the heads' biases and load ``weights`` into a new model; the record of what they loaded (for
    config.yaml), or a resumed run's record."""
    if not config.weights or config.phase == "train":
        init_head_biases(model)  # also for the heads that a partial file or another cfg's weights leave out
    if config.weights and not resume:
        # Base training takes what a partial file or another cfg's weights cover; the later phases continue a
        # trained model and take only the full weights of its cfg.
        report = load_pretrained(model, config.weights, config.weights_cfg, refuse_incomplete=None
                                 if config.phase == "train" else CONTINUES_A_TRAINED_MODEL)
        if main and config.phase == "train":  # the later phases load all of their cfg's weights or nothing
            log.info("%s", report.line())
        return report.as_dict()
    if resume:
        return _recorded_pretrained(run_dir / CONFIG_FILE)
    return None


def _training_data(config: TrainConfig, spec: DataSpec, ddp: _Dist,
                   device: torch.device) -> tuple[YoloDataset, _SkippingSampler, DataLoader]:
    """The training split (its unreadable label lines logged once), this process's sampler of it (resumable
    inside an epoch) and its loader of ``batch_size / processes`` images a batch."""
    dataset = YoloDataset(spec.train, spec.classes, config.img_size, config.augment, config.seed)
    if dataset.labels_report.bad_lines and ddp.main:
        log.warning("%s: %s", spec.path, dataset.labels_report.summary())
    sampler = _SkippingSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=config.seed)
    # Its own generator: each epoch's iterator draws the loader processes' base seed from it, not from torch's
    # global one, which a model built from a seed in another thread at that moment must have to itself.
    loader = DataLoader(dataset, batch_size=config.batch_size // ddp.world, sampler=sampler,
                        num_workers=config.workers, collate_fn=YoloDataset.collate,
                        persistent_workers=False, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed))
    return dataset, sampler, loader


def _train_one_epoch(run: _Run, epoch: int, progress: Progress | None, bad_images: set[str]) -> _EpochTotals:
    """The training steps of 0-based ``epoch`` on this process's share of the data (a run resumed inside the
    epoch starts at its next step); on rank 0 ``last.pt`` every ``checkpoint_steps`` and a TrainStep per step."""
    config, ddp = run.config, run.ddp
    totals = _EpochTotals(time.monotonic(), {"box": 0.0, "obj": 0.0, "cls": 0.0, "distill": 0.0, "loss": 0.0}, 0,
                          0.0, run.sparsity.rate(epoch, config.epochs) if run.sparsity else 0.0)
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    run.net.train()
    first = 0
    if epoch == run.start.epoch and run.start.step:  # resumed inside this epoch: its first steps are done
        first, totals.sums, totals.seen = run.start.step, dict(run.start.sums), run.start.seen
    run.sampler.skip = first * (config.batch_size // ddp.world)
    warmup_iters = round(config.warmup_epochs * run.steps)
    for step, (imgs, targets, failed) in enumerate(run.loader, start=first):
        bad_images.update(failed)
        totals.lr = _set_lr(config, run.optimizer, epoch, epoch * run.steps + step, warmup_iters)
        items, images = _train_step(run, imgs, targets, epoch, step, totals.s_rate)
        totals.seen += images * ddp.world
        for k in totals.sums:
            totals.sums[k] += items.get(k, 0.0)
        images_per_s = totals.seen / max(time.monotonic() - totals.started, 1e-9)
        if ddp.main and config.checkpoint_steps and (step + 1) % config.checkpoint_steps == 0 \
                and step + 1 < run.steps:
            _save(run.last_path, run.final_model, run.model, run.optimizer, run.ema, epoch, run.best_fitness,
                  run.rows, config, step=step + 1, sums=totals.sums, seen=totals.seen)
        if ddp.main:
            _emit(progress, TrainStep(config.phase, epoch + 1, config.epochs, step + 1, run.steps,
                                      {k: v / (step + 1) for k, v in totals.sums.items()}, totals.lr,
                                      round(images_per_s, 2)))
    return totals


def _train_step(run: _Run, imgs: torch.Tensor, targets: torch.Tensor, epoch: int, step: int,
                s_rate: float) -> tuple[dict[str, float], int]:
    """One optimizer step on a batch: its losses per image (box, obj, cls, distill, loss) and its images."""
    config, model = run.config, run.model
    imgs = imgs.to(run.device, non_blocking=True).float() / 255.0
    targets = targets.to(run.device)
    if config.multi_scale:
        imgs = _rescale(imgs, config.img_size, model.max_stride, np.random.default_rng((config.seed, epoch, step)))
    with run.autocast:
        outputs = run.net(imgs)
    loss, items = run.loss_fn(outputs, targets)
    if run.teacher is not None:
        with torch.no_grad(), run.autocast:
            teacher_out = run.teacher(imgs)
        distill = run.loss_fn.distillation(outputs, teacher_out) * config.distill_weight
        loss = loss + distill
        items["distill"] = float(distill.detach()) / imgs.shape[0]
    value = float(loss.detach())
    if not math.isfinite(value):
        raise SlimYoloError(f"training diverged at epoch {epoch + 1}, step {step + 1} (loss {value}); "
                            f"lower lr0 (now {config.lr0}) or check the data")
    if run.ddp.world > 1:
        loss = loss * run.ddp.world  # DDP averages gradients over processes; the loss is a sum
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.sparsity:
        run.sparsity.apply(s_rate)
    if config.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    run.optimizer.step()
    if run.ema:
        run.ema.update(model)
    items["loss"] = sum(items[k] for k in ("box", "obj", "cls")) + items.get("distill", 0.0)
    return items, imgs.shape[0]


def _end_epoch(run: _Run, epoch: int, totals: _EpochTotals, images_per_s: float, progress: Progress | None,
               bad_images: set[str]) -> EvalResult | None:
    """Rank 0 after the steps of ``epoch``: evaluate (every ``eval_interval`` epochs and after the last), add the
    results.csv row, save last.pt (and best.pt when the fitness improved), log; the evaluation, if one ran."""
    config, spec = run.config, run.spec
    is_last = epoch + 1 == config.epochs
    result: EvalResult | None = None
    if spec.valid and ((epoch + 1) % config.eval_interval == 0 or is_last):
        result = evaluate(run.final_model, spec, config.img_size, config.batch_size, config.conf_thres,
                          config.iou_thres, max_images=config.max_eval_images)
    gammas = layer_gammas(run.model, run.gamma_layers)
    row = {"epoch": epoch + 1, "phase": config.phase, "lr": totals.lr,
           **{k: v / run.steps for k, v in totals.sums.items()},
           "precision": result.precision if result else "", "recall": result.recall if result else "",
           "map50": result.map50 if result else "", "f1": result.f1 if result else "",
           "gamma_below_0.01": fraction_below(gammas), "s": totals.s_rate,
           "images_per_s": images_per_s, "time_s": time.monotonic() - totals.started}
    run.rows.append(row)
    fitness = result.map50 if result else run.best_fitness
    improved = fitness > run.best_fitness or not run.best_path.exists() or (not spec.valid and is_last)
    run.best_fitness = max(run.best_fitness, fitness)
    _save(run.last_path, run.final_model, run.model, run.optimizer, run.ema, epoch + 1, run.best_fitness, run.rows,
          config)
    if improved:
        save_checkpoint(run.final_model, run.best_path, epoch=epoch + 1, map50=fitness)
    _write_results(run.run_dir / RESULTS_FILE, run.rows)
    _log_epoch(run.writer, row, gammas, epoch)
    if bad_images:
        log.warning("epoch %d: %d unreadable images were replaced: %s", epoch + 1, len(bad_images),
                    ", ".join(sorted(bad_images)[:5]))
    _emit(progress, _epoch_event(row, config.epochs, result, len(bad_images), len(run.dataset.labels_report.bad_lines)))
    return result


def _finish(run: _Run) -> Path | None:
    """After the last epoch, on rank 0: the γ plot of sparsity training, results.png and with ``save_weights``
    best.weights (returned)."""
    weights_path = None
    if run.ddp.main:
        if run.sparsity:
            plot_gammas(layer_gammas(run.model, run.gamma_layers), run.run_dir / "gamma_end.png",
                        "after sparsity training")
        plot_results(run.run_dir / RESULTS_FILE, run.run_dir / CURVE_FILE, PHASE_TITLES[run.config.phase])
        if run.config.save_weights:
            weights_path = run.run_dir / "best.weights"
            load_model(checkpoint_cfg(run.best_path), run.best_path).save_darknet_weights(weights_path)
    run.ddp.barrier()
    return weights_path


def _recorded_pretrained(path: Path) -> dict[str, Any] | None:
    """The ``pretrained`` record of a run's config.yaml (what its --weights loaded), kept when the run resumes."""
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    record = doc.get("pretrained") if isinstance(doc, dict) else None
    return record if isinstance(record, dict) else None


def resume(run_dir: str | Path, progress: Progress | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` with its saved config, from the end of its last complete epoch."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / CONFIG_FILE
    if not (run_dir / "last.pt").is_file() or not cfg_file.is_file():
        raise NotFoundError(f"{run_dir}: not a training run to resume (needs {CONFIG_FILE} and last.pt)")
    config = TrainConfig.from_yaml(cfg_file)
    config.out = str(run_dir)
    return train(config, progress, resume=True)


def _rescale(imgs: torch.Tensor, size: int, stride: int, rng: np.random.Generator) -> torch.Tensor:
    """Multi-scale: the batch at a random multiple of ``stride`` in [0.67, 1.5]·size."""
    lo, hi = max(stride, int(size * 0.67) // stride * stride), int(size * 1.5) // stride * stride
    new = int(rng.integers(lo // stride, hi // stride + 1)) * stride
    if new == imgs.shape[2]:
        return imgs
    return F.interpolate(imgs, size=(new, new), mode="bilinear", align_corners=False)


def _save(path: Path, final_model: Darknet, model: Darknet, optimizer: torch.optim.Optimizer,
          ema: ModelEMA | None, epoch: int, best_fitness: float, rows: list[dict], config: TrainConfig,
          step: int = 0, sums: dict[str, float] | None = None, seen: int = 0) -> None:
    """last.pt: ``epoch`` complete epochs, plus ``step`` steps of the next one (``checkpoint_steps``)
    with that epoch's loss sums and images so far."""
    save_checkpoint(final_model, path, epoch=epoch, best_fitness=best_fitness, results=rows,
                    train_config=config.to_dict(), raw_model=model.state_dict(), optimizer=optimizer.state_dict(),
                    ema_updates=ema.updates if ema else 0, step=step, epoch_sums=dict(sums or {}), epoch_seen=seen)


@dataclass
class _Start:
    """Where a run starts: after ``epoch`` complete epochs and ``step`` steps of the next one."""

    epoch: int = 0
    step: int = 0
    best_fitness: float = -1.0
    rows: list[dict] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0


class _SkippingSampler(DistributedSampler):
    """DistributedSampler whose epoch order can start ``skip`` samples in, for a run resumed inside
    an epoch: the same batches as the uninterrupted run, without loading the ones already trained on."""

    skip = 0

    def __iter__(self):  # type: ignore[override]
        return iter(list(super().__iter__())[self.skip:])


def _restore(path: Path, model: Darknet, optimizer: torch.optim.Optimizer, ema: ModelEMA | None,
             config: TrainConfig) -> _Start:
    ckpt = read_checkpoint(path)
    needed = ("raw_model", "optimizer", "epoch", "results")
    if any(k not in ckpt for k in needed):
        raise WeightsError(f"{path}: not a resumable training checkpoint (needs {', '.join(needed)})")
    try:
        model.load_state_dict(ckpt["raw_model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.ema.load_state_dict(ckpt["model"])
            ema.updates = int(ckpt["ema_updates"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: does not fit the run's model: {exc}") from None
    epoch, step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
    if epoch >= config.epochs:
        raise SlimYoloError(f"{path}: the run already finished its {config.epochs} epochs")
    # results.csv's rows; the "phase" column was "stage" in a checkpoint written before it was named so
    rows = [{("phase" if k == "stage" else k): v for k, v in row.items()} for row in ckpt["results"]]
    return _Start(epoch, step, float(ckpt["best_fitness"]), rows,
                  dict(ckpt.get("epoch_sums", {})), int(ckpt.get("epoch_seen", 0)))


def _summary_writer(log_dir: Path, start_epoch: int) -> Any:
    """torch's TensorBoard writer, without importing TensorFlow.

    tensorboard uses TensorFlow's file API when TensorFlow is installed (the convert extra
    installs it), and importing it costs ~25 s and ~1 GB per training process. tensorboard's
    own switch to its TensorFlow-free stub is the presence of ``tensorboard.compat.notf``
    (what the ``tensorboard-notf`` package ships), so that module is declared unless
    TensorFlow is already loaded anyway.
    """
    import sys
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=start_epoch)


def _log_epoch(writer: Any, row: dict[str, Any], gammas: np.ndarray, epoch: int) -> None:
    if writer is None:
        return
    for key in ("box", "obj", "cls", "distill", "loss"):
        writer.add_scalar(f"train/{key}", row[key], epoch)
    for key in ("precision", "recall", "map50", "f1"):
        if row[key] != "":
            writer.add_scalar(f"metrics/{key}", row[key], epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("sparsity/gamma_below_0.01", row["gamma_below_0.01"], epoch)
    writer.add_scalar("sparsity/s", row["s"], epoch)
    if gammas.size:
        writer.add_histogram("bn_weights/hist", gammas, epoch, bins="doane")
    writer.flush()
