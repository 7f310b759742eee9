"""The few protobuf wire-format pieces the gateway writes by hand, for fixed-shape fields on the
hot path (tensor bytes appended to a response, the gateway's own response parameters).

Protobuf merges a message's fields as they come: bytes appended to a serialized message add to
its repeated fields and map, and a later map entry replaces an earlier one with the same key.
"""

from __future__ import annotations

from functools import lru_cache

# ModelInferResponse: parameters (field 4, map<string, InferParameter>) and raw_output_contents
# (field 6), both length-delimited. A map entry: key (field 1), value (field 2).
PARAMETERS_TAG = b"\x22"
RAW_OUTPUT_TAG = b"\x32"
_KEY_TAG, _VALUE_TAG = b"\x0a", b"\x12"
# InferParameter's oneof: int64_param (field 2, varint), string_param (field 3, length-delimited).
_INT64_PARAM_TAG, _STRING_PARAM_TAG = b"\x10", b"\x1a"


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def _parameter_entry(key: str, value: bytes) -> bytes:
    return _delimited(PARAMETERS_TAG, _delimited(_KEY_TAG, key.encode()) + _delimited(_VALUE_TAG, value))


@lru_cache(maxsize=4096)
def string_parameter(key: str, value: str) -> bytes:
    """A serialized ``ModelInferResponse`` holding only the parameter ``key`` = ``value``."""
    return _parameter_entry(key, _delimited(_STRING_PARAM_TAG, value.encode()))


@lru_cache(maxsize=256)
def _int64_prefix(key: str, size: int) -> bytes:
    return _parameter_entry(key, _INT64_PARAM_TAG + bytes(size))[:-size]


def int64_parameter(key: str, value: int) -> bytes:
    """A serialized ``ModelInferResponse`` holding only the parameter ``key`` = ``value``."""
    encoded = varint(value if value >= 0 else value + (1 << 64))  # negative: 10-byte two's complement
    return _int64_prefix(key, len(encoded)) + encoded


def model_name_override(name: str) -> bytes:
    """Field 1 (``model_name``) of a ``ModelInferRequest``, serialized: appended to a serialized
    request it replaces the model name (protobuf keeps the last value of a scalar field), so a
    request is sent to a variant's instance without being parsed and re-encoded."""
    return _delimited(b"\x0a", name.encode())
