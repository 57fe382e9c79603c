"""The model zoo: cfg generators for the darknet YOLO family, for any number of classes.

With ``classes=80`` each generator reproduces the layer structure of the darknet project's
official cfg of the same name (same layers, order, filters, strides, routes, activations,
anchors and masks); with fewer classes only the filters of the convolutions feeding the yolo
layers change (``len(mask) * (5 + classes)``). Each model is a small factory function, as
timm does, registered in :data:`ZOO`.
"""

from __future__ import annotations

from collections.abc import Callable

from slimyolo.darknet.cfg import Cfg, Section
from slimyolo.errors import SlimYoloError

V3_ANCHORS = (10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326)
V4_ANCHORS = (12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401)
TINY_ANCHORS = (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)


def scaled(filters: int, width: float) -> int:
    """``filters`` × ``width``, a multiple of 8 (at least 8): yolov5's width multiple, for models
    small enough to train on a CPU. Equal widths stay equal, so shortcuts and route groups fit."""
    return filters if width == 1.0 else max(8, round(filters * width / 8) * 8)


class _Builder:
    """Appends sections and tracks layer indices so routes can be written by name."""

    def __init__(self, classes: int, width: float = 1.0) -> None:
        self.classes = classes
        self.width = width
        self.layers: list[Section] = []

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def conv(self, filters: int, size: int, stride: int = 1, act: str = "leaky") -> int:
        filters = scaled(filters, self.width)
        self.layers.append(Section.make("convolutional", batch_normalize=1, filters=filters, size=size,
                                        stride=stride, pad=1, activation=act))
        return self.last

    def shortcut(self, frm: int = -3) -> int:
        self.layers.append(Section.make("shortcut", from_=frm, activation="linear"))
        return self.last

    def route(self, *layers: int, groups: int | None = None, group_id: int | None = None) -> int:
        opts: dict[str, object] = {"layers": list(layers)}
        if groups is not None:
            opts.update(groups=groups, group_id=group_id)
        self.layers.append(Section.make("route", **opts))
        return self.last

    def upsample(self) -> int:
        self.layers.append(Section.make("upsample", stride=2))
        return self.last

    def maxpool(self, size: int, stride: int) -> int:
        self.layers.append(Section.make("maxpool", size=size, stride=stride))
        return self.last

    def spp(self) -> None:
        for size, back in ((5, -2), (9, -4)):
            self.maxpool(size, 1)
            self.route(back)
        self.maxpool(13, 1)
        self.route(-1, -3, -5, -6)

    def head(self, mask: tuple[int, ...], anchors: tuple[int, ...], **train: object) -> int:
        """The linear 1x1 detection convolution and its [yolo] layer."""
        self.layers.append(Section.make("convolutional", size=1, stride=1, pad=1,
                                        filters=len(mask) * (5 + self.classes), activation="linear"))
        self.layers.append(Section.make("yolo", mask=list(mask), anchors=list(anchors),
                                        classes=self.classes, num=len(anchors) // 2, **train))
        return self.last

    def residual(self, hidden: int, out: int, act: str) -> None:
        self.conv(hidden, 1, act=act)
        self.conv(out, 3, act=act)
        self.shortcut()


def _net(size: tuple[int, int], classes: int, **extra: object) -> Section:
    """[net] with darknet's recommended schedule for ``classes`` (max_batches = 2000·C, ≥ 6000)."""
    max_batches = max(6000, 2000 * classes)
    opts: dict[str, object] = dict(
        batch=64, subdivisions=16, width=size[1], height=size[0], channels=3, momentum=0.9,
        decay=0.0005, angle=0, saturation=1.5, exposure=1.5, hue=0.1, learning_rate=0.001,
        burn_in=1000, max_batches=max_batches, policy="steps",
        steps=[int(max_batches * 0.8), int(max_batches * 0.9)], scales=[0.1, 0.1])
    opts.update(extra)
    return Section.make("net", **opts)


_V3_YOLO = dict(jitter=0.3, ignore_thresh=0.7, truth_thresh=1, random=1)
_V4_YOLO = dict(jitter=0.3, ignore_thresh=0.7, truth_thresh=1, iou_thresh=0.213, cls_normalizer=1.0,
                iou_normalizer=0.07, iou_loss="ciou", nms_kind="greedynms", beta_nms=0.6, max_delta=5)
_TINY4_YOLO = dict(jitter=0.3, scale_x_y=1.05, cls_normalizer=1.0, iou_normalizer=0.07, iou_loss="ciou",
                   ignore_thresh=0.7, truth_thresh=1, random=0, resize=1.5, nms_kind="greedynms",
                   beta_nms=0.6)


def _darknet53(b: _Builder) -> tuple[int, int]:
    """Darknet-53 backbone; returns the indices of the stride-8 and stride-16 outputs."""
    b.conv(32, 3)
    taps = []
    for filters, units in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        b.conv(filters, 3, 2)
        for _ in range(units):
            b.residual(filters // 2, filters, "leaky")
        taps.append(b.last)
    return taps[2], taps[3]


def _v3_heads(b: _Builder, s8: int, s16: int, spp: bool) -> None:
    b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    if spp:
        b.spp()
        b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    b.conv(1024, 3)
    b.head((6, 7, 8), V3_ANCHORS, **_V3_YOLO)
    for filters, tap, mask in ((256, s16, (3, 4, 5)), (128, s8, (0, 1, 2))):
        b.route(-4)
        b.conv(filters, 1)
        b.upsample()
        b.route(-1, tap)
        for _ in range(3):
            b.conv(filters, 1)
            b.conv(filters * 2, 3)
        b.head(mask, V3_ANCHORS, **_V3_YOLO)


def yolov3(classes: int = 80, size: tuple[int, int] = (416, 416), width: float = 1.0) -> Cfg:
    b = _Builder(classes, width)
    _v3_heads(b, *_darknet53(b), spp=False)
    return Cfg(_net(size, classes), b.layers)


def yolov3_spp(classes: int = 80, size: tuple[int, int] = (608, 608), width: float = 1.0) -> Cfg:
    b = _Builder(classes, width)
    _v3_heads(b, *_darknet53(b), spp=True)
    return Cfg(_net(size, classes), b.layers)


def _tiny_heads(b: _Builder, tap: int, second_mask: tuple[int, int, int], yolo: dict[str, object]) -> None:
    """The two heads of both tiny models, as darknet's cfgs have them: stride 32 on the backbone's end, then stride
    16 on its upsampled features concatenated with ``tap`` (the stride-16 features), anchors ``second_mask``."""
    b.conv(256, 1)
    b.conv(512, 3)
    b.head((3, 4, 5), TINY_ANCHORS, **yolo)
    b.route(-4)
    b.conv(128, 1)
    b.upsample()
    b.route(-1, tap)
    b.conv(256, 3)
    b.head(second_mask, TINY_ANCHORS, **yolo)


def yolov3_tiny(classes: int = 80, size: tuple[int, int] = (416, 416), width: float = 1.0) -> Cfg:
    b = _Builder(classes, width)
    for filters in (16, 32, 64, 128, 256):
        b.conv(filters, 3)
        b.maxpool(2, 2)
    tap = b.last - 1  # the 256-filter convolution, stride 16
    b.conv(512, 3)
    b.maxpool(2, 1)
    b.conv(1024, 3)
    _tiny_heads(b, tap, (0, 1, 2), _V3_YOLO)
    return Cfg(_net(size, classes, batch=64, subdivisions=2), b.layers)


def _csp_stage(b: _Builder, filters: int, units: int) -> int:
    """One CSPDarknet53 stage: downsample, split, residual units, merge; returns its output."""
    b.conv(filters, 3, 2, "mish")
    part = filters if units == 1 else filters // 2
    b.conv(part, 1, act="mish")
    b.route(-2)
    b.conv(part, 1, act="mish")
    start = b.last
    for _ in range(units):
        b.residual(filters // 2 if units == 1 else part, part, "mish")
    b.conv(part, 1, act="mish")
    b.route(-1, (start - 2) - (b.last + 1))  # merge with the split's first branch
    return b.conv(filters, 1, act="mish")


def yolov4(classes: int = 80, size: tuple[int, int] = (608, 608), width: float = 1.0) -> Cfg:
    b = _Builder(classes, width)
    b.conv(32, 3, act="mish")
    taps = [_csp_stage(b, f, n) for f, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))]
    s8, s16 = taps[2], taps[3]
    b.conv(512, 1)
    b.conv(1024, 3)
    b.conv(512, 1)
    b.spp()
    b.conv(512, 1)
    b.conv(1024, 3)
    neck32 = b.conv(512, 1)
    lateral = []  # PANet top-down path
    for filters, tap in ((256, s16), (128, s8)):
        b.conv(filters, 1)
        b.upsample()
        b.route(tap)
        b.conv(filters, 1)
        b.route(-1, -3)
        for _ in range(2):
            b.conv(filters, 1)
            b.conv(filters * 2, 3)
        lateral.append(b.conv(filters, 1))
    b.conv(256, 3)
    b.head((0, 1, 2), V4_ANCHORS, scale_x_y=1.2, **_V4_YOLO)
    for filters, join, mask, extra in ((256, lateral[0], (3, 4, 5), {"scale_x_y": 1.1}),
                                      (512, neck32, (6, 7, 8), {"scale_x_y": 1.05, "random": 1})):
        b.route(-4)
        b.conv(filters, 3, 2)
        b.route(-1, join - b.last - 1)
        for _ in range(2):
            b.conv(filters, 1)
            b.conv(filters * 2, 3)
        b.conv(filters, 1)
        b.conv(filters * 2, 3)
        b.head(mask, V4_ANCHORS, **extra, **_V4_YOLO)
    return Cfg(_net(size, classes, subdivisions=8, momentum=0.949, learning_rate=0.0013, mosaic=1),
               b.layers)


def yolov4_tiny(classes: int = 80, size: tuple[int, int] = (416, 416), width: float = 1.0) -> Cfg:
    b = _Builder(classes, width)
    b.conv(32, 3, 2)
    b.conv(64, 3, 2)
    taps = []
    for filters in (64, 128, 256):
        b.conv(filters, 3)
        b.route(-1, groups=2, group_id=1)
        b.conv(filters // 2, 3)
        b.conv(filters // 2, 3)
        b.route(-1, -2)
        taps.append(b.conv(filters, 1))
        b.route(-6, -1)
        b.maxpool(2, 2)
    b.conv(512, 3)
    _tiny_heads(b, taps[2], (1, 2, 3), _TINY4_YOLO)
    return Cfg(_net(size, classes, subdivisions=1, learning_rate=0.00261), b.layers)


ZOO: dict[str, Callable[..., Cfg]] = {
    "yolov3": yolov3,
    "yolov3-spp": yolov3_spp,
    "yolov3-tiny": yolov3_tiny,
    "yolov4": yolov4,
    "yolov4-tiny": yolov4_tiny,
}

# The input size of each official cfg (used when no size is given).
DEFAULT_SIZE = {"yolov3": 416, "yolov3-spp": 608, "yolov3-tiny": 416, "yolov4": 608, "yolov4-tiny": 416}


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``416`` → (416, 416); ``'416x320'`` (width x height, darknet's order) → (320, 416) as (h, w)."""
    if isinstance(text, tuple):
        return text
    if isinstance(text, int):
        return text, text
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise SlimYoloError(f"bad size {text!r}: expected N or WxH, e.g. 416 or 416x320") from None
    if w < 32 or h < 32 or w % 32 or h % 32:
        raise SlimYoloError(f"bad size {text!r}: width and height must be multiples of 32 (>= 32)")
    return h, w


def make_cfg(name: str, classes: int = 80, size: str | int | tuple[int, int] | None = None,
             width: float = 1.0) -> Cfg:
    """A zoo cfg by name, with ``classes`` classes at ``size`` (default: the official size).

    ``width`` scales the filters of every convolution but the heads (see :func:`scaled`).
    """
    if name not in ZOO:
        raise SlimYoloError(f"unknown model {name!r}; the zoo has: {', '.join(ZOO)}")
    if classes < 1:
        raise SlimYoloError(f"classes must be at least 1, got {classes}")
    if not 0.0 < width <= 4.0:
        raise SlimYoloError(f"width must be in (0, 4], got {width}")
    hw = parse_size(size if size is not None else DEFAULT_SIZE[name])
    return ZOO[name](classes, hw, width)
