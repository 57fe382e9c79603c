"""Parameter, FLOP and ``.weights`` size counts computed from the cfg alone.

Counted as darknet counts them, so the figures can be compared with darknet's own printout
and the published numbers: a multiply-add is 2 FLOPs, and the convolutions carry the
compute; like darknet (AlexeyAB's fork, which prints the totals users compare with) we also
add one FLOP per element of each shortcut sum and ``size²`` per output of each maxpool
(yolov4 at 416: 60.137 BFLOPs, as darknet prints). Params are the trainable tensors (kernels, BN γ and β or conv bias),
the number the pruning papers report; the ``.weights`` size also holds BN running
statistics and the 20-byte header.

Activation traffic is the other cost a CPU sees: bytes of every layer's output (f32) written
once and read by each layer that uses it (a ``[yolo]`` layer reads its head, as the decode
does; it writes nothing itself), plus the image read by the first layer. Thin pruned layers
move as many bytes per FLOP that a CPU waits on memory rather than on arithmetic, so BFLOPs
alone stop predicting the speed of heavily pruned networks (see BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slimyolo.darknet.cfg import Cfg
from slimyolo.darknet.graph import Conv, Graph, MaxPool, Shortcut, Yolo, build_graph

WEIGHTS_HEADER_BYTES = 20  # major, minor, revision (int32) + seen (int64)


@dataclass(frozen=True)
class ModelStats:
    layers: int
    params: int
    bflops: float
    weights_bytes: int
    input_size: tuple[int, int]  # (height, width)
    activation_mb: float  # f32 activation bytes written and read (see the module docstring), 1e6 bytes

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


def conv_counts(graph: Graph, i: int) -> tuple[int, int, int]:
    """(kernel weights, trainable per-channel params, stored per-channel floats) of conv ``i``."""
    spec = graph.specs[i]
    assert isinstance(spec, Conv)
    in_ch = graph.in_shape(i)[0]
    kernel = spec.filters * (in_ch // spec.groups) * spec.size * spec.size
    per_channel = 2 * spec.filters if spec.batch_normalize else spec.filters
    stored = 4 * spec.filters if spec.batch_normalize else spec.filters
    return kernel, per_channel, stored


def layer_flops(graph: Graph, i: int) -> float:
    """FLOPs of layer ``i`` as darknet counts them (2 per multiply-add)."""
    spec = graph.specs[i]
    if isinstance(spec, Conv):
        kernel, _, _ = conv_counts(graph, i)
        _, oh, ow = graph.shapes[i]
        return 2.0 * kernel * oh * ow
    if isinstance(spec, Shortcut):
        c, h, w = graph.shapes[i]
        return float(c * h * w)
    if isinstance(spec, MaxPool):
        c, h, w = graph.shapes[i]
        return float(spec.size * spec.size * c * h * w)
    return 0.0


def activation_bytes(graph: Graph, i: int, readers: int) -> int:
    """f32 bytes layer ``i``'s output costs: written once and read by ``readers`` layers (0 for ``[yolo]``)."""
    if isinstance(graph.specs[i], Yolo):
        return 0
    c, h, w = graph.shapes[i]
    return 4 * c * h * w * (1 + readers)


def layer_activation_bytes(graph: Graph) -> list[int]:
    """:func:`activation_bytes` of every layer; a layer that reads the image also counts that read."""
    users = graph.consumers()
    c, h, w = graph.input_shape
    return [activation_bytes(graph, i, len(users[i])) + 4 * c * h * w * graph.inputs[i].count(-1)
            for i in range(len(graph.specs))]


def model_stats(cfg: Cfg, height: int | None = None, width: int | None = None) -> ModelStats:
    """Layers, params, BFLOPs, ``.weights`` bytes and activation traffic of ``cfg`` at its (or the given)
    input size."""
    graph = build_graph(cfg, height, width)
    params = 0
    floats = 0
    for i, spec in enumerate(graph.specs):
        if isinstance(spec, Conv):
            kernel, per_channel, stored = conv_counts(graph, i)
            params += kernel + per_channel
            floats += kernel + stored
    bflops = sum(layer_flops(graph, i) for i in range(len(graph.specs))) / 1e9
    _, h, w = graph.input_shape
    activation_mb = round(sum(layer_activation_bytes(graph)) / 1e6, 3)
    return ModelStats(len(graph.specs), params, bflops, WEIGHTS_HEADER_BYTES + 4 * floats, (h, w), activation_mb)
