"""What a gRPC service is to either server: unary methods from request bytes to response bytes,
and (the gateway's own server only) bidirectional streaming methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Protocol

import grpc

# A unary method: the serialized request in, the serialized response out; RpcError for a status.
UnaryMethod = Callable[[bytes], Awaitable[bytes]]



class CallStream(Protocol):
    """One streaming call, as its method sees it: the client's messages as they arrive (the
    iteration ends when the client half-closes, or resets the stream while the method waits for a
    message: a reset at any other time cancels the method), and ``send`` for a message back
    (dropped once the stream is closed). The method's return ends the call with OK; an
    ``RpcError`` with its status."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def send(self, message: bytes) -> None: ...


# A bidirectional streaming method: called as soon as the call's HEADERS are in.
StreamMethod = Callable[[CallStream], Awaitable[None]]

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
