"""The V2 gRPC methods served by grpc.aio (``gateway.grpc_server: "grpcio"``), the C core's server.

Why keep it: it is the reference implementation of gRPC, for a client that the gateway's own
server (``gateway.grpc_server``) does not serve well, and the baseline of its benchmark.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import grpc

from gateway.grpc_server import RpcError, UnaryMethod


class GrpcioHandler(grpc.GenericRpcHandler):
    """Looks a call's full method path up in ``methods``; requests and responses stay bytes."""

    def __init__(self, methods: Mapping[str, UnaryMethod]) -> None:
        self._handlers = {
            path: grpc.unary_unary_rpc_method_handler(_adapt(fn)) for path, fn in methods.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


def _adapt(fn: UnaryMethod) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await fn(request)
        except RpcError as exc:
            if exc.trailers:
                context.set_trailing_metadata(exc.trailers)
            await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable") from None

    return handle


async def start_grpcio_server(
    methods: Mapping[str, UnaryMethod], host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server for ``methods`` and its port (0 if it could not listen)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
            # As the native server: bounds the streams (and held requests) of one connection.
            ("grpc.max_concurrent_streams", 256),
        ]
    )
    server.add_generic_rpc_handlers((GrpcioHandler(methods),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound:
        await server.start()
    return server, bound
