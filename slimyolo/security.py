"""Who may call what: the roles, the tokens file, the role each method needs, and the clients' TLS settings.

Policy only, without gRPC (the command-line parsers import it; the server side that enforces it
is :mod:`slimyolo.rpc.auth`):

- three roles, each allowed what the one below it is: ``infer`` (ModelInfer, Detect,
  DetectStream, the KServe metadata and readiness calls), ``operate`` (the stage services'
  Start... calls, the Jobs calls on the caller's own jobs, LoadModel, UnloadModel, ListModels,
  BenchmarkModel), ``admin`` (every job, whoever started it). ``grpc.health.v1`` and server
  reflection need no role (probes, grpcurl). A method missing from :data:`METHOD_ROLES` needs
  ``admin``: a new RPC is closed until someone decides who may call it.
- the server's tokens file (``--tokens`` / ``SLIMYOLO_AUTH_TOKENS``): one line per token,
  ``ROLE NAME SHA256-HEX-OF-THE-TOKEN``, or ``ROLE NAME cert:IDENTITY`` to give the role to a
  client certificate (mTLS) whose subject alternative name or common name is IDENTITY, for the
  calls that carry no token; ``#`` starts a comment. The file holds hashes only, so a leaked
  copy lets nobody in; tokens are compared as SHA-256 digests in constant time and never logged.
  One NAME may have several lines (a token being rotated), all of one role.
- :class:`ClientSecurity`: what a client presents (``--tls-ca``, ``--tls-cert``, ``--tls-key``,
  ``--token-file``, ``--tls-server-name``; or ``SLIMYOLO_CLIENT_TLS_CA``, ``SLIMYOLO_CLIENT_TLS_CERT``,
  ``SLIMYOLO_CLIENT_TLS_KEY``, ``SLIMYOLO_TOKEN``, ``SLIMYOLO_CLIENT_TLS_SERVER_NAME``).
  :func:`slimyolo.rpc.client.connect` reads it from the environment unless given one, so the
  services' own clients (the sweep's FPS meter in the pruner) are configured like any other.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from slimyolo.envconfig import EnvConfig
from slimyolo.errors import SlimYoloError

log = logging.getLogger(__name__)


class Role(enum.IntEnum):
    """What a caller may do; a higher role may do all that a lower one may."""

    INFER = 1
    OPERATE = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Identity:
    """Who a call comes from: the NAME of its token's (or certificate's) line, and its role."""

    name: str
    role: Role


# Services any caller may use, token or not: probes and tools must work before anyone has a token.
PUBLIC_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                             "grpc.reflection.v1.ServerReflection"})


def _methods(service: str, role: Role, *names: str) -> dict[str, Role]:
    return {f"/{service}/{name}": role for name in names}


METHOD_ROLES: Mapping[str, Role] = {
    **_methods("inference.GRPCInferenceService", Role.INFER, "ServerLive", "ServerReady", "ModelReady",
               "ServerMetadata", "ModelMetadata", "ModelInfer"),
    **_methods("slimyolo.v1.Inference", Role.INFER, "Detect", "DetectStream"),
    # BenchmarkModel keeps the server's cores busy for seconds: an operator's call, not a client's.
    **_methods("slimyolo.v1.Inference", Role.OPERATE, "LoadModel", "UnloadModel", "ListModels", "BenchmarkModel"),
    **_methods("slimyolo.v1.Trainer", Role.OPERATE, "StartTraining", "StartEvaluation"),
    **_methods("slimyolo.v1.Pruner", Role.OPERATE, "StartPrune", "StartSweep"),
    **_methods("slimyolo.v1.Converter", Role.OPERATE, "StartConversion"),
    **_methods("slimyolo.v1.Jobs", Role.OPERATE, "GetJob", "WatchJob", "CancelJob", "ListJobs"),
}
"""The role each method needs (full names, ``/package.Service/Method``); see :func:`required_role`."""


def required_role(method: str) -> Role | None:
    """The role ``method`` (``/package.Service/Method``) needs; None for the public services; admin for a
    method the table does not name."""
    if method.lstrip("/").rpartition("/")[0] in PUBLIC_SERVICES:
        return None
    return METHOD_ROLES.get(method, Role.ADMIN)


# -- the tokens file --------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]{64}")
CERT_PREFIX = "cert:"


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of a token, as the tokens file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenTable:
    """The lines of a tokens file: token digests and certificate identities, each with its identity."""

    tokens: tuple[tuple[bytes, Identity], ...] = ()
    certificates: Mapping[str, Identity] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, source: str) -> TokenTable:
        """Read the lines of a tokens file; a SlimYoloError names ``source:line`` of a bad one."""
        tokens: list[tuple[bytes, Identity]] = []
        certificates: dict[str, Identity] = {}
        roles: dict[str, Role] = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{source}:{number}"
            if len(words) != 3:
                raise SlimYoloError(f"{where}: expected 'ROLE NAME SHA256-HEX' or 'ROLE NAME cert:IDENTITY', got "
                                    f"{len(words)} word(s)")
            role_name, name, secret = words
            try:
                role = Role[role_name.upper()]
            except KeyError:
                raise SlimYoloError(f"{where}: role {role_name!r} is not one of "
                                    f"{', '.join(str(r) for r in Role)}") from None
            if roles.setdefault(name, role) is not role:
                raise SlimYoloError(f"{where}: {name} has the role {roles[name]} on an earlier line; one name, one "
                                    "role (its jobs belong to the name)")
            identity = Identity(name, role)
            if secret.startswith(CERT_PREFIX):
                subject = secret.removeprefix(CERT_PREFIX)
                if not subject:
                    raise SlimYoloError(f"{where}: 'cert:' needs the certificate's identity (its DNS name or "
                                        "common name)")
                if certificates.get(subject, identity) != identity:
                    raise SlimYoloError(f"{where}: the certificate {subject!r} is mapped to two names")
                certificates[subject] = identity
            elif _HEX.fullmatch(secret):
                tokens.append((bytes.fromhex(secret), identity))
            else:
                raise SlimYoloError(f"{where}: the third word must be the token's SHA-256 as 64 lower-case hex digits "
                                    "(printf %s \"$TOKEN\" | sha256sum) or cert:IDENTITY, not the token itself")
        if not tokens and not certificates:
            raise SlimYoloError(f"{source}: no token lines; an empty tokens file would refuse every call")
        return cls(tuple(tokens), certificates)

    def by_token(self, token: str) -> Identity | None:
        """The identity of ``token``; every line is compared, in constant time, whichever matches."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for expected, identity in self.tokens:
            if hmac.compare_digest(expected, digest) and found is None:
                found = identity
        return found

    def by_certificate(self, subjects: Iterable[str]) -> Identity | None:
        """The identity mapped to the first of a verified client certificate's names that has one."""
        return next((self.certificates[s] for s in subjects if s in self.certificates), None)


