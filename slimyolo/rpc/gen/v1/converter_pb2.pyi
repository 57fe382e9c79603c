from google.protobuf import struct_pb2 as _struct_pb2
from slimyolo.rpc.gen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConversionPath(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONVERSION_PATH_UNSPECIFIED: _ClassVar[ConversionPath]
    CONVERSION_PATH_TF: _ClassVar[ConversionPath]
    CONVERSION_PATH_TORCH: _ClassVar[ConversionPath]
CONVERSION_PATH_UNSPECIFIED: ConversionPath
CONVERSION_PATH_TF: ConversionPath
CONVERSION_PATH_TORCH: ConversionPath

class StartConversionRequest(_message.Message):
    __slots__ = ("cfg", "weights", "via", "precision", "calibration", "calibration_images", "name", "version", "img_size", "class_names", "model_repository", "config")
    CFG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    cfg: _common_pb2.ArtifactRef
    weights: _common_pb2.ArtifactRef
    via: ConversionPath
    precision: _common_pb2.Precision
    calibration: _common_pb2.DatasetRef
    calibration_images: int
    name: str
    version: str
    img_size: _common_pb2.ImageSize
    class_names: _containers.RepeatedScalarFieldContainer[str]
    model_repository: str
    config: _struct_pb2.Struct
    def __init__(self, cfg: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., via: _Optional[_Union[ConversionPath, str]] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., calibration: _Optional[_Union[_common_pb2.DatasetRef, _Mapping]] = ..., calibration_images: _Optional[int] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., img_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., model_repository: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StartConversionResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...
