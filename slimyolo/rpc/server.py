"""The one server bootstrap of the four services (trainer, pruner, converter, inference).

Every service gets the same surroundings from :class:`Server`, so a servicer is only the
translation between its protobuf messages and the core library:

- ``grpc.health.v1.Health``: each service reports NOT_SERVING until its servicer calls
  :meth:`Server.set_serving` (a model is loaded, a cache is warm); the overall status ``""`` is
  SERVING when all of them are, and the service name ``liveness`` is SERVING as long as the
  process answers. Kubernetes' native gRPC probes check ``""`` for readiness and ``liveness``
  for liveness.
- server reflection (``grpc.reflection.v1alpha``), so grpcurl and friends need no proto files;
- Prometheus ``/metrics`` on its own HTTP port, from a registry of the server's own (several
  servers can share a test process): ``grpc_server_started_total``, ``grpc_server_handled_total``
  (by ``grpc_code``), ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total`` and the
  ``grpc_server_handling_seconds`` histogram, labelled by ``grpc_type``, ``grpc_service`` and
  ``grpc_method`` as go-grpc-prometheus names them, plus ``process_*`` and the servicer's own.
  A stream that ends without error is counted when grpc ends the call (OK, or CANCELLED if the
  client cancelled: grpc can present a cancel as the normal end of the requests); a servicer that
  counts its streams learns their final code from :func:`on_call_end`;
- an interceptor that turns exceptions into status codes (:func:`slimyolo.rpc.status.status_of`):
  SlimYoloError → INVALID_ARGUMENT, NotFoundError → NOT_FOUND, UnavailableError → UNAVAILABLE,
  Cancelled → CANCELLED, anything else → INTERNAL with the traceback in the log;
- limits on message sizes, both ways;
- a maximum connection age (with a grace for the calls on it), off by default: clients are made
  to reconnect, re-resolve their target and so spread over replicas added since they connected;
- every unary answer names the replica that served it: trailing metadata ``slimyolo-server``
  = ``hostname:port`` (how ``slimyolo bench`` counts calls per replica behind one target);
- SIGTERM (and SIGINT) → graceful drain: health turns NOT_SERVING (clients that watch it stop
  sending here), calls are still served for the drain delay (while Kubernetes endpoints forget the
  pod), then new calls are refused (GOAWAY: clients retry them elsewhere), calls in flight get the
  grace period to finish, running jobs are handed over to another replica at their next checkpoint
  (:meth:`slimyolo.rpc.jobs.JobManager.shutdown`), and the process exits.

Configuration comes from environment variables, and command-line flags override them
(:func:`add_arguments`, :meth:`ServerConfig.from_env`)::

    SLIMYOLO_BIND_ADDRESS            0.0.0.0   address both ports listen on
    SLIMYOLO_GRPC_PORT               50051     gRPC port (0: any free port)
    SLIMYOLO_METRICS_PORT            8000      Prometheus /metrics port (0: any free port)
    SLIMYOLO_GRPC_MAX_MESSAGE_BYTES  67108864  largest message received or sent
    SLIMYOLO_GRPC_WORKERS            64        threads serving calls (each stream holds one)
    SLIMYOLO_JOB_WORKERS             1         jobs running at once (more wait, QUEUED)
    SLIMYOLO_SHUTDOWN_GRACE_SECONDS  20        drain time after SIGTERM
    SLIMYOLO_DRAIN_DELAY_SECONDS     0         NOT_SERVING but still serving for this long before GOAWAY
    SLIMYOLO_GRPC_MAX_CONNECTION_AGE_SECONDS        0   close connections older (GOAWAY; 0: never)
    SLIMYOLO_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS  30  time left to the calls on a closed connection
    SLIMYOLO_TLS_CERT / SLIMYOLO_TLS_KEY  (none)  the server's certificate and key, PEM: TLS on the gRPC port
    SLIMYOLO_TLS_CLIENT_CA           (none)    CA of the clients' certificates: mutual TLS (needs the above)
    SLIMYOLO_AUTH_TOKENS             (none)    tokens file: every call needs a token or a mapped client
                                               certificate, and a role (slimyolo.security; needs TLS)
    SLIMYOLO_HEALTH_PORT             -1        a plaintext port serving grpc.health.v1 alone, for the
                                               kubelet's probes (-1: none; 0: any free port)

Without tokens and client certificates a server is open to whoever reaches its port (local use, a
private compose network) and says so in one warning line at start. See :mod:`slimyolo.rpc.auth`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from slimyolo.envconfig import EnvConfig
from slimyolo.errors import Cancelled, SlimYoloError
from slimyolo.rpc import MAX_MESSAGE_BYTES
from slimyolo.rpc.auth import AuthInterceptor, CertificateFiles
from slimyolo.rpc.status import status_of
from slimyolo.security import TokensFile

log = logging.getLogger(__name__)

LIVENESS = "liveness"
SERVED_BY = "slimyolo-server"  # trailing metadata of unary answers: hostname:port of the replica

_ENV = {
    "bind": "SLIMYOLO_BIND_ADDRESS",
    "port": "SLIMYOLO_GRPC_PORT",
    "metrics_port": "SLIMYOLO_METRICS_PORT",
    "max_message_bytes": "SLIMYOLO_GRPC_MAX_MESSAGE_BYTES",
    "workers": "SLIMYOLO_GRPC_WORKERS",
    "job_workers": "SLIMYOLO_JOB_WORKERS",
    "grace_seconds": "SLIMYOLO_SHUTDOWN_GRACE_SECONDS",
    "drain_delay": "SLIMYOLO_DRAIN_DELAY_SECONDS",
    "max_connection_age": "SLIMYOLO_GRPC_MAX_CONNECTION_AGE_SECONDS",
    "max_connection_age_grace": "SLIMYOLO_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
    "tls_cert": "SLIMYOLO_TLS_CERT",
    "tls_key": "SLIMYOLO_TLS_KEY",
    "tls_client_ca": "SLIMYOLO_TLS_CLIENT_CA",
    "auth_tokens": "SLIMYOLO_AUTH_TOKENS",
    "health_port": "SLIMYOLO_HEALTH_PORT",
}
_FLAGS = {"bind": "--bind", "port": "--port", "metrics_port": "--metrics-port",
          "max_message_bytes": "--max-message-bytes", "workers": "--workers", "job_workers": "--job-workers",
          "grace_seconds": "--grace-seconds", "drain_delay": "--drain-delay",
          "max_connection_age": "--max-connection-age",
          "max_connection_age_grace": "--max-connection-age-grace", "tls_cert": "--tls-cert", "tls_key": "--tls-key",
          "tls_client_ca": "--tls-client-ca", "auth_tokens": "--tokens", "health_port": "--health-port"}


@dataclass(frozen=True)
class ServerConfig(EnvConfig):
    bind: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 8000
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # The inference service's calls beyond its queue must reach it to be refused (SLIMYOLO_INFERENCE_MAX_QUEUE 32).
    workers: int = 64
    job_workers: int = 1
    grace_seconds: float = 20.0
    # 0: outside Kubernetes nothing needs time to forget a replica (SlimYOLO's clients watch its health
    # and leave at NOT_SERVING, every gRPC client re-picks at GOAWAY, and a call refused in between is
    # retried); a pause would only slow every stop. The manifests set 5: endpoints and kube-proxy lag.
    drain_delay: float = 0.0
    max_connection_age: float = 0.0
    max_connection_age_grace: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_tokens: str = ""
    health_port: int = -1

    VARIABLES: ClassVar[Mapping[str, str]] = _ENV

    def _check(self) -> None:
        def where(name: str) -> str:
            return f"{_FLAGS[name]} / {_ENV[name]}"

        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SlimYoloError(f"{where(name)}: {getattr(self, name)} is not a port number")
        if self.port and self.port == self.metrics_port:
            raise SlimYoloError(f"{where('metrics_port')}: the metrics port must differ from the gRPC port")
        if not -1 <= self.health_port <= 65535:
            raise SlimYoloError(f"{where('health_port')}: {self.health_port} is not a port number (-1: none)")
        if self.health_port > 0 and self.health_port in (self.port, self.metrics_port):
            raise SlimYoloError(f"{where('health_port')}: the health port must differ from the gRPC and metrics ports")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SlimYoloError(f"{where('tls_cert')} and {where('tls_key')}: give both the certificate and its key")
        for name in ("tls_client_ca", "auth_tokens"):
            if getattr(self, name) and not self.tls_cert:
                raise SlimYoloError(f"{where(name)} needs TLS ({where('tls_cert')}, {where('tls_key')}): "
                                    + ("client certificates are checked in the TLS handshake" if name == "tls_client_ca"
                                       else "tokens must not travel in the clear"))
        for name in ("max_message_bytes", "workers", "job_workers"):
            if getattr(self, name) < 1:
                raise SlimYoloError(f"{where(name)}: must be at least 1, got {getattr(self, name)}")
        for name in ("grace_seconds", "drain_delay", "max_connection_age", "max_connection_age_grace"):
            if getattr(self, name) < 0:
                raise SlimYoloError(f"{where(name)}: must not be negative")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every ``slimyolo serve <stage>`` takes; each overrides its environment variable."""
    helps = {"bind": "address to listen on", "port": "gRPC port", "metrics_port": "Prometheus /metrics port",
             "max_message_bytes": "largest gRPC message", "workers": "threads serving calls",
             "job_workers": "jobs running at once", "grace_seconds": "drain time after SIGTERM",
             "drain_delay": "seconds between NOT_SERVING and refusing new calls after SIGTERM, while Kubernetes "
                            "endpoints and load balancers forget the replica",
             "max_connection_age": "seconds after which a client connection is closed, so that clients "
                                   "re-resolve and spread over new replicas (0: never)",
             "max_connection_age_grace": "seconds the calls of a closed connection get to finish",
             "tls_cert": "PEM file of the server's certificate (with --tls-key: TLS; re-read when it changes)",
             "tls_key": "PEM file of the certificate's private key",
             "tls_client_ca": "PEM file of the CA that signs client certificates: mutual TLS, a client without "
                              "one is refused at the handshake",
             "auth_tokens": "tokens file: lines 'ROLE NAME SHA256-HEX' or 'ROLE NAME cert:IDENTITY' (roles infer, "
                            "operate, admin); every call then needs a token or a mapped client certificate",
             "health_port": "plaintext port serving grpc.health.v1 alone, for Kubernetes probes (-1: none; 0: any "
                            "free port)"}
    for f in fields(ServerConfig):
        default = "none" if f.default == "" else f.default
        parser.add_argument(_FLAGS[f.name], dest=f.name, type=type(f.default), default=None,
                            help=f"{helps[f.name]} (env {_ENV[f.name]}, default {default})")