class TokensFile:
    """A tokens file, read again when it changes (a rotated Kubernetes Secret), at most once a second.

    A change that does not parse is logged and the previous table kept: a typo in a rotation must
    not lock every client out.
    """

    def __init__(self, path: str | Path, where: str = "--tokens / SLIMYOLO_AUTH_TOKENS",
                 recheck_seconds: float = 1.0) -> None:
        self.path, self.where, self.recheck_seconds = Path(path), where, recheck_seconds
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._stat()
        self._table = TokenTable.parse(self._read(), str(self.path))

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError as exc:
            raise SlimYoloError(f"{self.where}: cannot read {self.path} ({exc.strerror or exc})") from None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def table(self) -> TokenTable:
        """The current table (re-read if the file changed; looked at once per ``recheck_seconds`` at most)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.recheck_seconds:
                self._checked = now
                stamp = self._stat()
                if stamp is not None and stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._table = TokenTable.parse(self._read(), str(self.path))
                        log.info("%s: tokens file re-read", self.path)
                    except SlimYoloError as exc:
                        log.error("%s; keeping the tokens read before", exc)
            return self._table


# -- the client's side --------------------------------------------------------------------------------------

_CLIENT_ENV = {"tls_ca": "SLIMYOLO_CLIENT_TLS_CA", "tls_cert": "SLIMYOLO_CLIENT_TLS_CERT",
               "tls_key": "SLIMYOLO_CLIENT_TLS_KEY", "tls_server_name": "SLIMYOLO_CLIENT_TLS_SERVER_NAME",
               "token": "SLIMYOLO_TOKEN"}
_CLIENT_FLAGS = {"tls_ca": "--tls-ca", "tls_cert": "--tls-cert", "tls_key": "--tls-key",
                 "tls_server_name": "--tls-server-name", "token": "--token-file"}


@dataclass(frozen=True)
class ClientSecurity(EnvConfig):
    """What a client presents: TLS (the CA that signed the server's certificate; a certificate and key of its
    own for mTLS; the name the server's certificate must carry, when it is not the target's host) and a bearer
    token. Empty: plaintext, no token, as before."""

    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    token: str = ""

    VARIABLES: ClassVar[Mapping[str, str]] = _CLIENT_ENV

    def _check(self) -> None:
        def where(name: str) -> str:
            return f"{_CLIENT_FLAGS[name]} / {_CLIENT_ENV[name]}"

        if bool(self.tls_cert) != bool(self.tls_key):
            raise SlimYoloError(f"{where('tls_cert')} and {where('tls_key')}: a client certificate needs its key, "
                                "and a key its certificate")
        if (self.tls_cert or self.tls_server_name or self.token) and not self.tls_ca:
            given = next(n for n in ("token", "tls_cert", "tls_server_name") if getattr(self, n))
            raise SlimYoloError(f"{where(given)} needs TLS: give {where('tls_ca')} (the CA that signed the server's "
                                "certificate); a token is never sent in the clear")

    @property
    def secure(self) -> bool:
        return bool(self.tls_ca)

    def pem(self, name: str) -> bytes:
        """The PEM file of ``name`` (``tls_ca``, ``tls_cert``, ``tls_key``), read now: an unreadable one is an error
        naming its flag and variable."""
        path = getattr(self, name)
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SlimYoloError(f"{_CLIENT_FLAGS[name]} / {_CLIENT_ENV[name]}: cannot read {path} "
                                f"({exc.strerror or exc})") from None

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel options: the server name its certificate must carry, when given."""
        return [("grpc.ssl_target_name_override", self.tls_server_name)] if self.tls_server_name else []


