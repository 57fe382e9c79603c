"""Exceptions ↔ gRPC status codes, the same way on both sides of a call and for jobs.

A server turns what the core library raises into a status (the interceptor for calls, the job
manager for jobs); a client turns a status back into the SlimYOLO error it stands for, so the
CLI reports a remote failure exactly like a local one.
"""

from __future__ import annotations

import grpc

from slimyolo.errors import (
    Cancelled,
    FailedPrecondition,
    NotFoundError,
    ResourceExhausted,
    SlimYoloError,
    UnavailableError,
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``.

    Errors the user can fix keep their message (it names the field at fault); anything else
    is a bug, reported as INTERNAL without details (the server logs the traceback).
    """
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, ResourceExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, str(exc) or "cancelled"
    if isinstance(exc, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, SlimYoloError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the traceback"


def code_from_number(number: int) -> grpc.StatusCode:
    """The StatusCode with this number (as carried in JobError.code); UNKNOWN for others."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def error_for(code: grpc.StatusCode, message: str) -> SlimYoloError:
    """The SlimYOLO error a status stands for (the inverse of :func:`status_of`)."""
    kind = {grpc.StatusCode.NOT_FOUND: NotFoundError, grpc.StatusCode.UNAVAILABLE: UnavailableError,
            grpc.StatusCode.CANCELLED: Cancelled, grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
            grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
            grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition}.get(code, SlimYoloError)
    if kind is SlimYoloError and code != grpc.StatusCode.INVALID_ARGUMENT:
        message = f"{code.name}: {message}"
    return kind(message)
