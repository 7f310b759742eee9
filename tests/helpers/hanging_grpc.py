"""A V2 gRPC server whose ModelReady never answers: a readiness probe to it waits out its
deadline (a server that only accepts connections fails the probe at once: gRPC gives up on a
connection without HTTP/2 SETTINGS within its connect timeout)."""

from __future__ import annotations

import asyncio

import grpc


async def hanging_grpc_server() -> tuple[grpc.aio.Server, int]:
    async def never(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelReady": grpc.unary_unary_rpc_method_handler(never)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
