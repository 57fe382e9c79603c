"""The typed layer graph of a cfg: what each layer computes and the shape it produces.

Everything that needs to understand a cfg — the PyTorch builder, the FLOPs counter, the
pruner, the Keras builder — reads these specs instead of raw options, so darknet's rules
(``pad=1`` means ``size//2``, maxpool padding ``size-1``, relative and absolute route
indices, route groups) are implemented exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # a graph reads a parsed cfg; the cfg parser builds the graph to check what it read
    from slimyolo.darknet.cfg import Cfg, Section

Shape = tuple[int, int, int]  # (channels, height, width)
# The activations a layer may name: the runtimes (the PyTorch model, the Keras builder) implement each of them.
ACTIVATIONS = ("linear", "leaky", "relu", "mish", "swish", "logistic")


@dataclass(frozen=True)
class Conv:
    filters: int
    size: int
    stride: int
    padding: int
    groups: int
    batch_normalize: bool
    activation: str


@dataclass(frozen=True)
class Shortcut:
    source: int  # absolute layer index added to the previous layer's output
    activation: str


@dataclass(frozen=True)
class Route:
    sources: tuple[int, ...]  # absolute layer indices, concatenated on channels
    groups: int
    group_id: int


@dataclass(frozen=True)
class Upsample:
    stride: int


@dataclass(frozen=True)
class MaxPool:
    size: int
    stride: int
    padding: int  # darknet's total padding: left/top get padding // 2


@dataclass(frozen=True)
class Yolo:
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all anchors of the model, in pixels (w, h)
    classes: int
    scale_x_y: float
    new_coords: bool

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple(self.anchors[m] for m in self.mask)

    @property
    def outputs_per_anchor(self) -> int:
        return 5 + self.classes


@dataclass(frozen=True)
class Head:
    """What decoding one raw head needs: the same for PyTorch, Keras and OpenVINO outputs."""

    layer: int  # index of the [yolo] layer
    stride: int
    anchors: tuple[tuple[float, float], ...]  # this head's (masked) anchors, input pixels (w, h)
    classes: int
    scale_x_y: float = 1.0
    new_coords: bool = False


LayerSpec = Union[Conv, Shortcut, Route, Upsample, MaxPool, Yolo]  # noqa: UP007


@dataclass(frozen=True)
class Graph:
    """Specs, input indices and output shapes of every layer for one input size."""

    specs: tuple[LayerSpec, ...]
    inputs: tuple[tuple[int, ...], ...]  # absolute indices read by each layer; -1 = the image
    shapes: tuple[Shape, ...]
    input_shape: Shape

    def in_shape(self, i: int) -> Shape:
        """Shape of what layer ``i`` reads first (the image for layer 0)."""
        return self.shape_of(self.inputs[i][0])

    def shape_of(self, j: int) -> Shape:
        return self.input_shape if j < 0 else self.shapes[j]

    def yolo_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.specs) if isinstance(s, Yolo)]

    def stride_of(self, i: int) -> int:
        """Downsampling factor of layer ``i``'s output relative to the input image."""
        return self.input_shape[1] // self.shapes[i][1]

    def heads(self) -> list[Head]:
        """The detection heads in cfg order (the order of the model's outputs)."""
        return [Head(i, self.stride_of(i), s.masked_anchors, s.classes, s.scale_x_y, s.new_coords)
                for i, s in enumerate(self.specs) if isinstance(s, Yolo)]

    def consumers(self) -> list[list[int]]:
        """For each layer, the layers that read its output."""
        users: list[list[int]] = [[] for _ in self.specs]
        for i, srcs in enumerate(self.inputs):
            for j in srcs:
                if j >= 0:
                    users[j].append(i)
        return users


def _activation(sec: Section) -> str:
    act = sec.get_str("activation", "linear" if sec.kind == "shortcut" else "logistic")
    if act not in ACTIVATIONS:
        raise sec.error(f"unsupported activation '{act}' (supported: {', '.join(ACTIVATIONS)})",
                        "activation")
    return act


