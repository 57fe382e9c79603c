"""Tensors of the Open Inference Protocol (KServe v2): datatypes, shapes, typed and raw contents.

A model's inputs and outputs are those of its IR: ``images`` (f32 NCHW, or u8 NHWC for a
``--ppp`` IR) and one raw head per ``[yolo]`` layer, with ``-1`` for dynamic dimensions (the
batch). Request tensors arrive either as typed ``contents`` (the field that matches the
datatype, e.g. ``fp32_contents`` for FP32) or as ``raw_input_contents`` (one little-endian,
row-major byte string per input): all inputs one way or all the other, as the protocol says.
Outputs go back as ``raw_output_contents``. Every mismatch is a SlimYoloError naming the field,
which the service answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimyolo.errors import SlimYoloError

# datatype → little-endian NumPy dtype. BF16 and BYTES have no NumPy equivalent and no SlimYOLO
# model takes them: a request using them is refused as a datatype mismatch.
DTYPES: dict[str, np.dtype] = {name: np.dtype(t).newbyteorder("<") for name, t in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
    ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
    ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64))}
# The InferTensorContents field that carries each datatype (FP16 and BF16 travel only raw).
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def datatype_of(dtype: np.dtype | type) -> str:
    """The protocol's datatype name of a NumPy dtype."""
    kind = np.dtype(dtype).newbyteorder("<")
    for name, candidate in DTYPES.items():
        if candidate == kind:
            return name
    raise SlimYoloError(f"element type {np.dtype(dtype)} has no Open Inference Protocol datatype")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a model: name, datatype, shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def signature(compiled: Any, output_names: Sequence[str]) -> Signature:
    """The tensors of an ``openvino.CompiledModel``, outputs in the order of ``output_names``."""
    def spec(port: Any) -> TensorSpec:
        shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        return TensorSpec(port.get_any_name(), datatype_of(port.get_element_type().to_dtype()), shape)

    outputs = {o.get_any_name(): o for o in compiled.outputs}
    return Signature(tuple(spec(i) for i in compiled.inputs), tuple(spec(outputs[n]) for n in output_names))


@dataclass(frozen=True)
class InputTensor:
    """One input of a request: ``contents`` maps each non-empty InferTensorContents field to its values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    contents: Mapping[str, Sequence[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes  # little-endian, row-major


def _check_shape(where: str, tensor: InputTensor, spec: TensorSpec) -> None:
    if any(d < 1 for d in tensor.shape):
        raise SlimYoloError(f"{where}.shape: {list(tensor.shape)} has a dimension below 1")
    fits = len(tensor.shape) == len(spec.shape) and all(s in (-1, d) for d, s in zip(tensor.shape, spec.shape,
                                                                                      strict=True))
    if not fits:
        raise SlimYoloError(f"{where}.shape: {list(tensor.shape)} does not fit input {spec.name} of shape "
                            f"{list(spec.shape)} (-1: any size)")


def _from_contents(where: str, tensor: InputTensor, dtype: np.dtype, count: int) -> np.ndarray:
    expected = CONTENTS_FIELD.get(tensor.datatype)
    others = sorted(set(tensor.contents) - {expected})
    if others:
        raise SlimYoloError(f"{where}.contents.{others[0]}: a {tensor.datatype} tensor carries its values in "
                            + (f"contents.{expected}" if expected else "raw_input_contents only"))
    values = tensor.contents.get(expected, ()) if expected else ()
    if len(values) != count:
        raise SlimYoloError(f"{where}.contents.{expected}: {len(values)} values, shape {list(tensor.shape)} needs "
                            f"{count}")
    wide = np.asarray(values)
    array = wide.astype(dtype)
    if dtype.kind in "iu" and not np.array_equal(array, wide):
        info = np.iinfo(dtype)
        raise SlimYoloError(f"{where}.contents.{expected}: values outside the {tensor.datatype} range "
                            f"[{info.min}, {info.max}]")
    return array.reshape(tensor.shape)


def decode_inputs(inputs: Sequence[TensorSpec], tensors: Sequence[InputTensor],
                  raw_contents: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The request's tensors as arrays, by input name, checked against the model's ``inputs``."""
    wanted = {spec.name: spec for spec in inputs}
    if raw_contents and len(raw_contents) != len(tensors):
        raise SlimYoloError(f"raw_input_contents: {len(raw_contents)} entries for {len(tensors)} inputs "
                            "(one per input, in the order of inputs)")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        where = f"inputs[{i}]"
        spec = wanted.get(tensor.name)
        if spec is None:
            raise SlimYoloError(f"{where}.name: {tensor.name!r} is not an input of the model "
                                f"({', '.join(wanted)})")
        if tensor.name in arrays:
            raise SlimYoloError(f"{where}.name: input {tensor.name!r} is given twice")
        if tensor.datatype != spec.datatype:
            raise SlimYoloError(f"{where}.datatype: {tensor.datatype!r}, but input {spec.name} is {spec.datatype}")
        _check_shape(where, tensor, spec)
        dtype, count = DTYPES[spec.datatype], math.prod(tensor.shape)
        if raw_contents:
            if tensor.contents:
                raise SlimYoloError(f"{where}.contents: set together with raw_input_contents; send every input "
                                    "one way or the other")
            raw = raw_contents[i]
            if len(raw) != count * dtype.itemsize:
                raise SlimYoloError(f"raw_input_contents[{i}]: {len(raw)} bytes, shape {list(tensor.shape)} of "
                                    f"{spec.datatype} needs {count * dtype.itemsize}")
            arrays[tensor.name] = np.frombuffer(raw, dtype).reshape(tensor.shape)
        else:
            arrays[tensor.name] = _from_contents(where, tensor, dtype, count)
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise SlimYoloError(f"inputs: missing {', '.join(missing)} (the model takes {', '.join(wanted)})")
    return arrays


def select_outputs(outputs: Sequence[TensorSpec], requested: Sequence[str]) -> list[int]:
    """Indices of the outputs a request asks for (all of them when it names none)."""
    names = [spec.name for spec in outputs]
    chosen: list[int] = []
    for i, name in enumerate(requested):
        if name not in names:
            raise SlimYoloError(f"outputs[{i}].name: {name!r} is not an output of the model ({', '.join(names)})")
        chosen.append(names.index(name))
    return chosen or list(range(len(names)))


def encode_output(name: str, array: np.ndarray) -> OutputTensor:
    """An output array as the protocol sends it: datatype, shape and little-endian row-major bytes."""
    datatype = datatype_of(array.dtype)
    data = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
    return OutputTensor(name, datatype, tuple(int(d) for d in array.shape), data)
