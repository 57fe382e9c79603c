"""Errors that SlimYOLO reports to its users.

Every error a user can cause (a bad file, a bad argument, a bad request) is a ``SlimYoloError``:
the CLI prints its message and exits with status 2, its subclass names the kind of failure
(:class:`ErrorKind`: fix the input, retry later, ...), which the gRPC servers map to a status
(:mod:`slimyolo.rpc.status`), and nothing else is caught broadly.
The message always says *where* the problem is (file, line, layer, field), because the user
has to find it in their own data.
"""

from __future__ import annotations

import enum


class SlimYoloError(Exception):
    """A problem with the user's input, reported with enough context to fix it."""


class CfgError(SlimYoloError):
    """A darknet cfg that cannot be read or does not describe a valid network."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 layer: int | None = None, kind: str | None = None) -> None:
        self.path, self.line, self.layer, self.kind = path, line, layer, kind
        where = path or "<cfg>"
        if line is not None:
            where += f":{line}"
        if layer is not None:
            where += f": layer {layer}" + (f" [{kind}]" if kind else "")
        elif kind:
            where += f": [{kind}]"
        super().__init__(f"{where}: {message}")


class WeightsError(SlimYoloError):
    """A weights file that does not fit its cfg (wrong size, unreadable, wrong format)."""


class NotFoundError(SlimYoloError):
    """Something the user named (a file, a model, a job, an object) does not exist."""


class FailedPrecondition(SlimYoloError):
    """The request is valid but the state it meets forbids it (a different spec for an existing ``out``)."""


class UnavailableError(SlimYoloError):
    """A dependency (object storage, a service) is down; retrying later may succeed."""


class ResourceExhausted(UnavailableError):
    """A server is at capacity (its queue is full): retry later, or on another replica."""


class Cancelled(SlimYoloError):
    """Raised by a progress callback to stop a long job (training, sweep, conversion) cleanly."""


class ErrorKind(enum.Enum):
    """What kind of failure an error is, as a caller must react to it: fix the input, retry later, give up.

    The core names the kind (:func:`error_kind`); the transport maps each kind to its own code
    (:mod:`slimyolo.rpc.status`: a gRPC status), so nothing below it knows a status code.
    """

    INVALID = "invalid"  # the input is wrong: fix it (gRPC INVALID_ARGUMENT)
    NOT_FOUND = "not found"
    FAILED_PRECONDITION = "failed precondition"
    UNAVAILABLE = "unavailable"  # retry later
    RESOURCE_EXHAUSTED = "resource exhausted"  # retry later, or elsewhere
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # a bug: the message says nothing, the log has the traceback


# The most specific class first: ResourceExhausted is an UnavailableError, every one a SlimYoloError.
_KINDS: tuple[tuple[type[SlimYoloError], ErrorKind], ...] = (
    (NotFoundError, ErrorKind.NOT_FOUND), (ResourceExhausted, ErrorKind.RESOURCE_EXHAUSTED),
    (UnavailableError, ErrorKind.UNAVAILABLE), (Cancelled, ErrorKind.CANCELLED),
    (FailedPrecondition, ErrorKind.FAILED_PRECONDITION), (SlimYoloError, ErrorKind.INVALID))


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of ``exc``: its SlimYoloError subclass says it; anything else is INTERNAL (a bug)."""
    return next((kind for cls, kind in _KINDS if isinstance(exc, cls)), ErrorKind.INTERNAL)


def error_message(exc: BaseException) -> str:
    """What a remote caller is told of ``exc``: a user's error keeps its message (it names the field at fault);
    a bug is named by its type only (the traceback stays in the server's log)."""
    kind = error_kind(exc)
    if kind is ErrorKind.INTERNAL:
        return f"internal error ({type(exc).__name__}); the server log has the traceback"
    return str(exc) or kind.value


def error_of(kind: ErrorKind, message: str) -> SlimYoloError:
    """The SlimYOLO error a failure of ``kind`` stands for (the inverse of :func:`error_kind`), to raise on
    the caller's side; kinds without a class of their own (INTERNAL) keep their name in the message."""
    cls = next((cls for cls, k in _KINDS if k is kind), None)
    return cls(message) if cls is not None else SlimYoloError(f"{kind.name}: {message}")
