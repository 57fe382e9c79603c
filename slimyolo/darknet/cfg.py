"""Darknet ``.cfg`` files: read, validate the keys, write back.

A cfg is kept as raw text values (``Section.options``) so that a cfg read and written again
is the same cfg: training-only keys the network does not use (jitter, ignore_thresh, burn_in,
...) survive untouched, and key order is preserved. The typed meaning of each layer and the
shape checks live in :mod:`slimyolo.darknet.graph`; :func:`parse_cfg` runs them so that a bad
cfg fails where it is read, with the file, line and layer index in the message.

The format is darknet's own: ``[section]`` headers, ``key=value`` lines, ``#`` or ``;``
comments on lines of their own. The layer index of a section is its position after
``[net]``, counted from 0, exactly as darknet, route and shortcut indices count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slimyolo.darknet.graph import build_graph
from slimyolo.errors import CfgError
from slimyolo.fsutil import atomic_write_text

# Keys the network is built from (interpreted), per section kind.
NETWORK_KEYS: dict[str, frozenset[str]] = {
    "convolutional": frozenset(
        {"batch_normalize", "filters", "size", "stride", "pad", "padding", "groups", "activation"}),
    "shortcut": frozenset({"from", "activation"}),
    "route": frozenset({"layers", "groups", "group_id"}),
    "upsample": frozenset({"stride"}),
    "maxpool": frozenset({"size", "stride", "padding"}),
    "yolo": frozenset({"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"}),
}

# Keys that only steer darknet's training or post-processing: kept and written back, never
# interpreted by the network. Anything else in a layer section is an error, because an
# unknown key may change the network and silently ignoring it would give wrong outputs.
TRAINING_KEYS: dict[str, frozenset[str]] = {
    "convolutional": frozenset({"stopbackward", "dontload", "dontloadscales", "learning_rate",
                                "train_only_bn", "burnin_update"}),
    "shortcut": frozenset({"stopbackward", "weights_type", "weights_normalization"}),
    "route": frozenset({"stopbackward"}),
    "upsample": frozenset({"stopbackward"}),
    "maxpool": frozenset({"stopbackward"}),
    "yolo": frozenset({
        "jitter", "ignore_thresh", "truth_thresh", "random", "iou_thresh", "cls_normalizer",
        "iou_normalizer", "obj_normalizer", "iou_loss", "nms_kind", "beta_nms", "max_delta",
        "resize", "counters_per_class", "label_smooth_eps", "objectness_smooth", "focal_loss",
        "max", "map", "track_history_size", "sim_thresh", "dets_for_track", "dets_for_show",
        "track_ciou_norm", "embedding_layer", "stopbackward", "delta_normalizer",
    }),
}

# Training keys that would change the network if they had a non-default value.
_MUST_BE_DEFAULT = {("shortcut", "weights_type"): "none", ("shortcut", "weights_normalization"): "none"}

NET_KINDS = ("net", "network")


@dataclass(eq=False)
class Section:
    """One ``[kind]`` block of a cfg: its raw ``key=value`` options in file order.

    ``line`` and ``key_lines`` remember where the section came from so that errors found
    later (by the graph checks, the model builder, the pruner) can still point at the file.
    """

    kind: str
    options: dict[str, str] = field(default_factory=dict)
    line: int | None = None
    key_lines: dict[str, int] = field(default_factory=dict)
    index: int | None = None  # layer index (None for [net])
    path: str | None = None

    @classmethod
    def make(cls, kind: str, **options: object) -> Section:
        """Build a section from Python values (``mask=[0, 1, 2]`` → ``mask=0,1,2``)."""
        sec = cls(kind)
        for key, value in options.items():
            sec.set(key.rstrip("_"), value)
        return sec

    def set(self, key: str, value: object) -> None:
        self.options[key] = format_value(value)

    def error(self, message: str, key: str | None = None) -> CfgError:
        line = self.key_lines.get(key, self.line) if key else self.line
        return CfgError(message, path=self.path, line=line, layer=self.index, kind=self.kind)

    def has(self, key: str) -> bool:
        return key in self.options

    def get_str(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise self.error(f"missing required key '{key}'")
        return default

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        return self._number(key, self.options[key], int)

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        return self._number(key, self.options[key], float)

    def get_ints(self, key: str, default: Sequence[int] | None = None) -> list[int]:
        if key not in self.options:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return list(default)
        return [self._number(key, part, int) for part in _split_list(self.options[key])]

    def get_floats(self, key: str, default: Sequence[float] | None = None) -> list[float]:
        if key not in self.options:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return list(default)
        return [self._number(key, part, float) for part in _split_list(self.options[key])]

    def _number(self, key: str, text: str, kind: type) -> int | float:
        try:
            value = float(text) if kind is float else int(text.strip())
        except ValueError:
            raise self.error(f"bad number {text.strip()!r} for '{key}'", key) from None
        return value

    def structure(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What makes two sections the same cfg content (not where they were read from)."""
        return self.kind, tuple(self.options.items())


