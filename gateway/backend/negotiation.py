"""What an instance's server supports, read from its V2 server metadata (``GET /v2``, gRPC
``ServerMetadata``): the gateway sends the binary tensor extension only to a server that lists
it, and plain JSON tensors to any other (MLServer has no binary extension)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.protocol.translate import BINARY_EXTENSION

MAX_FIELD = 256  # characters kept of a name, version or extension
MAX_EXTENSIONS = 64


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str
    version: str
    extensions: frozenset[str]

    @property
    def binary_tensors(self) -> bool:
        return BINARY_EXTENSION in self.extensions

    @classmethod
    def from_json(cls, doc: Any) -> ServerInfo | None:
        """From a ``GET /v2`` body; None if it is not server metadata."""
        if not isinstance(doc, dict):
            return None
        extensions = doc.get("extensions", [])
        if not isinstance(extensions, list):
            return None
        return cls._bounded(doc.get("name"), doc.get("version"), extensions)

    @classmethod
    def from_proto(cls, name: str, version: str, extensions: Iterable[str]) -> ServerInfo:
        return cls._bounded(name, version, list(extensions))

    @classmethod
    def _bounded(cls, name: Any, version: Any, extensions: list[Any]) -> ServerInfo:
        return cls(
            name=str(name or "")[:MAX_FIELD],
            version=str(version or "")[:MAX_FIELD],
            extensions=frozenset(str(e)[:MAX_FIELD] for e in extensions[:MAX_EXTENSIONS]),
        )

    def describe(self) -> str:
        tensors = "binary tensors" if self.binary_tensors else "JSON tensors only"
        return f"{self.name or 'unnamed server'} {self.version}".strip() + f" ({tensors})"
