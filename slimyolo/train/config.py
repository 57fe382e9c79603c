"""The training configuration: one dataclass, loadable from YAML, saved resolved with each run.

The same :class:`TrainConfig` drives base training, sparsity training (``sr``) and
fine-tuning (``finetune``, optionally with a teacher). ``None`` fields are resolved by
:meth:`TrainConfig.resolved` (learning rate by optimizer, warm-up by fine-tuning, input
size by the cfg), and the resolved copy is what the run directory keeps, so a run can be
repeated or resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from slimyolo.darknet.weights import is_checkpoint
from slimyolo.data.augment import AugmentConfig
from slimyolo.errors import SlimYoloError
from slimyolo.fsutil import read_yaml
from slimyolo.params import Declared, Fields, check_values, declared_fields
from slimyolo.train.options import LossGains, TrainOptions

# Why sparsity training and fine-tuning take only the full weights of their cfg.
CONTINUES_A_TRAINED_MODEL = ("sparsity training and fine-tuning continue a trained model, so they need the full "
                             "weights of its cfg; start base training (without sr or finetune) from a partial file or "
                             "another cfg's weights, then continue from its best.pt")
RECORD_KEYS = ("pretrained",)  # what config.yaml records beside the settings (read back, not settings)


def default_warmup(phase: str, epochs: int) -> float:
    """Warm-up epochs when the config leaves them open: 3, as yolov5; when fine-tuning, a quarter of
    the epochs up to 6 (the original projects' 6 of a 100-epoch fine-tune; six of eight epochs
    would spend most of a short fine-tune ramping up)."""
    return min(6.0, epochs / 4) if phase == "finetune" else 3.0


def _holds_cfg(weights: str) -> bool:
    """Whether ``weights`` is a checkpoint (which holds its cfg): by content when the file is there;
    by its ``.pt`` name while it is not yet (a config checked before an earlier stage writes it)."""
    return is_checkpoint(weights) if Path(weights).is_file() else weights.endswith(".pt")


@dataclass
class TrainConfig(TrainOptions):
    """Everything a training run needs (see the README's ``slimyolo train`` section): the declared settings
    (:class:`~slimyolo.train.options.TrainOptions`) and the two declared sections, ``augment``
    (:class:`~slimyolo.data.augment.AugmentConfig`) and ``loss`` (:class:`~slimyolo.train.options.LossGains`).

    YAML is read by :meth:`from_dict` with the engine every spec uses (:mod:`slimyolo.params`): a misspelt key,
    a wrong type and a value out of its declared bounds are errors naming the setting.
    """

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossGains = field(default_factory=LossGains)

    SECTIONS: ClassVar[Mapping[str, type[Declared]]] = {"augment": AugmentConfig, "loss": LossGains}

    @property
    def phase(self) -> str:
        """The training phase this run is: "sparsity", "finetune" or "train" (base training)."""
        if self.sr:
            return "sparsity"
        if self.finetune or self.teacher_weights:
            return "finetune"
        return "train"

    def resolved(self, source: str = "training config") -> TrainConfig:
        """A copy with defaults that depend on other fields filled in, after checking every field."""
        out = dataclasses.replace(self)
        if out.lr0 is None:
            out.lr0 = 0.001 if out.optimizer == "adam" else 0.01
        if out.warmup_bias_lr is None:
            out.warmup_bias_lr = 10 * out.lr0
        if out.warmup_epochs is None:
            out.warmup_epochs = default_warmup(out.phase, out.epochs)
        out.check(source)
        return out

    def check(self, source: str = "training config") -> None:
        """Every field in range, as its declaration says, and the settings that need each other; errors name
        ``source`` (the file or spec section) and the field. For a config built in Python: one read by
        :meth:`from_dict` was checked field by field already."""
        self.from_dict(self.to_dict(), source)

        def bad(name: str, why: str) -> SlimYoloError:
            return SlimYoloError(f"{source}: '{name}' {why}")

        if self.teacher_cfg and not self.teacher_weights:
            raise bad("teacher_cfg", "needs teacher_weights")
        if self.weights_cfg and not self.weights:
            raise bad("weights_cfg", "is the cfg of 'weights'; it needs weights")
        if self.weights_cfg and self.phase != "train":
            raise bad("weights_cfg", f"is for base training only: {CONTINUES_A_TRAINED_MODEL}")
        if self.cfg is None and not (self.weights and _holds_cfg(self.weights)):
            raise bad("cfg", "is required unless weights is a .pt checkpoint (which holds its cfg)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "training config") -> TrainConfig:
        """Build from plain data (YAML): the declared settings and the ``augment`` and ``loss`` sections, each
        read and checked by its declaration; unknown keys and wrong types are errors naming the key."""
        check_values(doc, source)
        f = Fields(doc, source)
        values: dict[str, Any] = {}
        for fld in declared_fields(cls):
            required = fld.default is dataclasses.MISSING
            values[fld.name] = fld.metadata["check"].read(f, fld.name, None if required else fld.default, required)
        for name, section in cls.SECTIONS.items():
            raw = f.raw(name)
            if raw is not None:
                values[name] = section.from_dict(raw, source, prefix=f"{name}.")
        f.done()
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a YAML config; a run's config.yaml is one too (what it records, RECORD_KEYS, is left out)."""
        doc = read_yaml(path)
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if k not in RECORD_KEYS}
        return cls.from_dict(doc or {}, str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