# -- metrics and status codes: the interceptor ---------------------------------------------------

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class _GrpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", labels, registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               [*labels, "grpc_code"], registry=registry)
        self.received = Counter("grpc_server_msg_received_total", "Messages received from clients.", labels,
                                registry=registry)
        self.sent = Counter("grpc_server_msg_sent_total", "Messages sent to clients.", labels, registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its status.",
                                 labels, buckets=_BUCKETS, registry=registry)


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    return {(False, False): "unary", (True, False): "client_stream", (False, True): "server_stream",
            (True, True): "bidi_stream"}[(handler.request_streaming, handler.response_streaming)]


class _StatusInterceptor(grpc.ServerInterceptor):
    """Maps exceptions to status codes and records the grpc_server_* metrics of every call."""

    def __init__(self, metrics: _GrpcMetrics) -> None:
        self.m = metrics
        self.served_by = ""  # hostname:port, once the server listens

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        service, _, method = details.method.lstrip("/").rpartition("/")
        kind = _rpc_type(handler)
        labels = (kind, service, method)
        behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
        call = self._streaming(behavior, labels) if handler.response_streaming else self._unary(behavior, labels)
        make = {"unary": grpc.unary_unary_rpc_method_handler, "client_stream": grpc.stream_unary_rpc_method_handler,
                "server_stream": grpc.unary_stream_rpc_method_handler,
                "bidi_stream": grpc.stream_stream_rpc_method_handler}[kind]
        return make(call, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _count_requests(self, request: Any, labels: tuple[str, ...], streaming: bool) -> Any:
        if not streaming:
            self.m.received.labels(*labels).inc()
            return request

        def counted() -> Iterator[Any]:
            try:
                for item in request:
                    self.m.received.labels(*labels).inc()
                    yield item
            except grpc.RpcError:  # gRPC's way of saying the client cancelled while we waited for a message
                raise Cancelled("the client cancelled the call") from None

        return counted()

    @staticmethod
    def _status(exc: Exception, context: grpc.ServicerContext, labels: tuple[str, ...]) -> tuple[grpc.StatusCode,
                                                                                                   str | None]:
        """The status for ``exc``; no message when the servicer already set one (``context.abort``)."""
        set_code = context.code()
        if set_code not in (None, grpc.StatusCode.OK):
            return set_code, None
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s/%s failed", labels[1], labels[2], exc_info=exc)
        return code, message

    def _unary(self, behavior: Callable, labels: tuple[str, ...]) -> Callable:
        streaming_in = labels[0] == "client_stream"

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            self.m.started.labels(*labels).inc()
            start, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
            context.set_trailing_metadata(((SERVED_BY, self.served_by),))
            try:
                response = behavior(self._count_requests(request, labels, streaming_in), context)
                code = context.code() or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK:
                    self.m.sent.labels(*labels).inc()
                return response
            except Exception as exc:
                code, message = self._status(exc, context, labels)
                if message is None:
                    raise
                context.abort(code, message)  # raises; grpc sends the status without logging a traceback
            finally:
                self.m.handled.labels(*labels, code.name).inc()
                self.m.seconds.labels(*labels).observe(time.perf_counter() - start)

        return call

    def _streaming(self, behavior: Callable, labels: tuple[str, ...]) -> Callable:
        streaming_in = labels[0] == "bidi_stream"

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self.m.started.labels(*labels).inc()
            start = time.perf_counter()

            def record(code: grpc.StatusCode) -> None:
                self.m.handled.labels(*labels, code.name).inc()
                self.m.seconds.labels(*labels).observe(time.perf_counter() - start)

            outcome = _StreamOutcome(record)
            _STREAMS[context] = outcome
            if not context.add_callback(lambda: outcome.over(context)):
                outcome.over(context)  # the call ended before it started (the client went away)
            return responses(request, context, outcome)

        def responses(request: Any, context: grpc.ServicerContext, outcome: _StreamOutcome) -> Iterator[Any]:
            try:
                for response in behavior(self._count_requests(request, labels, streaming_in), context):
                    self.m.sent.labels(*labels).inc()
                    yield response
            except GeneratorExit:  # the client went away, or the drain's grace period ended
                outcome.finish(grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                code, message = self._status(exc, context, labels)
                outcome.finish(code)
                if message is None:
                    raise
                context.abort(code, message)  # raises; grpc sends the status without logging a traceback
            else:
                code = context.code()
                if code not in (None, grpc.StatusCode.OK):
                    outcome.finish(code)  # the servicer's own status (context.set_code)
                # Otherwise OK, unless the client cancelled: grpc knows once the call is over (outcome.over).

        return call


def _client_cancelled(context: grpc.ServicerContext) -> bool:
    """Whether the client cancelled the call (or its deadline passed); final once the call is over.

    grpc's sync server has no public accessor for it: the transport's verdict (RECV_CLOSE_ON_SERVER
    ``cancelled``) is kept in the call's private state, ``_state.client == "cancelled"``. This is the
    one place that reads it; tests/test_serving_api.py fails if a grpc release moves it.
    """
    return getattr(getattr(context, "_state", None), "client", None) == "cancelled"


class _StreamOutcome:
    """The status of one streaming call: final when its servicer fails, else when grpc ends the call.

    A stream whose servicer ends without error is not known to be OK at that moment: grpc's sync
    server presents a client's cancel as the normal end of the request stream when the failed read
    of the next message reaches the servicer before the cancel itself (about one cancel in seven on
    a busy machine), and it stops iterating, without closing, the responses of a client that went
    away. Only when the call is over (``context.add_callback``) does grpc know whether the client
    cancelled. Listeners (:func:`on_call_end`) get the final code once.
    """

    def __init__(self, record: Callable[[grpc.StatusCode], None]) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Callable[[grpc.StatusCode], None]] = [record]
        self._code: grpc.StatusCode | None = None

    def listen(self, callback: Callable[[grpc.StatusCode], None]) -> None:
        with self._lock:
            if self._code is None:
                self._listeners.append(callback)
                return
            code = self._code
        callback(code)

    def finish(self, code: grpc.StatusCode) -> None:
        with self._lock:
            if self._code is not None:
                return
            self._code = code
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            try:
                listener(code)
            except Exception:  # a listener's bug must not hide the others' counts
                log.exception("a listener of a call's end failed")

    def over(self, context: grpc.ServicerContext) -> None:
        """grpc ended the call: OK unless the client cancelled (the servicer's error was final already)."""
        if not _client_cancelled(context):
            self.finish(grpc.StatusCode.OK)
        elif context.time_remaining() <= 0:
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            self.finish(grpc.StatusCode.CANCELLED)


# The outcome of every streaming call in progress, by its context (see on_call_end).
_STREAMS: weakref.WeakKeyDictionary[grpc.ServicerContext, _StreamOutcome] = weakref.WeakKeyDictionary()


def on_call_end(context: grpc.ServicerContext, callback: Callable[[grpc.StatusCode], None]) -> None:
    """Call ``callback(code)`` once the streaming call of ``context`` has the status it ends with.

    For a servicer that counts its streams by outcome: the end of its generator is too early to
    tell (see :class:`_StreamOutcome`). The callback may run on one of grpc's threads: keep it short.
    """
    outcome = _STREAMS.get(context)
    if outcome is None:
        raise RuntimeError("on_call_end: not a streaming call of a slimyolo Server")
    outcome.listen(callback)


# -- the server ----------------------------------------------------------------------------------


class Server:
    """A gRPC server with health, reflection, metrics, status mapping and a graceful drain.

    Usage in a service's module (``slimyolo/services/<service>.py``; the stage services do this through
    :func:`slimyolo.rpc.stage_service.serve_stages`)::

        server = Server("trainer", ServerConfig.from_args(args, os.environ))
        jobs = server.enable_jobs(store, rebuild)
        server.add_service("slimyolo.v1.Trainer", trainer_pb2_grpc.add_TrainerServicer_to_server, servicer)
        server.start()
        server.set_serving("slimyolo.v1.Trainer")
        server.serve_forever()  # until SIGTERM
    """

    def __init__(self, name: str, config: ServerConfig) -> None:
        self.name, self.config = name, config
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a second server on a busy port must fail, not share it
        if config.max_connection_age:  # grpc adds ±10 % jitter, so that clients do not all reconnect at once
            options += [("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace * 1000))]
        self._interceptor = _StatusInterceptor(_GrpcMetrics(self.registry))
        self._certificates, interceptors = self._security(config)
        self.grpc = grpc.server(futures.ThreadPoolExecutor(config.workers, thread_name_prefix=f"{name}-rpc"),
                                interceptors=[self._interceptor, *interceptors], options=options)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._health_server: grpc.Server | None = None
        self.port = self.metrics_port = self.health_port = 0
        self._serving: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._shutdown_hooks: list[Callable[[float], None]] = []
        self._http: Any = None
        self._started = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    @staticmethod
    def _security(config: ServerConfig) -> tuple[CertificateFiles | None, list[grpc.ServerInterceptor]]:
        """(the TLS files or None, the interceptors checking callers): read now, so a bad file fails the start."""
        certificates = CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca) \
            if config.tls_cert else None
        return certificates, [AuthInterceptor(TokensFile(config.auth_tokens))] if config.auth_tokens else []

    def add_service(self, name: str, add_to_server: Callable[[Any, grpc.Server], None], servicer: Any) -> None:
        """Register a servicer (``add_XServicer_to_server``) under its full name, NOT_SERVING for now."""
        if self._started:
            raise RuntimeError("add services before start()")
        add_to_server(servicer, self.grpc)
        self._serving[name] = False

    def on_shutdown(self, hook: Callable[[float], None]) -> None:
        """Call ``hook(deadline)`` during the drain, after new calls are refused (release resources)."""
        self._shutdown_hooks.append(hook)

    def enable_jobs(self, store: Any = None, rebuild: Callable[[str, Any], Any] | None = None):
        """Serve ``slimyolo.v1.Jobs`` here and return the JobManager for the stage's Start... calls.

        With a ``store`` the jobs are journaled there (``jobs/<server name>/``) and the unfinished
        jobs of an earlier process are run again, ``rebuild(kind, spec)`` giving their functions.
        """
        from slimyolo.rpc.gen.v1 import jobs_pb2_grpc
        from slimyolo.rpc.job_service import JobsServicer
        from slimyolo.rpc.jobs import JobManager
        from slimyolo.rpc.journal import JobJournal

        journal = JobJournal(store, self.name) if store is not None else None
        manager = JobManager(self.config.job_workers, registry=self.registry, journal=journal, rebuild=rebuild)
        manager.recover()
        self.add_service("slimyolo.v1.Jobs", jobs_pb2_grpc.add_JobsServicer_to_server, JobsServicer(manager))
        self._serving["slimyolo.v1.Jobs"] = True
        self.on_shutdown(manager.shutdown)
        return manager

    def set_serving(self, name: str, serving: bool = True) -> None:
        """Report a service ready (or not) to health checks; ``""`` follows all of them."""
        with self._lock:
            if name not in self._serving:
                raise KeyError(f"{name} is not a service of this server ({sorted(self._serving)})")
            self._serving[name] = serving
            self._publish_health()

    def _publish_health(self) -> None:
        status = health_pb2.HealthCheckResponse
        for name, serving in self._serving.items():
            self.health.set(name, status.SERVING if serving else status.NOT_SERVING)
        self.health.set("", status.SERVING if all(self._serving.values()) else status.NOT_SERVING)

    def start(self) -> None:
        """Bind the gRPC and metrics ports (``self.port``, ``self.metrics_port`` say which) and serve."""
        from prometheus_client import start_http_server

        names = [*self._serving, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.grpc)
        address = f"{self.config.bind}:{self.config.port}"
        try:
            self.port = self.grpc.add_insecure_port(address) if self._certificates is None else \
                self.grpc.add_secure_port(address, self._certificates.credentials())
        except RuntimeError as exc:
            raise SlimYoloError(f"--port / SLIMYOLO_GRPC_PORT: cannot listen on {address} ({exc})") from None
        if self.config.health_port >= 0:
            self._start_health_port()
        try:
            self._http, _ = start_http_server(self.config.metrics_port, addr=self.config.bind, registry=self.registry)
        except OSError as exc:
            raise SlimYoloError(f"--metrics-port / SLIMYOLO_METRICS_PORT: cannot listen on "
                                f"{self.config.bind}:{self.config.metrics_port} ({exc})") from None
        self.metrics_port = self._http.server_port
        self._interceptor.served_by = f"{socket.gethostname()}:{self.port}"
        with self._lock:
            self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
            self._publish_health()
        self.grpc.start()
        self._started = True
        # Scripts read the ports from this line's start (tests, benchmarks): keep "serving gRPC on H:P, metrics on H:P".
        log.info("%s serving gRPC on %s:%d, metrics on %s:%d; %s%s", self.name, self.config.bind, self.port,
                 self.config.bind, self.metrics_port,
                 "plaintext" if self._certificates is None else "mutual TLS" if self._certificates.mutual else "TLS",
                 f", health alone on {self.config.bind}:{self.health_port} (plaintext)" if self._health_server else "")
        if not self.config.auth_tokens and not (self._certificates is not None and self._certificates.mutual):
            log.warning("%s is open: %s; whoever reaches port %d may call every method", self.name,
                        "no TLS and no tokens (--tls-cert, --tokens)" if self._certificates is None else
                        "TLS without tokens or client certificates (--tokens, --tls-client-ca)", self.port)

    def _start_health_port(self) -> None:
        """Serve the same health statuses, and nothing else, in plaintext: the kubelet's gRPC probes present no
        certificate and no token. They read only SERVING or not; every other call there is UNIMPLEMENTED."""
        address = f"{self.config.bind}:{self.config.health_port}"
        self._health_server = grpc.server(futures.ThreadPoolExecutor(4, thread_name_prefix=f"{self.name}-health"),
                                          options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        try:
            self.health_port = self._health_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SlimYoloError(f"--health-port / SLIMYOLO_HEALTH_PORT: cannot listen on {address} ({exc})") from None
        self._health_server.start()

    def stop(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """Drain: NOT_SERVING, go on serving for ``drain_delay`` seconds, refuse new calls, give calls and jobs
        ``grace`` seconds, then stop (both default to the config's).

        Safe to call more than once and from any thread; later calls wait for the first.
        """
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        grace = self.config.grace_seconds if grace is None else grace
        drain_delay = self.config.drain_delay if drain_delay is None else drain_delay
        log.info("%s draining (delay %.1fs, grace %.1fs)", self.name, drain_delay, grace)
        self.health.enter_graceful_shutdown()
        time.sleep(drain_delay)  # NOT_SERVING, still serving: load balancers and endpoints catch up
        deadline = time.monotonic() + grace
        done = self.grpc.stop(grace)
        for hook in self._shutdown_hooks:
            hook(deadline)
        done.wait()
        if self._health_server is not None:  # the probes saw NOT_SERVING throughout the drain
            self._health_server.stop(0).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._stopped.set()
        log.info("%s stopped", self.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False if ``timeout`` passed first."""
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        """Start if needed, drain on SIGTERM or SIGINT, return once stopped (call from the main thread)."""
        if not self._started:
            self.start()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("%s got %s", self.name, signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="drain", daemon=True).start()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.wait(0.5):  # wake up regularly so the signal handler runs promptly
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
