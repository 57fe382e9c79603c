"""Conversions between protobuf messages and the core library's plain values.

Servicers use these to stay thin: an ``ArtifactRef`` becomes a :class:`slimyolo.store.Artifact`,
a ``google.protobuf.Struct`` a dict, and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

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


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict; whole numbers come back as int (a Struct stores every number as a double)."""
    return _ints(json_format.MessageToDict(struct))


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value
