"""Stage specs ⇄ the Start... requests of the trainer, pruner and converter services.

A request carries its stage's spec as one ``google.protobuf.Struct`` (``spec``): the same
fields, names and values as the stage's YAML spec. :func:`spec_to_request` writes the spec's
``to_dict()``; :func:`spec_from_request` reads it back through :func:`~slimyolo.stages.specs.parse_spec`,
the parser of YAML specs, so a request is checked exactly like a YAML spec (a bad field is
INVALID_ARGUMENT naming the field, with the message ``slimyolo stage`` prints) and every legal
value, zero included, reaches the runner unchanged. Nothing here knows a stage's fields.
"""

from __future__ import annotations

from google.protobuf.message import Message

from slimyolo.errors import SlimYoloError
from slimyolo.rpc.gen.v1 import converter_pb2, pruner_pb2, trainer_pb2
from slimyolo.rpc.messages import dict_to_struct, struct_to_dict
from slimyolo.stages.specs import Spec, parse_spec

# The request message of each stage.
REQUESTS: dict[str, type[Message]] = {
    "train": trainer_pb2.StartTrainingRequest, "eval": trainer_pb2.StartEvaluationRequest,
    "prune": pruner_pb2.StartPruneRequest, "sweep": pruner_pb2.StartSweepRequest,
    "convert": converter_pb2.StartConversionRequest}


def spec_to_request(spec: Spec) -> Message:
    """The Start... request of the stage ``spec`` describes, carrying the spec."""
    return REQUESTS[spec.kind](spec=dict_to_struct(spec.to_dict()))


def spec_from_request(kind: str, request: Message) -> Spec:
    """The spec a Start... request carries, checked as a YAML spec of stage ``kind`` is."""
    if not request.HasField("spec"):
        raise SlimYoloError(f"{type(request).__name__}: 'spec' is required (the {kind} stage's spec: the fields "
                            f"of its YAML spec, as a Struct)")
    return parse_spec(kind, struct_to_dict(request.spec))
