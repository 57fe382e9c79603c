"""Conversions between protobuf messages and the core library's plain values.

Servicers use these to stay thin: an ``ArtifactRef`` becomes a :class:`slimyolo.store.Artifact`,
a ``google.protobuf.Struct`` a dict, and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from slimyolo import vocab
from slimyolo.errors import SlimYoloError
from slimyolo.rpc.gen.v1 import common_pb2
from slimyolo.store import Artifact


def artifact_to_proto(artifact: Artifact) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=artifact.uri, sha256=artifact.sha256, size_bytes=artifact.size_bytes)


def artifact_from_proto(ref: common_pb2.ArtifactRef, field: str) -> Artifact:
    """The Artifact a request field names; a SlimYoloError naming ``field`` when it is unset."""
    if not ref.uri:
        raise SlimYoloError(f"{field}: an artifact (uri, sha256, size_bytes) is required")
    return Artifact(ref.uri, ref.sha256, ref.size_bytes)


def precision_to_proto(precision: str) -> int:
    """The ``slimyolo.v1.Precision`` of an IR precision (vocab.IR_PRECISIONS); unknown: UNSPECIFIED."""
    name = vocab.IR_PRECISION_ENUM.get(precision)
    return common_pb2.Precision.Value(name) if name else common_pb2.PRECISION_UNSPECIFIED


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict; whole numbers come back as int (a Struct stores every number as a double; the
    stage specs refuse integers of 2**53 and more, which a double cannot hold exactly).

    Read value by value rather than through JSON: a NaN or an infinity (which JSON cannot spell)
    comes back as a float, for the caller to refuse naming its field, instead of failing here.
    """
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    return None if kind in (None, "null_value") else getattr(value, kind)
