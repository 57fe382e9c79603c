"""Errors that SlimYOLO reports to its users.

Every error a user can cause (a bad file, a bad argument, a bad request) is a ``SlimYoloError``:
the CLI prints its message and exits with status 2, the gRPC servers map it to
INVALID_ARGUMENT (or to the status its subclass names), and nothing else is caught broadly.
The message always says *where* the problem is (file, line, layer, field), because the user
has to find it in their own data.
"""

from __future__ import annotations


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
