"""Service settings read from environment variables, overridden by command-line flags.

Both service configurations (:class:`slimyolo.rpc.server.ServerConfig` for the ports and limits
every service shares, :class:`slimyolo.serving.config.ServingConfig` for the inference service)
are frozen dataclasses whose fields each have one environment variable; this is their one reader,
so a bad value is reported the same way, naming the variable, whichever service reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from slimyolo.errors import SlimYoloError

T = TypeVar("T")


def config_from_env(cls: type[T], variables: Mapping[str, str], env: Mapping[str, str], overrides: Mapping[str, Any]
                    ) -> T:
    """Defaults of ``cls``, then the variables of ``env`` (``variables``: field → name), then the
    ``overrides`` (flags) that are not None; each value is converted to its field's default's type."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        raw = env.get(variables[f.name])
        if raw:
            kind = type(getattr(cls, f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise SlimYoloError(f"{variables[f.name]}={raw!r}: expected {kind.__name__}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(cls(), **values)  # type: ignore[type-var]
