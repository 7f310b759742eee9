"""The one place that maps the project's errors to V2 protocol errors, and back.

HTTP: the error's ``status`` with body ``{"error": message}`` (and ``Retry-After`` for
``Overloaded``). gRPC: a status code with the message as details. The reverse maps let a
backend client turn an instance's V2 error into the same ``InferenceError``. Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
import orjson

from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    ModelNotFound,
    NoHealthyInstance,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)

# HTTP status -> gRPC code. 413 and 503 both mean "too much"; RESOURCE_EXHAUSTED is also what
# gRPC itself answers to an oversized message. 502 (no healthy instance) is UNAVAILABLE so that
# gRPC clients may retry it.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,  # MLServer's validation errors
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,  # Triton's TRITONSERVER_ERROR_UNSUPPORTED
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.RESOURCE_EXHAUSTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# A gRPC status's HTTP equivalent (Google's mapping, as grpc-gateway and Envoy use it): one
# ``code`` vocabulary in the metrics for both protocols.
HTTP_OF_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_BY_STATUS: dict[int, type[InferenceError]] = {
    400: BadRequest,
    404: ModelNotFound,
    413: PayloadTooLarge,
    502: Unavailable,
    503: Overloaded,
    504: DeadlineExceeded,
}

_BY_GRPC_CODE: dict[grpc.StatusCode, type[InferenceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


@dataclass(frozen=True, slots=True)
class HttpError:
    """What an HTTP front end sends for an error: status, JSON body and extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def error_body(message: str) -> bytes:
    """The V2 error body: ``{"error": message}`` as JSON bytes."""
    return orjson.dumps({"error": message})


def http_error(exc: InferenceError) -> HttpError:
    """Map an ``InferenceError`` to its V2 HTTP response."""
    headers = {"Content-Type": "application/json"}
    if isinstance(exc, (Overloaded, NoHealthyInstance)):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return HttpError(exc.status, error_body(str(exc)), headers)


def grpc_status(exc: InferenceError) -> grpc.StatusCode:
    """Map an ``InferenceError`` to a gRPC status code (INTERNAL for anything unmapped). Both
    kinds of 503 share the status but not the code: overload is RESOURCE_EXHAUSTED, no healthy
    instance UNAVAILABLE (a gRPC client retries it)."""
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return GRPC_CODES.get(exc.status, grpc.StatusCode.INTERNAL)


def error_from_http(status: int, body: bytes) -> InferenceError:
    """Rebuild the ``InferenceError`` of a V2 HTTP error response (for backend clients)."""
    message = body.decode("utf-8", "replace")
    try:
        obj = orjson.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            message = obj["error"]
    except orjson.JSONDecodeError:
        pass
    cls = _BY_STATUS.get(status)
    return cls(message) if cls is not None else InferenceError(f"HTTP {status}: {message}")


def error_from_grpc(code: grpc.StatusCode, details: str | None) -> InferenceError:
    """Rebuild the ``InferenceError`` of a gRPC error status (for backend clients).

    RESOURCE_EXHAUSTED is ambiguous; gRPC's own "message larger than max" becomes
    ``PayloadTooLarge``, anything else ``Overloaded``.
    """
    message = details or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message:
        return PayloadTooLarge(message)
    cls = _BY_GRPC_CODE.get(code)
    return cls(message) if cls is not None else InferenceError(f"gRPC {code.name}: {message}")