def _absolute(sec: Section, index: int, key: str) -> list[int]:
    """Darknet index rule: negative = relative to this layer, otherwise absolute."""
    rels = sec.get_ints(key)
    if not rels:
        raise sec.error(f"'{key}' lists no layer", key)
    out = []
    for rel in rels:
        j = index + rel if rel < 0 else rel
        if not 0 <= j < index:
            raise sec.error(f"'{key}' index {rel} points to layer {j}, outside 0..{index - 1}", key)
        out.append(j)
    return out


def layer_spec(sec: Section, index: int) -> LayerSpec:
    """The typed meaning of one section (numbers checked, indices made absolute)."""
    kind = sec.kind
    if kind == "convolutional":
        size = sec.get_int("size", 1)
        stride = sec.get_int("stride", 1)
        filters = sec.get_int("filters", 1)
        groups = sec.get_int("groups", 1)
        padding = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
        for key, value in (("size", size), ("stride", stride), ("filters", filters), ("groups", groups)):
            if value < 1:
                raise sec.error(f"'{key}' must be at least 1, got {value}", key)
        if padding < 0:
            raise sec.error(f"'padding' must not be negative, got {padding}", "padding")
        bn = sec.get_int("batch_normalize", 0)
        if bn not in (0, 1):
            raise sec.error(f"'batch_normalize' must be 0 or 1, got {bn}", "batch_normalize")
        return Conv(filters, size, stride, padding, groups, bool(bn), _activation(sec))
    if kind == "shortcut":
        sources = _absolute(sec, index, "from")
        if len(sources) != 1:
            raise sec.error("a shortcut from several layers is not supported", "from")
        return Shortcut(sources[0], _activation(sec))
    if kind == "route":
        groups = sec.get_int("groups", 1)
        group_id = sec.get_int("group_id", 0)
        if groups < 1 or not 0 <= group_id < groups:
            raise sec.error(f"route groups={groups} group_id={group_id}: need 0 <= group_id < groups",
                            "group_id" if groups >= 1 else "groups")
        return Route(tuple(_absolute(sec, index, "layers")), groups, group_id)
    if kind == "upsample":
        stride = sec.get_int("stride", 2)
        if stride < 1:
            raise sec.error(f"upsample stride must be a positive integer, got {stride}", "stride")
        return Upsample(stride)
    if kind == "maxpool":
        size = sec.get_int("size", 1)
        stride = sec.get_int("stride", size)
        padding = sec.get_int("padding", size - 1)
        if size < 1 or stride < 1 or padding < 0:
            raise sec.error(f"maxpool size={size} stride={stride} padding={padding} is invalid")
        return MaxPool(size, stride, padding)
    if kind == "yolo":
        classes = sec.get_int("classes", 20)
        anchors_flat = sec.get_floats("anchors", [])
        num = sec.get_int("num", len(anchors_flat) // 2 or 1)
        if len(anchors_flat) != 2 * num:
            raise sec.error(f"'anchors' holds {len(anchors_flat)} numbers; num={num} needs {2 * num}",
                            "anchors")
        mask = sec.get_ints("mask", list(range(num)))
        bad = [m for m in mask if not 0 <= m < num]
        if bad:
            raise sec.error(f"mask values {bad} are outside 0..{num - 1}", "mask")
        if classes < 1:
            raise sec.error(f"'classes' must be at least 1, got {classes}", "classes")
        anchors = tuple((anchors_flat[2 * k], anchors_flat[2 * k + 1]) for k in range(num))
        return Yolo(tuple(mask), anchors, classes, sec.get_float("scale_x_y", 1.0),
                    bool(sec.get_int("new_coords", 0)))
    raise sec.error(f"unsupported section [{kind}]")


def build_graph(cfg: Cfg, height: int | None = None, width: int | None = None) -> Graph:
    """Type every layer and compute every output shape; any inconsistency is a CfgError.

    ``height``/``width`` override the [net] input size (the cfg is not changed).
    """
    h = height if height is not None else cfg.height
    w = width if width is not None else cfg.width
    c = cfg.channels
    if h < 1 or w < 1 or c < 1:
        raise cfg.net.error(f"input size {c}x{h}x{w} is invalid")
    input_shape: Shape = (c, h, w)
    specs: list[LayerSpec] = []
    inputs: list[tuple[int, ...]] = []
    shapes: list[Shape] = []
    for i, sec in enumerate(cfg.layers):
        spec = layer_spec(sec, i)
        prev = i - 1
        pc, ph, pw = input_shape if prev < 0 else shapes[prev]
        if isinstance(spec, Conv):
            if pc % spec.groups or spec.filters % spec.groups:
                raise sec.error(f"groups={spec.groups} must divide the input channels ({pc}) "
                                f"and filters ({spec.filters})", "groups")
            oh = (ph + 2 * spec.padding - spec.size) // spec.stride + 1
            ow = (pw + 2 * spec.padding - spec.size) // spec.stride + 1
            shape = (spec.filters, oh, ow)
            srcs: tuple[int, ...] = (prev,)
        elif isinstance(spec, Shortcut):
            other = shapes[spec.source]
            if other != (pc, ph, pw):
                raise sec.error(f"shortcut adds layer {spec.source} of shape {_fmt(other)} to layer "
                                f"{prev} of shape {_fmt((pc, ph, pw))}: shapes must match", "from")
            shape, srcs = (pc, ph, pw), (prev, spec.source)
        elif isinstance(spec, Route):
            parts = [shapes[j] for j in spec.sources]
            if len({(s[1], s[2]) for s in parts}) != 1:
                detail = ", ".join(f"layer {j}: {_fmt(s)}" for j, s in zip(spec.sources, parts, strict=True))
                raise sec.error(f"route concatenates outputs of different sizes ({detail})", "layers")
            for j, s in zip(spec.sources, parts, strict=True):
                if s[0] % spec.groups:
                    raise sec.error(f"groups={spec.groups} does not divide the {s[0]} channels of "
                                    f"layer {j}", "groups")
            shape = (sum(s[0] // spec.groups for s in parts), parts[0][1], parts[0][2])
            srcs = spec.sources
        elif isinstance(spec, Upsample):
            shape, srcs = (pc, ph * spec.stride, pw * spec.stride), (prev,)
        elif isinstance(spec, MaxPool):
            oh = (ph + spec.padding - spec.size) // spec.stride + 1
            ow = (pw + spec.padding - spec.size) // spec.stride + 1
            shape, srcs = (pc, oh, ow), (prev,)
        else:  # Yolo
            need = len(spec.mask) * spec.outputs_per_anchor
            if prev < 0 or not isinstance(specs[prev], Conv):
                raise sec.error("a [yolo] layer must follow a [convolutional] layer")
            if pc != need:
                raise sec.error(f"the convolution before this yolo layer has {pc} filters; "
                                f"len(mask)*(5+classes) = {len(spec.mask)}*(5+{spec.classes}) = {need}",
                                "classes")
            shape, srcs = (pc, ph, pw), (prev,)
        if shape[1] < 1 or shape[2] < 1:
            raise sec.error(f"output size {_fmt(shape)} is empty: input {h}x{w} is too small")
        specs.append(spec)
        inputs.append(srcs)
        shapes.append(shape)
    if not any(isinstance(s, Yolo) for s in specs):
        raise cfg.net.error("the cfg has no [yolo] layer: SlimYOLO handles YOLO detectors")
    return Graph(tuple(specs), tuple(inputs), tuple(shapes), input_shape)


def _fmt(shape: Shape) -> str:
    return "x".join(str(v) for v in shape)
