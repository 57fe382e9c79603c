"""The settings of a training run, declared once: what ``slimyolo train``'s flags, its YAML config and a train
stage spec's keys are.

:class:`TrainOptions` holds every flat setting of :class:`~slimyolo.train.config.TrainConfig` (which adds the
nested ``augment`` and ``loss`` sections, the YAML reading and the defaults that depend on other settings), each
made with :func:`~slimyolo.params.param`: its kind, default, bounds, choices and meaning. ``slimyolo train``'s
flags are generated from it (:func:`~slimyolo.params.add_arguments`) and :meth:`TrainConfig.check` applies its
bounds, so both read one declaration. Nothing here imports PyTorch: the command line is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimyolo.params import Declared, param

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "step")
SPARSITY_SCHEDULES = ("constant", "step", "cosine")  # how the sparsity rate changes (slimyolo.train.sparsity)
DEVICES = ("auto", "cpu", "cuda")
IOU_LOSSES = ("ciou", "diou", "giou", "iou")  # the box losses slimyolo.train.loss implements


@dataclass(frozen=True, kw_only=True)
class EvalOptions(Declared):
    """How a model is scored: P, R, mAP@0.5 and F1 on a data set's validation split. Declared once for every
    evaluation: ``slimyolo eval``, the eval stage, the prune and sweep stages' scoring (specs embed it), and
    :func:`slimyolo.train.evaluate.evaluate`'s defaults."""

    img_size: int | None = param("img_size", None, help="evaluation size; unset: the cfg's")
    batch_size: int = param("int", 8, low=1, help="evaluation images per forward pass")
    conf_thres: float = param("float", 0.001, low=0, high=1, help="score threshold of the detections scored")
    iou_thres: float = param("float", 0.6, low=0, high=1, help="NMS IoU threshold of the evaluation")
    max_images: int | None = param("int", None, low=1, help="evaluate at most this many images; unset: all")


@dataclass(frozen=True, kw_only=True)
class LossGains(Declared):
    """The loss gains before the automatic scaling (:mod:`slimyolo.train.loss`): a training config's ``loss``
    section."""

    box: float = param("float", 0.05, low=0, help="box loss gain")
    obj: float = param("float", 1.0, low=0, help="objectness loss gain")
    cls: float = param("float", 0.5, low=0, help="class loss gain")
    iou_t: float | None = param("float", None, low=0, high=1, low_open=True, help="anchor-target IoU threshold of "
                                "the assignment; unset: the cfg's iou_thresh, else 0.2")
    iou_loss: str | None = param("choice", None, options=(*IOU_LOSSES, "mse"), help="box loss; unset: the cfg's "
                                 "iou_loss (mse, darknet's default, is not implemented and means giou, as in "
                                 "ultralytics)")


@dataclass
class TrainOptions:
    """The flat settings of a training run (``None``: resolved by :meth:`TrainConfig.resolved`, or unset)."""

    data: str = param("text", help=".data file or a data set folder holding one")
    cfg: str | None = param("text", None, help="model cfg file, a zoo name (yolov4-tiny, ...) sized for the data's "
                            "classes, or a .pt holding its cfg; unset: the cfg inside weights (a .pt)")
    weights: str | None = param("text", None, help="initial weights (.weights or .pt); unset: trained from scratch. "
                                "Base training also starts from a partial darknet file (yolov4.conv.137, "
                                "yolov4-tiny.conv.29) or another cfg's weights (weights_cfg): what they cover loads, "
                                "the rest (e.g. the heads) starts fresh; sr and finetune need the full weights of the "
                                "cfg")
    weights_cfg: str | None = param("text", None, help="the cfg of weights when they are another cfg's darknet "
                                    ".weights (a file, or a zoo name for its 80-class cfg), e.g. yolov4-tiny.weights "
                                    "for a 1-class model: convolutions load where layer index and shapes match")
    out: str = param("text", "runs/train", help="run folder")
    epochs: int = param("int", 30, low=1, help="training epochs")
    batch_size: int = param("int", 16, low=1, help="total batch size over all processes")
    img_size: int | None = param("img_size", None, help="square training size; unset: the cfg's width")
    optimizer: str = param("choice", "sgd", options=OPTIMIZERS, help="the optimizer")
    lr0: float | None = param("float", None, help="initial learning rate; unset: 0.01 for SGD, 0.001 for Adam")
    lrf: float = param("float", 0.01, help="final learning rate as a fraction of lr0 (cosine); the step schedule "
                       "multiplies by 0.1 at 80 and again at 90 percent of the epochs")
    momentum: float = param("float", 0.937, help="SGD momentum, Adam beta1")
    weight_decay: float = param("float", 5e-4, help="weight decay of the convolution weights")
    schedule: str = param("choice", "cosine", options=LR_SCHEDULES, help="learning-rate schedule")
    warmup_epochs: float | None = param("float", None, help="warm-up epochs; unset: 3, when fine-tuning a quarter "
                                        "of the epochs, at most 6")
    warmup_bias_lr: float | None = param("float", None, help="learning rate the biases warm up from; unset: 10 "
                                         "times lr0 (0.1 for SGD, as yolov5)")
    warmup_momentum: float = param("float", 0.8, help="momentum at the start of the warm-up")
    ema: bool = param("bool", True, help="evaluate and save the exponential moving average of the weights")
    bf16: bool = param("bool", False, help="bfloat16 autocast (on a CPU it needs AMX or AVX512-BF16 to pay off)")
    multi_scale: bool = param("bool", False, help="each batch at a random size in [0.67, 1.5] times img_size")
    seed: int = param("int", 0, help="the seed of the initial weights, sample order, augmentation and sizes")
    workers: int = param("int", 0, help="data loader processes (0: load in the training process)")
    threads: int | None = param("int", None, help="torch threads per process; unset: torch's default, divided "
                                "among DDP processes")
    device: str = param("choice", "auto", options=DEVICES, help="where to train; auto: CUDA when there is one")
    eval_interval: int = param("int", 1, low=1, help="evaluate every N epochs (and always after the last)")
    checkpoint_steps: int = param("int", 0, low=0, help="also save the resumable last.pt every N steps inside an "
                                  "epoch, for long epochs (0: at epoch ends only)")
    max_eval_images: int | None = param("int", None, help="evaluate at most this many images; unset: all")
    conf_thres: float = param("float", EvalOptions.conf_thres, help="score threshold of the detections evaluated")
    iou_thres: float = param("float", EvalOptions.iou_thres, help="NMS IoU threshold of the evaluation")
    save_weights: bool = param("bool", False, help="also write best.weights (darknet)")
    finetune: bool = param("bool", False, help="fine-tuning of a pruned model (warm-up: a quarter of the epochs, "
                           "at most 6)")
    teacher_cfg: str | None = param("text", None, help="distillation teacher cfg; unset: the one in teacher_weights")
    teacher_weights: str | None = param("text", None, help="distillation from this (unpruned) teacher's weights")
    distill_weight: float = param("float", 1.0, help="weight of the distillation loss")
    sr: bool = param("bool", False, help="sparsity training (L1 on BN γ)")
    s: float = param("float", 0.001, help="sparsity rate")
    prune: int = param("int", 0, low=0, high=1, help="0: penalise every BN layer; 1: all but the convolutions "
                       "feeding a shortcut")
    s_schedule: str = param("choice", "constant", options=SPARSITY_SCHEDULES, help="how the sparsity rate changes "
                            "over the epochs")
    grad_clip: float = param("float", 10.0, help="largest gradient norm (0: not clipped)")