def add_client_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``, ``--token-file``: each overrides its
    SLIMYOLO_CLIENT_* (SLIMYOLO_TOKEN) variable."""
    helps = {"tls_ca": "PEM file of the CA that signed the server's certificate (turns TLS on)",
             "tls_cert": "PEM file of this client's certificate, for a server that asks for one (mTLS)",
             "tls_key": "PEM file of that certificate's private key",
             "tls_server_name": "the name the server's certificate must carry, when the address does not name it",
             "token": "file holding the bearer token (sent as 'authorization: Bearer ...'; the variable holds "
                      "the token itself)"}
    for name, flag in _CLIENT_FLAGS.items():
        parser.add_argument(flag, dest=f"client_{name}", metavar="FILE" if name != "tls_server_name" else "NAME",
                            default=None, help=f"{helps[name]} (env {_CLIENT_ENV[name]})")


def client_security(args: argparse.Namespace, env: Mapping[str, str]) -> ClientSecurity:
    """The client settings of a command: its flags (:func:`add_client_arguments`) over the environment."""
    overrides = {name: getattr(args, f"client_{name}", None) for name in _CLIENT_FLAGS if name != "token"}
    token_file = getattr(args, "client_token", None)
    if token_file:
        try:
            overrides["token"] = Path(token_file).read_text().strip()
        except OSError as exc:
            raise SlimYoloError(f"--token-file: cannot read {token_file} ({exc.strerror or exc})") from None
        if not overrides["token"]:
            raise SlimYoloError(f"--token-file: {token_file} is empty")
    return ClientSecurity.from_env(env, **overrides)
