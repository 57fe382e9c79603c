"""The stage → service routing table (slimyolo/stages/routing.py) against the protos, the servicers and the CLI."""

from __future__ import annotations

import importlib

import pytest
from google.protobuf import descriptor_pool

from slimyolo.rpc.cli import STAGES
from slimyolo.rpc.gen.v1 import converter_pb2, pruner_pb2, trainer_pb2  # noqa: F401  (register the services)
from slimyolo.stages.routing import ROUTES, grpc_service, stage_services
from slimyolo.stages.specs import SPECS


def test_every_stage_kind_has_a_route_to_a_start_method_of_its_service():
    assert set(ROUTES) == set(SPECS)
    pool = descriptor_pool.Default()
    for kind, route in ROUTES.items():
        service = pool.FindServiceByName(route.grpc_service)
        method = service.methods_by_name[route.method]
        assert method.input_type.name == f"{route.method}Request", kind
        assert method.output_type.name == f"{route.method}Response", kind
        assert not method.client_streaming and not method.server_streaming, kind
    assert stage_services() == tuple(s for s in STAGES if s != "inference")


@pytest.mark.parametrize("service", ["trainer", "pruner", "converter"])
def test_each_servicer_registers_under_the_table_and_implements_its_methods(service):
    module = importlib.import_module(f"slimyolo.services.{service}")
    assert grpc_service(service) == module.SERVICE
    (servicer,) = [v for k, v in vars(module).items() if k.endswith("Servicer") and isinstance(v, type)
                   and v.__module__ == module.__name__]
    for route in ROUTES.values():
        if route.service == service:
            base = getattr(servicer.__mro__[1], route.method)  # the generated stub answers UNIMPLEMENTED
            assert getattr(servicer, route.method) is not base, route.method


def test_an_unknown_service_is_named_in_the_error():
    with pytest.raises(KeyError, match="trainer, pruner, converter"):
        grpc_service("inference")
