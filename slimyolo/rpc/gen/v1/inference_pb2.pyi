from slimyolo.rpc.gen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_UNLOADING: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_UNLOADING: ModelState
MODEL_STATE_FAILED: ModelState

class RawImage(_message.Message):
    __slots__ = ("height", "width", "bgr")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    BGR_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    bgr: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., bgr: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class DetectionOptions(_message.Message):
    __slots__ = ("conf_threshold", "iou_threshold", "max_detections")
    CONF_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    conf_threshold: float
    iou_threshold: float
    max_detections: int
    def __init__(self, conf_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "class_name")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    class_id: int
    class_name: str
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "image", "options")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    image: Image
    options: DetectionOptions
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[DetectionOptions, _Mapping]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "detections", "image_width", "image_height")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    image_width: int
    image_height: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class DetectStreamRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "stream_id", "frame_id", "frame", "options")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    stream_id: str
    frame_id: int
    frame: Image
    options: DetectionOptions
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., stream_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., frame: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[DetectionOptions, _Mapping]] = ...) -> None: ...

class DetectStreamResponse(_message.Message):
    __slots__ = ("stream_id", "frame_id", "detections", "model_version", "mosaic_streams")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_STREAMS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_id: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    model_version: str
    mosaic_streams: int
    def __init__(self, stream_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., model_version: _Optional[str] = ..., mosaic_streams: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "state", "precision", "input_size", "class_names", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: ModelState
    precision: _common_pb2.Precision
    input_size: _common_pb2.ImageSize
    class_names: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., input_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, unloaded: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("include_repository",)
    INCLUDE_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    include_repository: bool
    def __init__(self, include_repository: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class BenchmarkModelRequest(_message.Message):
    __slots__ = ("name", "version", "seconds", "mosaic")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    seconds: float
    mosaic: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., seconds: _Optional[float] = ..., mosaic: _Optional[int] = ...) -> None: ...

class CpuInfo(_message.Message):
    __slots__ = ("model", "cores", "isa")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    ISA_FIELD_NUMBER: _ClassVar[int]
    model: str
    cores: int
    isa: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., cores: _Optional[int] = ..., isa: _Optional[_Iterable[str]] = ...) -> None: ...

class LatencyPercentiles(_message.Message):
    __slots__ = ("p50", "p90", "p99")
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    p50: float
    p90: float
    p99: float
    def __init__(self, p50: _Optional[float] = ..., p90: _Optional[float] = ..., p99: _Optional[float] = ...) -> None: ...

class BenchmarkModelResponse(_message.Message):
    __slots__ = ("name", "version", "fps", "latency_ms", "inferences", "seconds", "execution_precision", "precision", "input_size", "device", "requests", "cpu", "host", "concurrent_frames", "hint", "mosaic")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    MOSAIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    fps: float
    latency_ms: LatencyPercentiles
    inferences: int
    seconds: float
    execution_precision: str
    precision: _common_pb2.Precision
    input_size: _common_pb2.ImageSize
    device: str
    requests: int
    cpu: CpuInfo
    host: str
    concurrent_frames: int
    hint: str
    mosaic: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., fps: _Optional[float] = ..., latency_ms: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., inferences: _Optional[int] = ..., seconds: _Optional[float] = ..., execution_precision: _Optional[str] = ..., precision: _Optional[_Union[_common_pb2.Precision, str]] = ..., input_size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., device: _Optional[str] = ..., requests: _Optional[int] = ..., cpu: _Optional[_Union[CpuInfo, _Mapping]] = ..., host: _Optional[str] = ..., concurrent_frames: _Optional[int] = ..., hint: _Optional[str] = ..., mosaic: _Optional[int] = ...) -> None: ...
