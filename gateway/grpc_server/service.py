"""What a gRPC service is to either server: unary methods from request bytes to response bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

# A unary method: the serialized request in, the serialized response out; RpcError for a status.
UnaryMethod = Callable[[bytes], Awaitable[bytes]]


class RpcError(Exception):
    """End the call with this status, details and trailing metadata instead of a response."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = tuple(trailers)
