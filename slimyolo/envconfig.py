"""Service settings read from environment variables, overridden by command-line flags.

Both service configurations (:class:`slimyolo.rpc.server.ServerConfig` for the ports and limits
every service shares, :class:`slimyolo.serving.config.ServingConfig` for the inference service)
are frozen dataclasses whose fields each have one environment variable; this is their one reader,
so a bad value is reported the same way, naming the variable, whichever service reads it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, ClassVar, Self

from slimyolo.errors import SlimYoloError


class EnvConfig:
    """Base of a frozen dataclass of settings, each field read from its variable in ``VARIABLES``.

    Subclasses set ``VARIABLES`` (field → environment variable) and check their values in
    ``_check`` (errors naming the flag and the variable).
    """

    VARIABLES: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Self:
        """Defaults, then the variables of ``env``, then ``overrides`` (flags) that are not None; each
        value is converted to the type of its field's default."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            name = cls.VARIABLES[f.name]
            raw = env.get(name)
            if raw:
                kind = type(getattr(cls, f.name))
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise SlimYoloError(f"{name}={raw!r}: expected {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = replace(cls(), **values)  # type: ignore[type-var]
        config._check()
        return config

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Self:
        """The configuration of a ``slimyolo serve`` command: its flags win over the environment."""
        return cls.from_env(env, **{name: getattr(args, name, None) for name in cls.VARIABLES})

    def _check(self) -> None:
        """Raise SlimYoloError naming the flag and variable of a value out of range."""
