"""The registry of stage kinds (slimyolo/stages/kinds.py) against the protos, the servicers, the client and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from slimyolo.rpc.cli import service_parser
from slimyolo.rpc.stages import start_messages
from slimyolo.stages import runners
from slimyolo.stages.kinds import KINDS, SERVICES, STAGE_SERVICES, kinds_of, parse_spec


def test_every_stage_kind_has_a_start_method_of_its_service_and_its_runner():
    pool = descriptor_pool.Default()
    for name, kind in KINDS.items():
        assert kind.name == name == kind.spec.kind
        assert kind.runner is getattr(runners, f"run_{name}")
        request, response = start_messages(kind)
        method = pool.FindServiceByName(kind.grpc_service).methods_by_name[kind.start]
        assert (request.__name__, response.__name__) == (f"{kind.start}Request", f"{kind.start}Response"), name
        assert method.input_type.full_name == request.DESCRIPTOR.full_name, name
        assert not method.client_streaming and not method.server_streaming, name
        assert "spec" in request.DESCRIPTOR.fields_by_name and "job" in response.DESCRIPTOR.fields_by_name, name


def test_the_wire_names_stay_those_clients_call():
    """Renaming one breaks every deployed client: the table keeps the protos' names."""
    wire = {name: (k.service, k.grpc_service, k.start) for name, k in KINDS.items()}
    assert wire == {"train": ("trainer", "slimyolo.v1.Trainer", "StartTraining"),
                    "eval": ("trainer", "slimyolo.v1.Trainer", "StartEvaluation"),
                    "prune": ("pruner", "slimyolo.v1.Pruner", "StartPrune"),
                    "sweep": ("pruner", "slimyolo.v1.Pruner", "StartSweep"),
                    "convert": ("converter", "slimyolo.v1.Converter", "StartConversion")}
    assert STAGE_SERVICES == ("trainer", "pruner", "converter")
    assert SERVICES == ("trainer", "pruner", "converter", "inference")


def test_every_service_is_one_to_serve_and_the_pipeline_and_the_images_name_the_same(monkeypatch):
    import importlib.util
    import sys

    from slimyolo.pipeline import config

    spec = importlib.util.spec_from_file_location("deploy_images", Path(__file__).parents[1] / "deploy" / "images.py")
    images = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, images)  # its dataclasses look their module up there
    spec.loader.exec_module(images)
    assert config.SERVICES is SERVICES and images.SERVICES is SERVICES
    assert set(images.COMPOSE_PORTS) == set(images.IMAGE_OF) == set(SERVICES)
    for service in SERVICES:
        service_parser(service)  # slimyolo serve SERVICE has a module for it


@pytest.mark.parametrize("service", STAGE_SERVICES)
def test_each_stage_service_registers_a_handler_for_each_of_its_kinds(service, tmp_path, monkeypatch):
    """The one servicer, built from the table, on a real server: every Start... method of the service answers."""
    import grpc

    from slimyolo.rpc.client import connect
    from slimyolo.rpc.server import Server, ServerConfig
    from slimyolo.rpc.stages import spec_to_request

    monkeypatch.setenv("SLIMYOLO_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SLIMYOLO_WORK_DIR", str(tmp_path / "work"))
    module, _ = service_parser(service)
    server = Server(service, ServerConfig(bind="127.0.0.1", port=0, metrics_port=0))
    module.build(server, argparse.Namespace(model_repository=None))
    server.start()
    try:
        with connect(f"127.0.0.1:{server.port}") as channel:
            for kind in kinds_of(service):
                _, response = start_messages(kind)
                call = channel.unary_unary(f"/{kind.grpc_service}/{kind.start}",
                                           request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response.FromString)
                request = spec_to_request(_minimal_spec(kind.name))
                request.ClearField("spec")  # refused before any work: the handler is there and reads the spec
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kind.name
                assert f"{kind.start}Request: 'spec' is required" in err.value.details(), kind.name
    finally:
        server.stop(0)


def _minimal_spec(kind: str):
    docs = {"train": {"cfg": "a/b.cfg", "data": "d/s", "out": "runs/t"},
            "eval": {"weights": "a/b.pt", "data": "d/s"},
            "prune": {"weights": "a/b.pt", "out": "runs/p", "global_percent": 0.5},
            "sweep": {"weights": "a/b.pt", "data": "d/s", "out": "runs/s"},
            "convert": {"weights": "a/b.pt", "name": "m"}}
    return parse_spec(kind, docs[kind])


def test_an_unknown_service_is_named_in_the_error():
    with pytest.raises(KeyError, match="trainer, pruner, converter"):
        kinds_of("inference")


def test_a_spec_class_carries_its_kind_and_schema_version():
    for kind in KINDS.values():
        assert isinstance(kind.spec.schema, int) and kind.spec.schema >= 1
        assert dataclasses.is_dataclass(kind.spec)
