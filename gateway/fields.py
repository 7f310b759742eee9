"""Typed fields out of a JSON object (a config file, a plan request), each error naming the field's
full path and what was expected."""

from __future__ import annotations

import builtins
from typing import Any

from gateway.errors import ConfigError

REQUIRED = object()


class Fields:
    """Reads typed fields out of one JSON object, naming the full path in every error."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a JSON object, got {kind(raw)}")
        self.raw = raw
        self.path = path

    def name(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: builtins.str, default: Any) -> Any:
        if key not in self.raw:
            if default is REQUIRED:
                raise ConfigError(f"{self.name(key)}: missing; it is required")
            return default
        return self.raw[key]

    def str(
        self, key: builtins.str, default: Any = None, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str:
        value = self.get(key, default if default is not None else REQUIRED)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.name(key)}: expected a non-empty string, got {shown(value)}")
        if choices and value not in choices:
            raise ConfigError(f"{self.name(key)}: expected one of {', '.join(choices)}, got {shown(value)}")
        return value

    def int(
        self, key: builtins.str, default: Any = None, lo: builtins.int = 0, hi: builtins.int | None = None
    ) -> builtins.int:
        value = self.get(key, default if default is not None else REQUIRED)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            bound = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(f"{self.name(key)}: expected {bound}, got {shown(value)}")
        return value

    def float(
        self,
        key: builtins.str,
        default: Any = None,
        positive: bool = True,
        lo: builtins.float | None = None,
        hi: builtins.float | None = None,
    ) -> builtins.float:
        value = self.get(key, default if default is not None else REQUIRED)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value
            or (positive and value <= 0)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            bound = "a positive number" if positive else "a number"
            if lo is not None:
                bound += f" >= {lo:g}"
            if hi is not None:
                bound += f" and <= {hi:g}" if lo is not None else f" <= {hi:g}"
            raise ConfigError(f"{self.name(key)}: expected {bound}, got {shown(value)}")
        return float(value)

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.name(key)}: expected true or false, got {shown(value)}")
        return value

    def unknown(self, known: builtins.set[builtins.str]) -> None:
        extra = sorted(set(self.raw) - known)
        if extra:
            raise ConfigError(
                f"{self.name(clipped(extra[0]))}: unknown field; expected one of {', '.join(sorted(known))}"
            )


SHOWN_CHARS = 80  # of a client's value quoted back in an error: a message never carries a body


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """``value``'s repr, at most SHOWN_CHARS long."""
    return clipped(repr(value))


def kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"
