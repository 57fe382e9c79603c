"""``slimyolo serve <service>`` and ``slimyolo health``.

``serve`` starts one service (:data:`slimyolo.stages.kinds.SERVICES`) on the shared bootstrap
(:class:`slimyolo.rpc.server.Server`): it imports ``slimyolo.services.<service>``, adds that
module's own flags (``add_arguments(parser)``, optional) to the server flags, builds the
:class:`Server` from the environment and the flags (flags win), lets the module register its
services (``build(server, args)``) and serves until SIGTERM. Its arguments are parsed in a second
step, once the service is known, so only the chosen service is imported (the inference image has
neither PyTorch nor TensorFlow).

``health`` asks a server's ``grpc.health.v1`` once (the Docker HEALTHCHECK, or a script) and
exits 0 when the server, or the named service, is SERVING, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from slimyolo.errors import SlimYoloError
from slimyolo.helptext import plain_text
from slimyolo.security import add_client_arguments, client_security
from slimyolo.stages.kinds import SERVICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=f"run a service: {', '.join(SERVICES[:-1])} or {SERVICES[-1]}",
                       description="Run one gRPC service. slimyolo serve SERVICE --help lists its flags; each "
                                   "flag overrides its SLIMYOLO_* environment variable.")
    p.add_argument("service", choices=SERVICES, help="the service to run")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the service's flags (--port, --metrics-port, ...)")
    p.set_defaults(func=_serve)

    h = sub.add_parser("health", help="exit 0 when a server (or one of its services) reports SERVING")
    local = f"127.0.0.1:{os.environ.get('SLIMYOLO_GRPC_PORT') or 50051}"  # the port a server here listens on
    h.add_argument("--address", default=local, help=f"HOST:PORT of the server (default {local}: "
                                                    "127.0.0.1 and SLIMYOLO_GRPC_PORT, else 50051)")
    h.add_argument("--service", default="", help="a service name (default: the whole server); 'liveness' for "
                                                "liveness")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    add_client_arguments(h.add_argument_group("TLS (the gRPC port of a server with --tls-cert; a --health-port is "
                                              "plaintext)"))
    h.set_defaults(func=_health)


def service_parser(service: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """(the module of ``service``, the parser of ``slimyolo serve SERVICE``'s flags)."""
    from slimyolo.rpc.server import add_arguments

    try:
        module = importlib.import_module(f"slimyolo.services.{service}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("slimyolo.services", f"slimyolo.services.{service}"):
            raise  # a dependency of the service is missing: its own message says which
        raise SlimYoloError(f"serve {service}: this slimyolo installation has no slimyolo.services.{service} "
                            f"module ({exc}); reinstall the project (pip install .)") from None
    parser = argparse.ArgumentParser(prog=f"slimyolo serve {service}", description=plain_text(module.__doc__),
                                     allow_abbrev=False)
    add_arguments(parser)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return module, parser


def _serve(args: argparse.Namespace) -> int:
    from slimyolo.rpc.server import Server, ServerConfig

    module, parser = service_parser(args.service)
    options = parser.parse_args(args.options)
    server = Server(args.service, ServerConfig.from_args(options, os.environ))
    module.build(server, options)
    server.serve_forever()
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from slimyolo.rpc.client import connect

    security = client_security(args, os.environ)
    # health_service=None: the probe itself, which must reach a server that reports NOT_SERVING
    with connect(args.address, health_service=None, security=security) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.address}{' ' + args.service if args.service else ''}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1
