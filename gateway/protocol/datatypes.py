"""V2 tensor datatypes: the names the protocol allows and their element sizes in bytes.

Pure lookups, no I/O. ``BYTES`` has no fixed size: in the binary tensor extension each element
is a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.errors import BadRequest

# Element size in bytes; None for BYTES (variable length). BF16 is Triton's extension.
DATATYPE_SIZES: dict[str, int | None] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": None,
}


def element_size(datatype: str) -> int | None:
    """Bytes per element of ``datatype`` (None for BYTES); BadRequest if the name is not V2's."""
    try:
        return DATATYPE_SIZES[datatype]
    except KeyError:
        raise BadRequest(
            f"unknown datatype {datatype!r}: expected one of {', '.join(DATATYPE_SIZES)}"
        ) from None


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar, shape ``[]``)."""
    return math.prod(shape)


def byte_size(datatype: str, shape: Sequence[int]) -> int | None:
    """Bytes of a tensor in the binary/raw encoding, or None for BYTES (its size depends on the data)."""
    size = element_size(datatype)
    return None if size is None else size * element_count(shape)


def count_bytes_elements(buf: bytes | memoryview) -> int:
    """Count the length-prefixed elements of a BYTES tensor in binary form.

    Only the 4-byte prefixes are read (to check the element count against the shape); the
    payload is not decoded. BadRequest if an element runs past the end of the buffer.
    """
    view = memoryview(buf)
    pos, count, end = 0, 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise BadRequest("BYTES tensor data is truncated: an element's 4-byte length prefix is cut off")
        n = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4 + n
        if pos > end:
            raise BadRequest("BYTES tensor data is truncated: an element is longer than the data left")
        count += 1
    return count
