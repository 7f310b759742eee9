"""The listening gRPC server: its settings, its connections, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.grpc_server.connection import GrpcConnection
from gateway.grpc_server.frames import DEFAULT_MAX_FRAME, LARGEST_MAX_FRAME, MAX_SETTING, MAX_WINDOW
from gateway.grpc_server.service import StreamMethod, UnaryMethod


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server advertises and enforces per connection.

    The receive windows are large, and the stream windows given back early, so a client never
    waits on them for one request; what a request may hold is bounded by ``max_message_bytes``.
    The connection window is given back only as requests end, so it also bounds the bytes of
    unfinished requests on one connection; it is at least ``max_message_bytes`` + 5 (the gRPC
    prefix) + 16 KiB, so that one request of the largest size always fits (``receive_window``).

    The rest bound what one connection may cost (see ``connection.py``):

    * ``request_timeout_s``: a request must have fully arrived this long after its HEADERS, or
      its call ends (CANCELLED) and its method is never called. Generous, for large requests on
      slow links; the client's ``grpc-timeout``, if shorter, still ends the call first;
    * ``stall_timeout_s``: an answer held back by flow control, or writes the client does not
      read (reading from it is paused meanwhile), for this long end the stream (RST_STREAM
      CANCEL) or the connection;
    * ``write_buffer_bytes``: the socket's write buffer high-water mark, over which the server
      stops reading the client;
    * ``max_buffered_answer_bytes``: answers waiting for the client (for flow control or in the
      write buffer) on one connection; past it, and once the write buffer is over its mark, a
      new answer ends its call with RESOURCE_EXHAUSTED instead of waiting too;
    * ``control_frame_*``: a token bucket per connection. Each frame that asks for no call
      (PING, SETTINGS, PRIORITY, RST_STREAM, a WINDOW_UPDATE that lets no answer out, empty
      DATA or CONTINUATION, unknown types, a stream reset or refused) takes a unit; the bucket
      holds ``control_frame_budget``, refills ``control_frame_refill_per_s`` units a second and
      ``control_frame_credit_per_call`` per answered call. Empty: GOAWAY ENHANCE_YOUR_CALM.
    """

    max_message_bytes: int = 4 * 1024 * 1024  # grpc's default receive limit
    # As Go's HTTP/2 server (250) and nginx (128): a client's burst of calls, or of streams it
    # then holds, stays a bounded share of the loop.
    max_concurrent_streams: int = 256
    stream_window: int = 8 * 1024 * 1024
    connection_window: int = 32 * 1024 * 1024
    max_frame_bytes: int = 1024 * 1024
    max_header_list_bytes: int = 64 * 1024
    request_timeout_s: float = 30.0
    stall_timeout_s: float = 5.0
    write_buffer_bytes: int = 1024 * 1024
    max_buffered_answer_bytes: int = 64 * 1024 * 1024
    control_frame_budget: int = 1000
    control_frame_refill_per_s: float = 100.0
    control_frame_credit_per_call: int = 10

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
        for name in ("request_timeout_s", "stall_timeout_s", "control_frame_refill_per_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0")
        if self.write_buffer_bytes < 1 or self.max_buffered_answer_bytes < 1:
            raise ValueError("write_buffer_bytes and max_buffered_answer_bytes must be >= 1")
        if self.control_frame_budget < 1 or self.control_frame_credit_per_call < 0:
            raise ValueError("control_frame_budget must be >= 1 and control_frame_credit_per_call >= 0")

    @property
    def receive_window(self) -> int:
        """The connection window the server advertises: ``connection_window``, or more so that
        one request of ``max_message_bytes`` fits."""
        return min(MAX_WINDOW, max(self.connection_window, self.max_message_bytes + 5 + DEFAULT_MAX_FRAME))


class GrpcServer:
    """Serves ``methods`` (full paths such as ``/inference.GRPCInferenceService/ModelInfer``)
    over cleartext HTTP/2 (gRPC's "prior knowledge"), on the running loop."""

    def __init__(
        self,
        methods: Mapping[str, UnaryMethod],
        settings: ServerSettings | None = None,
        streams: Mapping[str, StreamMethod] | None = None,
    ) -> None:
        """``streams``: bidirectional streaming methods, by path (exempt from
        ``request_timeout_s``: a stream's client decides how long it lasts)."""
        self._methods = {path.encode(): fn for path, fn in methods.items()}
        self._streaming = {path.encode(): fn for path, fn in (streams or {}).items()}
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
        conn = GrpcConnection(self._methods, self.settings, self._streaming)
        self._connections.add(conn)
        conn.closed.add_done_callback(lambda _: self._connections.discard(conn))
        return conn

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening, let the open calls finish (up to ``grace`` seconds; None: no limit),
        then close every connection: calls still open then are cancelled (a streaming method
        waiting for its next message sees the end of its input instead)."""
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
