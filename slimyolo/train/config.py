"""The training configuration: one dataclass, loadable from YAML, saved resolved with each run.

The same :class:`TrainConfig` drives base training, sparsity training (``sr``) and
fine-tuning (``finetune``, optionally with a teacher). ``None`` fields are resolved by
:meth:`TrainConfig.resolved` (learning rate by optimizer, warm-up by fine-tuning, input
size by the cfg), and the resolved copy is what the run directory keeps, so a run can be
repeated or resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimyolo.darknet.weights import is_checkpoint
from slimyolo.data.augment import AugmentConfig
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import read_yaml
from slimyolo.params import Fields, declared_fields
from slimyolo.train.loss import LossGains
from slimyolo.train.options import TrainOptions

# Why sparsity training and fine-tuning take only the full weights of their cfg.
CONTINUES_A_TRAINED_MODEL = ("sparsity training and fine-tuning continue a trained model, so they need the full "
                             "weights of its cfg; start base training (without sr or finetune) from a partial file or "
                             "another cfg's weights, then continue from its best.pt")
RECORD_KEYS = ("pretrained",)  # what config.yaml records beside the settings (read back, not settings)


def default_warmup(stage: str, epochs: int) -> float:
    """Warm-up epochs when the config leaves them open: 3, as yolov5; when fine-tuning, a quarter of
    the epochs up to 6 (the original projects' 6 of a 100-epoch fine-tune; six of eight epochs
    would spend most of a short fine-tune ramping up)."""
    return min(6.0, epochs / 4) if stage == "finetune" else 3.0


def _holds_cfg(weights: str) -> bool:
    """Whether ``weights`` is a checkpoint (which holds its cfg): by content when the file is there;
    by its ``.pt`` name while it is not yet (a config checked before an earlier stage writes it)."""
    return is_checkpoint(weights) if Path(weights).is_file() else weights.endswith(".pt")


@dataclass
class TrainConfig(TrainOptions):
    """Everything a training run needs (see the README's ``slimyolo train`` section): the declared settings
    (:class:`~slimyolo.train.options.TrainOptions`) and the two nested sections, ``augment`` and ``loss``.

    YAML is read by :meth:`from_dict` from the type hints (its messages: ``unknown setting``, ``must be
    float``); :meth:`check` applies the declared bounds and choices.
    """

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossGains = field(default_factory=LossGains)

    @property
    def stage(self) -> str:
        """The pipeline stage this run is: "sparsity", "finetune" or "train"."""
        if self.sr:
            return "sparsity"
        if self.finetune or self.teacher_weights:
            return "finetune"
        return "train"

    def resolved(self, source: str = "training config") -> TrainConfig:
        """A copy with defaults that depend on other fields filled in, after checking every field."""
        out = dataclasses.replace(self, augment=dataclasses.replace(self.augment),
                                  loss=dataclasses.replace(self.loss))
        if out.lr0 is None:
            out.lr0 = 0.001 if out.optimizer == "adam" else 0.01
        if out.warmup_bias_lr is None:
            out.warmup_bias_lr = 10 * out.lr0
        if out.warmup_epochs is None:
            out.warmup_epochs = default_warmup(out.stage, out.epochs)
        out.check(source)
        return out

    def check(self, source: str = "training config") -> None:
        """Every field in range, as its declaration says, and the settings that need each other; errors name
        ``source`` (the file or spec section) and the field."""
        declared = declared_fields(type(self))
        values = Fields({f.name: getattr(self, f.name) for f in declared}, source)
        for fld in declared:
            if getattr(self, fld.name) is not None:
                fld.metadata["check"].read(values, fld.name, None, False)

        def bad(name: str, why: str) -> SlimYoloError:
            return SlimYoloError(f"{source}: '{name}' {why}")

        if self.teacher_cfg and not self.teacher_weights:
            raise bad("teacher_cfg", "needs teacher_weights")
        if self.weights_cfg and not self.weights:
            raise bad("weights_cfg", "is the cfg of 'weights'; it needs weights")
        if self.weights_cfg and self.stage != "train":
            raise bad("weights_cfg", f"is for base training only: {CONTINUES_A_TRAINED_MODEL}")
        if self.cfg is None and not (self.weights and _holds_cfg(self.weights)):
            raise bad("cfg", "is required unless weights is a .pt checkpoint (which holds its cfg)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "training config") -> TrainConfig:
        """Build from plain data (YAML); unknown keys and wrong types are errors naming the key."""
        if not isinstance(doc, dict):
            raise SlimYoloError(f"{source}: expected a mapping of settings, got {type(doc).__name__}")
        return _build(cls, doc, source, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a YAML config; a run's config.yaml is one too (what it records, RECORD_KEYS, is left out)."""
        doc = read_yaml(path)
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if k not in RECORD_KEYS}
        return cls.from_dict(doc or {}, str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls: type, doc: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - names)
    if unknown:
        raise SlimYoloError(f"{source}: unknown setting '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in doc
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SlimYoloError(f"{source}: missing required setting '{prefix}{missing[0]}'")
    values = {}
    for key, value in doc.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise SlimYoloError(f"{source}: '{prefix}{key}' must be a mapping")
            values[key] = _build(hint, value, source, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, f"{source}: '{prefix}{key}'")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise SlimYoloError(f"{where} must not be empty")
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in options if k is not type(None))
    raise SlimYoloError(f"{where} must be {wanted}, got {value!r}")
