"""The server's side of :mod:`slimyolo.security`: TLS that follows its files, and the check of every call.

:class:`CertificateFiles` gives :class:`~slimyolo.rpc.server.Server` its credentials: the
server's certificate and key, and with a client CA, mutual TLS (a client without a certificate
signed by that CA is refused at the handshake). gRPC asks it for the configuration before each
new connection's handshake, and it reads the files again: when Kubernetes swaps a rotated
Secret into the mounted folder, new connections get the new certificate and the connections
(and calls) already open keep theirs.

:class:`AuthInterceptor` runs before every handler: a call to a method that needs a role
(:func:`~slimyolo.security.required_role`) without a token the tokens file knows, and
without a client certificate the file maps to a role, ends UNAUTHENTICATED; a role too low,
PERMISSION_DENIED; in both cases before the servicer sees the request, so nothing is loaded,
started or written. The token decides the identity when there is one; a certificate only when
no token is sent. Handlers read who called with :func:`caller`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from slimyolo.errors import SlimYoloError
from slimyolo.security import Identity, Role, TokensFile, required_role

log = logging.getLogger(__name__)

_BEHAVIORS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_CALLERS: weakref.WeakKeyDictionary[grpc.ServicerContext, Identity] = weakref.WeakKeyDictionary()


class CertificateFiles:
    """The server's PEM files: certificate, key and (for mTLS) the CA that signs its clients' certificates."""

    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.files = {"--tls-cert / SLIMYOLO_TLS_CERT": cert, "--tls-key / SLIMYOLO_TLS_KEY": key}
        if client_ca:
            self.files["--tls-client-ca / SLIMYOLO_TLS_CLIENT_CA"] = client_ca
        self.mutual = bool(client_ca)
        self._lock = threading.Lock()
        self._pems = self._read()

    def _read(self) -> tuple[bytes, ...]:
        pems = []
        for where, path in self.files.items():
            try:
                pems.append(Path(path).read_bytes())
            except OSError as exc:
                raise SlimYoloError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
            if b"-----BEGIN" not in pems[-1]:
                raise SlimYoloError(f"{where}: {path} is not a PEM file")
        return tuple(pems)

    def _configuration(self, pems: tuple[bytes, ...]) -> Any:
        cert, key, *ca = pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca[0] if ca else None)

    def fetch(self) -> Any:
        """For gRPC, before each handshake: a new configuration when the files changed, else None (keep it)."""
        try:
            pems = self._read()
        except SlimYoloError as exc:  # a file being replaced: keep serving the certificate read before
            log.error("%s; new connections keep the certificate read before", exc)
            return None
        with self._lock:
            if pems == self._pems:
                return None
            self._pems = pems
        log.info("the TLS files changed: new connections get the new certificate")
        return self._configuration(pems)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._configuration(self._pems), self.fetch,
                                                   require_client_authentication=self.mutual)


def caller(context: grpc.ServicerContext) -> Identity | None:
    """Who made the call of ``context``; None when the server checks no tokens (everyone may do everything)."""
    return _CALLERS.get(context)


def jobs_visible_to(context: grpc.ServicerContext) -> str | None:
    """Whose jobs the caller of ``context`` may see: its name; None (every job) for admin or without tokens."""
    identity = caller(context)
    return None if identity is None or identity.role >= Role.ADMIN else identity.name


def _bearer(metadata: Any) -> str | None:
    """The token of the ``authorization`` metadata: "" when it is not ``Bearer TOKEN``; None when absent."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _certificate_names(context: grpc.ServicerContext) -> list[str]:
    """The names of the client's verified certificate (its subject alternative names, then its common name)."""
    if context.peer_identity_key() is None:
        return []
    auth = context.auth_context()
    return [v.decode(errors="replace") for key in ("x509_subject_alternative_name", "x509_common_name")
            for v in auth.get(key, ())]


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates each call (token, else client certificate) and checks its role before its handler runs."""

    def __init__(self, tokens: TokensFile) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        need = required_role(details.method)
        if handler is None or need is None:
            return handler
        token = _bearer(details.invocation_metadata)
        kind = next(k for k in _BEHAVIORS if getattr(handler, k) is not None)
        behavior = getattr(handler, kind)

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            self._admit(details.method, need, token, context)
            return behavior(request, context)

        return getattr(grpc, f"{kind}_rpc_method_handler")(checked, request_deserializer=handler.request_deserializer,
                                                           response_serializer=handler.response_serializer)

    def _admit(self, method: str, need: Role, token: str | None, context: grpc.ServicerContext) -> None:
        """Record the caller, or end the call UNAUTHENTICATED or PERMISSION_DENIED (the token is never echoed)."""
        table = self.tokens.table()
        if token is not None:
            identity = table.by_token(token) if token else None
            if identity is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              f"{method}: the bearer token is not one this server accepts" if token else
                              f"{method}: the authorization metadata is not 'Bearer TOKEN'")
        else:
            names = _certificate_names(context)
            identity = table.by_certificate(names)
            if identity is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{method}: no bearer token (authorization metadata)" + (
                    f", and the client certificate ({', '.join(names)}) is not mapped to a role" if names else ""))
        if identity.role < need:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{method}: needs the {need} role; {identity.name} has the {identity.role} role")
        _CALLERS[context] = identity
