"""Channel dependency groups: which output channels of which convolutions must go together.

This is the "dependency graph" layer of the pruner (in VainF/Torch-Pruning's terms), built on
the typed layer graph of :mod:`slimyolo.darknet.graph` rather than on the cfg text. Every output
channel of every convolution is an *atom*; each layer's output is described as the list of
atoms its channels come from:

- a convolution creates new atoms;
- a shortcut adds two tensors channel by channel, so channel k of both inputs is one channel:
  their atoms are merged (union-find), which is how masks of a whole residual chain are OR-ed;
- a route concatenates its sources' atom lists (with ``groups``, it takes one chunk of each);
- upsample and maxpool change neither channels nor their meaning, so they pass atoms through.

A *class* is a set of merged atoms: the unit that is kept or removed. Some classes are
*fixed* (always kept): channels read by a ``[yolo]`` layer (their count is the head format),
outputs of convolutions without BatchNorm (no γ to judge them by) and everything touching a
grouped convolution (its input and output channels are coupled group by group). A route with
``groups`` splits each source into equal chunks, so the number of channels kept in each chunk
must be equal: that is recorded as a chunk constraint rather than a fixed class, so
yolov4-tiny's split layers can still be pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimyolo.darknet.graph import Conv, Graph, MaxPool, Route, Shortcut, Upsample, Yolo


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class ChannelGroups:
    """The channel classes of a graph and the constraints on keeping them.

    ``layer_classes[i]`` gives, for each output channel of layer ``i``, the class it belongs to;
    ``conv_classes[i]`` is the same for convolution ``i``'s own outputs. A shortcut output's
    class array equals its inputs' (they were merged), a route's is their concatenation.
    """

    graph: Graph
    n_classes: int
    layer_classes: tuple[np.ndarray, ...]
    conv_classes: dict[int, np.ndarray]
    fixed: np.ndarray  # bool per class: must be kept
    chunks: tuple[tuple[np.ndarray, ...], ...]  # each: the class arrays of chunks that keep equal counts

    def prunable_convs(self) -> list[int]:
        """Convolutions with BatchNorm whose channels are not all fixed, in cfg order."""
        return [i for i, cls in self.conv_classes.items()
                if _has_bn(self.graph, i) and not self.fixed[cls].all()]


def _has_bn(graph: Graph, i: int) -> bool:
    spec = graph.specs[i]
    return isinstance(spec, Conv) and spec.batch_normalize


def build_groups(graph: Graph) -> ChannelGroups:
    """Trace every layer's channels back to convolution channels and merge what is tied."""
    n_atoms = sum(s.filters for s in graph.specs if isinstance(s, Conv))
    uf = _UnionFind(n_atoms)
    fixed_atoms: set[int] = set()
    chunk_atoms: list[list[np.ndarray]] = []
    atoms: list[np.ndarray] = []
    conv_atoms: dict[int, np.ndarray] = {}
    empty = np.zeros(0, dtype=np.int64)
    next_id = 0

    def layer_atoms(j: int) -> np.ndarray:
        return empty if j < 0 else atoms[j]  # j = -1: the image, which holds no prunable channel

    for i, spec in enumerate(graph.specs):
        prev = layer_atoms(graph.inputs[i][0])
        if isinstance(spec, Conv):
            out = np.arange(next_id, next_id + spec.filters, dtype=np.int64)
            next_id += spec.filters
            conv_atoms[i] = out
            if not spec.batch_normalize or spec.groups > 1:
                fixed_atoms.update(out.tolist())
            if spec.groups > 1:
                fixed_atoms.update(prev.tolist())
        elif isinstance(spec, Shortcut):
            other = layer_atoms(spec.source)
            for a, b in zip(prev.tolist(), other.tolist(), strict=True):
                uf.union(a, b)
            out = prev
        elif isinstance(spec, Route):
            parts = []
            for j in spec.sources:
                src = layer_atoms(j)
                if spec.groups > 1:
                    chunk = len(src) // spec.groups
                    pieces = [src[g * chunk:(g + 1) * chunk] for g in range(spec.groups)]
                    chunk_atoms.append(pieces)
                    src = pieces[spec.group_id]
                parts.append(src)
            out = np.concatenate(parts)
        elif isinstance(spec, Upsample | MaxPool):
            out = prev
        else:
            assert isinstance(spec, Yolo)
            fixed_atoms.update(prev.tolist())
            out = prev
        atoms.append(out)

    roots = np.array([uf.find(a) for a in range(n_atoms)], dtype=np.int64)
    _, class_of = np.unique(roots, return_inverse=True)
    class_of = class_of.astype(np.int64)
    n_classes = int(class_of.max()) + 1 if n_atoms else 0
    fixed = np.zeros(n_classes, dtype=bool)
    fixed[class_of[sorted(fixed_atoms)]] = True
    return ChannelGroups(
        graph=graph,
        n_classes=n_classes,
        layer_classes=tuple(class_of[a] for a in atoms),
        conv_classes={i: class_of[a] for i, a in conv_atoms.items()},
        fixed=fixed,
        chunks=tuple(tuple(class_of[p] for p in pieces) for pieces in chunk_atoms),
    )


def residual_units(graph: Graph) -> list[int]:
    """Shortcut indices of the residual units that layer pruning may remove, in cfg order.

    A unit is ``conv → conv → shortcut(from=-3)`` whose two convolutions are read by nothing
    but the unit itself, with a linear shortcut and a BN convolution before it (its γ ranks the
    unit). Removing it replaces its output by its input — the same shape, since the shortcut
    adds them — so it never breaks the shapes of what follows; anything else (a route reading
    a convolution inside the unit, a non-linear shortcut, whose removal would also drop its
    activation) is not a candidate.
    """
    users = graph.consumers()
    units = []
    for i, spec in enumerate(graph.specs):
        if not (isinstance(spec, Shortcut) and spec.activation == "linear" and spec.source == i - 3 >= 0):
            continue
        a, b = graph.specs[i - 2], graph.specs[i - 1]
        if not (isinstance(a, Conv) and isinstance(b, Conv) and b.batch_normalize):
            continue
        if users[i - 2] != [i - 1] or users[i - 1] != [i] or graph.shapes[i - 3] != graph.shapes[i]:
            continue
        units.append(i)
    return units
