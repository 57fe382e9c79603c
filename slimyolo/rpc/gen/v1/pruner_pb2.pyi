from google.protobuf import struct_pb2 as _struct_pb2
from slimyolo.rpc.gen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PruneMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNE_METHOD_UNSPECIFIED: _ClassVar[PruneMethod]
    PRUNE_METHOD_CHANNEL: _ClassVar[PruneMethod]
    PRUNE_METHOD_LAYER: _ClassVar[PruneMethod]
    PRUNE_METHOD_CHANNEL_AND_LAYER: _ClassVar[PruneMethod]
PRUNE_METHOD_UNSPECIFIED: PruneMethod
PRUNE_METHOD_CHANNEL: PruneMethod
PRUNE_METHOD_LAYER: PruneMethod
PRUNE_METHOD_CHANNEL_AND_LAYER: PruneMethod

class ChannelPruning(_message.Message):
    __slots__ = ("global_percent", "layer_keep", "round_to")
    GLOBAL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_KEEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_TO_FIELD_NUMBER: _ClassVar[int]
    global_percent: float
    layer_keep: float
    round_to: int
    def __init__(self, global_percent: _Optional[float] = ..., layer_keep: _Optional[float] = ..., round_to: _Optional[int] = ...) -> None: ...

class LayerPruning(_message.Message):
    __slots__ = ("shortcuts",)
    SHORTCUTS_FIELD_NUMBER: _ClassVar[int]
    shortcuts: int
    def __init__(self, shortcuts: _Optional[int] = ...) -> None: ...

class StartPruneRequest(_message.Message):
    __slots__ = ("cfg", "weights", "method", "channel", "layer", "data", "img_size", "config", "name")
    CFG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    cfg: _common_pb2.ArtifactRef
    weights: _common_pb2.ArtifactRef
    method: PruneMethod
    channel: ChannelPruning
    layer: LayerPruning
    data: _common_pb2.DatasetRef
    img_size: _common_pb2.ImageSize
    config: _struct_pb2.Struct
    name: str
    def __init__(self, cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., method: _Optional[_Union[PruneMethod, str]] = ..., channel: _Optional[_Union[ChannelPruning, _Mapping]] = ..., layer: _Optional[_Union[LayerPruning, _Mapping]] = ..., data: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., img_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class StartPruneResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class StartSweepRequest(_message.Message):
    __slots__ = ("cfg", "weights", "data", "method", "global_percents", "shortcuts", "layer_keep", "round_to", "max_map_drop", "img_size", "batch_size", "config", "name")
    CFG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_PERCENTS_FIELD_NUMBER: _ClassVar[int]
    SHORTCUTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_KEEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_TO_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_DROP_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    cfg: _common_pb2.ArtifactRef
    weights: _common_pb2.ArtifactRef
    data: _common_pb2.DatasetRef
    method: PruneMethod
    global_percents: _containers.RepeatedScalarFieldContainer[float]
    shortcuts: _containers.RepeatedScalarFieldContainer[int]
    layer_keep: float
    round_to: int
    max_map_drop: float
    img_size: _common_pb2.ImageSize
    batch_size: int
    config: _struct_pb2.Struct
    name: str
    def __init__(self, cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., method: _Optional[_Union[PruneMethod, str]] = ..., global_percents: _Optional[_Iterable[float]] = ..., shortcuts: _Optional[_Iterable[int]] = ..., layer_keep: _Optional[float] = ..., round_to: _Optional[int] = ..., max_map_drop: _Optional[float] = ..., img_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., batch_size: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class StartSweepResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
