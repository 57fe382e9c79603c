"""The metadata a converted IR carries, so that the inference side needs nothing but the IR.

``slimyolo convert`` attaches one JSON document to the IR's rt_info under
``["slimyolo", "metadata"]``; the engine, the detection service and ``bench`` read it back.
It describes the input (size, layout, element type, colour order, whether resizing and
normalisation happen inside the model, the letterbox convention), the output heads in output
order (stride, anchors, classes, scale_x_y, new_coords), the class names, and the digests of
the cfg and weights the IR was converted from.

Output convention: every IR output is a raw head, NCHW ``(N, A·(5+C), H/stride, W/stride)``,
exactly as the PyTorch model returns it, decoded by :mod:`slimyolo.infer.decode`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from slimyolo.darknet.graph import Head
from slimyolo.errors import SlimYoloError

RT_INFO_PATH = ["slimyolo", "metadata"]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class InputSpec:
    """How to feed the IR.

    ``layout="NCHW", element_type="f32", color="RGB"``: float RGB in [0, 1], letterboxed on the
    host to ``height``×``width`` (what the PyTorch model takes). ``layout="NHWC",
    element_type="u8", color="BGR"``: OpenCV frames as they are; the IR converts, scales to
    [0, 1] and (with ``resize_inside``) resizes inside, through OpenVINO's PrePostProcessor.
    """

    name: str
    height: int
    width: int
    layout: str = "NCHW"
    element_type: str = "f32"
    color: str = "RGB"
    normalized: bool = True  # the host passes [0, 1] floats (False: the IR divides by 255)
    resize_inside: bool = False
    pad_value: int = 114  # letterbox: the image is scaled to fit, centred, and padded with this grey


@dataclass(frozen=True)
class ModelMeta:
    names: tuple[str, ...]
    input: InputSpec
    heads: tuple[Head, ...]
    outputs: tuple[str, ...]  # IR output names, in the order of ``heads``
    precision: str = "fp32"
    model_name: str = ""
    model_version: str = ""
    source: dict[str, str] = field(default_factory=dict)  # cfg_sha256, weights_sha256, ...
    format_version: int = FORMAT_VERSION

    @property
    def classes(self) -> int:
        return self.heads[0].classes

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            doc: dict[str, Any] = json.loads(text)
            if doc.get("format_version") != FORMAT_VERSION:
                raise SlimYoloError(f"IR metadata format {doc.get('format_version')} is not supported "
                                    f"(this SlimYOLO reads format {FORMAT_VERSION}); convert the model again")
            heads = tuple(Head(h["layer"], h["stride"], tuple(tuple(a) for a in h["anchors"]), h["classes"],
                               h["scale_x_y"], h["new_coords"]) for h in doc["heads"])
            return cls(tuple(doc["names"]), InputSpec(**doc["input"]), heads, tuple(doc["outputs"]),
                       doc["precision"], doc["model_name"], doc["model_version"], dict(doc["source"]),
                       doc["format_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SlimYoloError(f"IR metadata is malformed ({exc}); convert the model again") from None


def attach_meta(ov_model: Any, meta: ModelMeta) -> None:
    """Store ``meta`` in an ``openvino.Model``'s rt_info (saved with the IR)."""
    ov_model.set_rt_info(meta.to_json(), RT_INFO_PATH)


def read_meta(ov_model: Any, source: str = "the IR") -> ModelMeta:
    """Read the metadata back from an ``openvino.Model`` (``Core.read_model``, not compiled)."""
    if not ov_model.has_rt_info(RT_INFO_PATH):
        raise SlimYoloError(f"{source} carries no SlimYOLO metadata (rt_info slimyolo/metadata); "
                            "convert the model with 'slimyolo convert'")
    return ModelMeta.from_json(ov_model.get_rt_info(RT_INFO_PATH).astype(str))
