"""What a gRPC service is to either server: unary methods from request bytes to response bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar

import grpc

# A unary method: the serialized request in, the serialized response out; RpcError for a status.
UnaryMethod = Callable[[bytes], Awaitable[bytes]]

# When the call's HEADERS arrived (``time.monotonic()``, s), for a method that this server runs:
# a method is called only once the whole request is in, and a large one takes a while to arrive.
# None outside such a call (grpc.aio runs the same methods and does not set it).
call_opened: ContextVar[float | None] = ContextVar("call_opened", default=None)


class RpcError(Exception):
    """End the call with this status, details and trailing metadata instead of a response."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = tuple(trailers)
