from google.protobuf import struct_pb2 as _struct_pb2
from slimyolo.rpc.gen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SparsityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPARSITY_MODE_UNSPECIFIED: _ClassVar[SparsityMode]
    SPARSITY_MODE_EXCEPT_SHORTCUT: _ClassVar[SparsityMode]
    SPARSITY_MODE_ALL: _ClassVar[SparsityMode]
SPARSITY_MODE_UNSPECIFIED: SparsityMode
SPARSITY_MODE_EXCEPT_SHORTCUT: SparsityMode
SPARSITY_MODE_ALL: SparsityMode

class Sparsity(_message.Message):
    __slots__ = ("s", "mode")
    S_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    s: float
    mode: SparsityMode
    def __init__(self, s: _Optional[float] = ..., mode: _Optional[_Union[SparsityMode, str]] = ...) -> None: ...

class Distillation(_message.Message):
    __slots__ = ("teacher_cfg", "teacher_weights", "weight")
    TEACHER_CFG_FIELD_NUMBER: _ClassVar[int]
    TEACHER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    teacher_cfg: _common_pb2.ArtifactRef
    teacher_weights: _common_pb2.ArtifactRef
    weight: float
    def __init__(self, teacher_cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., teacher_weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("cfg", "weights", "data", "epochs", "batch_size", "img_size", "sparsity", "distillation", "warmup_epochs", "learning_rate", "seed", "config", "name")
    CFG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    DISTILLATION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    cfg: _common_pb2.ArtifactRef
    weights: _common_pb2.ArtifactRef
    data: _common_pb2.DatasetRef
    epochs: int
    batch_size: int
    img_size: _common_pb2.ImageSize
    sparsity: Sparsity
    distillation: Distillation
    warmup_epochs: int
    learning_rate: float
    seed: int
    config: _struct_pb2.Struct
    name: str
    def __init__(self, cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., img_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., sparsity: _Optional[_Union[Sparsity, _Mapping]] = ..., distillation: _Optional[_Union[Distillation, _Mapping]] = ..., warmup_epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class StartTrainingResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class StartEvaluationRequest(_message.Message):
    __slots__ = ("cfg", "weights", "data", "img_size", "batch_size", "conf_threshold", "nms_iou_threshold")
    CFG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONF_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NMS_IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    cfg: _common_pb2.ArtifactRef
    weights: _common_pb2.ArtifactRef
    data: _common_pb2.DatasetRef
    img_size: _common_pb2.ImageSize
    batch_size: int
    conf_threshold: float
    nms_iou_threshold: float
    def __init__(self, cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., img_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., batch_size: _Optional[int] = ..., conf_threshold: _Optional[float] = ..., nms_iou_threshold: _Optional[float] = ...) -> None: ...

class StartEvaluationResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
