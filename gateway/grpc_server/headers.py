"""gRPC's HTTP/2 headers (grpc/doc/PROTOCOL-HTTP2.md): the response header blocks, the status
trailers and the request's timeout.

The server's header blocks are HPACK literals "without indexing" and without Huffman coding:
they never touch the client's dynamic table, so constant blocks are encoded once and reused.
"""

from __future__ import annotations

import string
import urllib.parse
from collections.abc import Iterable

GRPC_CONTENT_TYPE = b"application/grpc"
_STATUS_200 = b"\x88"  # :status 200, static table index 8


def _length(n: int) -> bytes:
    """An HPACK string length (7-bit prefix integer, Huffman bit clear)."""
    if n < 0x7F:
        return bytes((n,))
    out = bytearray((0x7F,))
    n -= 0x7F
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a literal name (RFC 7541 6.2.2)."""
    return b"\x00" + _length(len(name)) + name + _length(len(value)) + value


# grpc-message is percent-encoded: printable ASCII but "%" passes unchanged.
_MESSAGE_SAFE = " " + string.punctuation.replace("%", "")

RESPONSE_HEADERS = _STATUS_200 + literal(b"content-type", GRPC_CONTENT_TYPE)
ACCEPT_ENCODING = b"identity,gzip"
# The answer to a gzip request is gzip too.
GZIP_RESPONSE_HEADERS = RESPONSE_HEADERS + literal(b"grpc-encoding", b"gzip") + literal(
    b"grpc-accept-encoding", ACCEPT_ENCODING
)
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_block(
    code: int, message: str, metadata: Iterable[tuple[str, str]] = (), *, with_headers: bool
) -> bytes:
    """Trailers with a gRPC status; ``with_headers``: a Trailers-Only response (the response
    headers and the status in one block)."""
    parts = [RESPONSE_HEADERS] if with_headers else []
    parts.append(literal(b"grpc-status", str(code).encode()))
    if message:
        parts.append(literal(b"grpc-message", urllib.parse.quote(message, safe=_MESSAGE_SAFE).encode()))
    parts += (literal(key.lower().encode(), value.encode()) for key, value in metadata)
    return b"".join(parts)


def http_status_block(status: int) -> bytes:
    """A plain HTTP response to a request that is not gRPC (wrong method or content type)."""
    return literal(b":status", str(status).encode()) + literal(b"content-type", b"text/plain")


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` in seconds (up to 8 digits and a unit); None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit
