"""Read a JSON file that a user points the tools at (config, address list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ConfigError


def read_json_file(path: Path, kind: str) -> Any:
    """The parsed document; ConfigError naming the file when it is missing or not JSON.
    ``kind`` completes "no such ...", e.g. "config file"."""
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {kind}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
