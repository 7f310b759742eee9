"""A gRPC server for unary calls on the running event loop: HTTP/2 over asyncio, no C core.

Why: grpc.aio hands every call between its poller thread and the event loop (about 25 system
calls per call), and its own share of a gateway query's CPU was larger than the gateway's
(``python -m benchmarks.grpc_ladder``: an echo server costs ~125 us per call on grpc.aio,
~28 us here). The gateway serves unary calls (and the endpoint picker one bidirectional streaming method,
Envoy's ext_proc), so the part of gRPC it needs is small:
HTTP/2 framing, flow control, HPACK (the ``hpack`` package) and gRPC's message framing and
status trailers.
"""

from gateway.grpc_server.server import GrpcServer
from gateway.grpc_server.service import CallStream, RpcError, StreamMethod, UnaryMethod, call_opened

__all__ = ["CallStream", "GrpcServer", "RpcError", "StreamMethod", "UnaryMethod", "call_opened"]
