"""Bounds on what a client may send, checked at the front end before anything reaches the
dispatcher or a backend request.

Every value here is copied into something the gateway builds (a request line to an instance, a
numpy column, a log line, an error message), so each has a character set and a length: a name
or version outside them is refused with a 400 that says why, never forwarded. Pure functions.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from gateway.errors import BadRequest

MAX_NAME_CHARS = 256  # model names and versions
MAX_ID_CHARS = 1024  # request ids are echoed back; a bound keeps the echo small
MAX_DIMS = 32  # numpy's limit is 64; no V2 model uses more than a handful
MAX_CONTENT_TYPE_CHARS = 256
# Shape dimensions are int64 in the V2 protobuf; the element count of one tensor is bounded so
# that shape arithmetic stays exact and small.
MAX_ELEMENTS = 2**40
# What an error message may quote of a client's value.
QUOTE_CHARS = 64

# Model names and versions become URL path segments (HTTP) and protobuf strings: the characters
# KServe and Triton allow in model names, no "/", no percent escapes, no whitespace or controls.
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# Content-Type goes into the instance's request head: printable ASCII only (no CR, LF or NUL).
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def quote(value: object) -> str:
    """``repr(value)`` cut to ``QUOTE_CHARS``: for error messages, which a client may read."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def check_name(value: str, what: str = "model name") -> str:
    """A model name: 1-256 characters from ``[A-Za-z0-9_.-]``."""
    if not value or len(value) > MAX_NAME_CHARS or not _NAME.fullmatch(value):
        raise BadRequest(
            f"{what} {quote(value)}: expected 1-{MAX_NAME_CHARS} characters from A-Z a-z 0-9 _ . -"
        )
    return value


def check_version(value: str | None) -> str | None:
    """A model version (None or "" for none): the same characters as a name."""
    if not value:
        return None
    return check_name(value, "model version")


def check_request_id(value: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"id: {len(value)} characters, at most {MAX_ID_CHARS} allowed")
    return value


def check_content_type(value: str | None) -> str | None:
    """An HTTP Content-Type to forward: printable ASCII, bounded."""
    if value is None:
        return None
    if len(value) > MAX_CONTENT_TYPE_CHARS or not _PRINTABLE.fullmatch(value):
        raise BadRequest(
            f"Content-Type {quote(value)}: expected at most {MAX_CONTENT_TYPE_CHARS} printable ASCII characters"
        )
    return value


def check_shape(shape: tuple[int, ...], label: str) -> tuple[int, ...]:
    """Dimension count and element count within bounds (each dimension already >= 0)."""
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"{label}: shape has {len(shape)} dimensions, at most {MAX_DIMS} allowed")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise BadRequest(f"{label}: shape {quote(list(shape))} has more than {MAX_ELEMENTS} elements")
    return shape


def check_nesting(data: Any, max_depth: int, label: str) -> None:
    """JSON tensor ``data`` nested at most ``max_depth`` lists deep (a tensor's data nests no
    deeper than its shape has dimensions). Iterative: a deep list must not exhaust the stack."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, list):
            continue
        if depth >= max_depth:
            raise BadRequest(f"{label}: 'data' is nested deeper than its {max_depth}-dimensional shape")
        if list in set(map(type, value)):  # at C speed first: data is often millions of numbers
            stack.extend((x, depth + 1) for x in value if isinstance(x, list))


MAX_JSON_DEPTH = MAX_DIMS + 4  # a request nests objects and lists a few levels above tensor data
_OPEN, _CLOSE = ord("["), ord("]")


def json_too_deep(text: bytes | memoryview, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` may nest lists deeper than ``limit``, at C speed: a body with few
    "[" cannot; otherwise the bracket depth is summed with numpy (brackets inside strings may
    over-count, so a True is an upper bound: confirm with ``check_nesting`` on the parsed data).
    Walking the parsed tensor data in Python instead costs ~1 ms per 40k elements."""
    raw = bytes(text) if isinstance(text, memoryview) else text
    if raw.count(b"[") <= limit:
        return False
    arr = np.frombuffer(raw, dtype=np.uint8)
    steps = (arr == _OPEN).astype(np.int32) - (arr == _CLOSE)
    return int(np.cumsum(steps).max()) > limit