@dataclass(eq=False)
class Cfg:
    """A whole cfg: the ``[net]`` section and the layer sections in order."""

    net: Section
    layers: list[Section]
    path: str | None = None

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Renumber layers after layers were inserted or removed (pruning does this)."""
        self.net.path = self.path
        for i, sec in enumerate(self.layers):
            sec.index, sec.path = i, self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cfg) and self.structure() == other.structure()

    __hash__ = None  # type: ignore[assignment]

    def structure(self) -> tuple:
        return (self.net.structure(), tuple(s.structure() for s in self.layers))

    @property
    def width(self) -> int:
        return self.net.get_int("width")

    @property
    def height(self) -> int:
        return self.net.get_int("height")

    @property
    def channels(self) -> int:
        return self.net.get_int("channels", 3)

    def copy(self) -> Cfg:
        return copy.deepcopy(self)

    def with_size(self, height: int, width: int) -> Cfg:
        """A copy whose [net] input size is ``height``×``width``."""
        out = self.copy()
        out.net.set("width", width)
        out.net.set("height", height)
        return out

    def to_text(self) -> str:
        """The cfg in darknet's format; any darknet reader accepts it."""
        blocks = [_section_text(self.net)] + [_section_text(s) for s in self.layers]
        return "\n".join(blocks)

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_text())

    def yolo_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.layers) if s.kind == "yolo"]


def format_value(value: object) -> str:
    """Darknet spelling of a Python value: lists comma-separated, bools as 0/1."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value) if value != int(value) else f"{value:g}"
    return str(value)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _section_text(sec: Section) -> str:
    lines = [f"[{sec.kind}]"] + [f"{k}={v}" for k, v in sec.options.items()]
    return "\n".join(lines) + "\n"


def parse_cfg_text(text: str, path: str | None = None, *, validate: bool = True) -> Cfg:
    """Parse cfg text; with ``validate`` the layer graph is checked too (see graph.py)."""
    where = path or "<cfg>"
    sections: list[Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header {line!r}", path=where, line=lineno)
            kind = line[1:-1].strip()
            index = len(sections) - 1 if sections else None
            sections.append(Section(kind, line=lineno, index=index, path=path))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value' or '[section]', got {line!r}", path=where, line=lineno)
        if not sections:
            raise CfgError("option before the first section", path=where, line=lineno)
        key, value = (part.strip() for part in line.split("=", 1))
        sec = sections[-1]
        if not key:
            raise CfgError(f"empty key in {line!r}", path=where, line=lineno, layer=sec.index, kind=sec.kind)
        if key in sec.options:
            raise CfgError(f"duplicate key '{key}' (first on line {sec.key_lines[key]})",
                           path=where, line=lineno, layer=sec.index, kind=sec.kind)
        sec.options[key] = value
        sec.key_lines[key] = lineno
    if not sections:
        raise CfgError("no sections: not a darknet cfg", path=where)
    if sections[0].kind not in NET_KINDS:
        raise CfgError(f"the first section must be [net], got [{sections[0].kind}]",
                       path=where, line=sections[0].line)
    for sec in sections[1:]:
        if sec.kind in NET_KINDS:
            raise CfgError("a second [net] section", path=where, line=sec.line)
        check_keys(sec)
    cfg = Cfg(sections[0], sections[1:], path=path)
    if validate:
        build_graph(cfg)
    return cfg


def check_keys(sec: Section) -> None:
    """Reject unknown sections and keys: darknet would build a different network from them."""
    if sec.kind not in NETWORK_KEYS:
        supported = ", ".join(f"[{k}]" for k in NETWORK_KEYS)
        raise sec.error(f"unsupported section [{sec.kind}] (supported: [net], {supported})")
    known = NETWORK_KEYS[sec.kind] | TRAINING_KEYS[sec.kind]
    for key, value in sec.options.items():
        if key not in known:
            raise sec.error(f"unknown key '{key}' in [{sec.kind}]: it may change the network, "
                            "and SlimYOLO does not support it", key)
        default = _MUST_BE_DEFAULT.get((sec.kind, key))
        if default is not None and value != default:
            raise sec.error(f"'{key}={value}' is not supported (only '{default}')", key)


def parse_cfg(path: str | Path, *, validate: bool = True) -> Cfg:
    """Read a cfg file; errors name the file, line and layer index."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CfgError("file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CfgError(f"cannot read: {exc}", path=str(path)) from None
    return parse_cfg_text(text, str(path), validate=validate)


def as_cfg(cfg: Cfg | str | Path) -> Cfg:
    """Accept a parsed cfg or a path to one (the convention of every public function)."""
    return cfg if isinstance(cfg, Cfg) else parse_cfg(cfg)
