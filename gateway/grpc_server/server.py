"""The listening gRPC server: its settings, its connections, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.grpc_server.connection import GrpcConnection
from gateway.grpc_server.frames import DEFAULT_MAX_FRAME, LARGEST_MAX_FRAME, MAX_SETTING, MAX_WINDOW
from gateway.grpc_server.service import UnaryMethod


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server advertises and enforces per connection.

    The receive windows are large and given back early, so a client never waits on them for
    one request; what a request may hold is bounded by ``max_message_bytes`` instead.
    """

    max_message_bytes: int = 4 * 1024 * 1024  # grpc's default receive limit
    max_concurrent_streams: int = 1024
    stream_window: int = 8 * 1024 * 1024
    connection_window: int = 32 * 1024 * 1024
    max_frame_bytes: int = 1024 * 1024
    max_header_list_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if not DEFAULT_MAX_FRAME <= self.max_frame_bytes <= LARGEST_MAX_FRAME:
            raise ValueError(f"max_frame_bytes must be in [{DEFAULT_MAX_FRAME}, {LARGEST_MAX_FRAME}]")
        if (
            not 65_535 <= self.stream_window <= MAX_WINDOW
            or not 65_535 <= self.connection_window <= MAX_WINDOW
        ):
            raise ValueError("windows must be in [65535, 2^31-1]")
        if self.max_message_bytes < 0 or self.max_concurrent_streams < 1:
            raise ValueError("max_message_bytes must be >= 0 and max_concurrent_streams >= 1")
        # Both go out as 32-bit SETTINGS values: checked here, not on every connection.
        if self.max_concurrent_streams > MAX_SETTING or not 0 <= self.max_header_list_bytes <= MAX_SETTING:
            raise ValueError("max_concurrent_streams and max_header_list_bytes must fit in 32 bits")


class GrpcServer:
    """Serves ``methods`` (full paths such as ``/inference.GRPCInferenceService/ModelInfer``)
    over cleartext HTTP/2 (gRPC's "prior knowledge"), on the running loop."""

    def __init__(self, methods: Mapping[str, UnaryMethod], settings: ServerSettings | None = None) -> None:
        self._methods = {path.encode(): fn for path, fn in methods.items()}
        self.settings = settings or ServerSettings()
        self._server: asyncio.Server | None = None
        self._connections: set[GrpcConnection] = set()
        self.port = 0

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> int:
        """Listen; returns the port (useful with 0). OSError if the address is taken."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, host, port, backlog=backlog, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def _connection(self) -> GrpcConnection:
        conn = GrpcConnection(self._methods, self.settings)
        self._connections.add(conn)
        conn.closed.add_done_callback(lambda _: self._connections.discard(conn))
        return conn

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening, let the open calls finish (up to ``grace`` seconds; None: no limit),
        then close every connection; calls still open then are cancelled."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.drain()
        waiting = [conn.closed for conn in connections if not conn.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=grace)
        for conn in connections:
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
