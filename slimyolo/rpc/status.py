"""Error kinds ↔ gRPC status codes, the same way on both sides of a call and for jobs.

The core library names the kind of each failure (:class:`slimyolo.errors.ErrorKind`); this
module alone knows which gRPC status stands for it. A server turns what the core raises into a
status (the interceptor for calls, the job servicer for jobs); a client turns a status back into
the SlimYOLO error it stands for, so the CLI reports a remote failure exactly like a local one.
"""

from __future__ import annotations

import grpc

from slimyolo.errors import ErrorKind, SlimYoloError, UnavailableError, error_kind, error_message, error_of

STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
_KIND_OF = {code: kind for kind, code in STATUS.items()}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``.

    Errors the user can fix keep their message (it names the field at fault); anything else
    is a bug, reported as INTERNAL without details (the server logs the traceback).
    """
    return STATUS[error_kind(exc)], error_message(exc)


def code_number(kind: ErrorKind) -> int:
    """The number of the status code of ``kind``, as a Job's error carries it (common.proto's Status.code)."""
    return STATUS[kind].value[0]


def code_from_number(number: int) -> grpc.StatusCode:
    """The StatusCode with this number (as a Job's error carries it); UNKNOWN for others."""
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)


def kind_of_number(number: int) -> ErrorKind:
    """The kind a status code number stands for (the inverse of :func:`code_number`); INTERNAL for others."""
    return _KIND_OF.get(code_from_number(number), ErrorKind.INTERNAL)


def error_for(code: grpc.StatusCode, message: str) -> SlimYoloError:
    """The SlimYOLO error a status stands for (the inverse of :func:`status_of`)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UnavailableError(message)
    kind = _KIND_OF.get(code)
    return error_of(kind, message) if kind is not None else SlimYoloError(f"{code.name}: {message}")
