"""The asyncio gRPC server (gateway/grpc_server/) over real sockets: with grpc.aio as the client,
with the ``h2`` library as a raw HTTP/2 client, and with frames written by hand."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from gateway.grpc_server import GrpcServer, RpcError, UnaryMethod, call_opened
from gateway.grpc_server.connection import GrpcConnection
from gateway.grpc_server.frames import PREFACE, ErrorCode, Flag, FrameType, frame, settings_frame
from gateway.grpc_server.headers import parse_timeout, status_block
from gateway.grpc_server.server import ServerSettings

ECHO = "/test.Service/Echo"
FAIL = "/test.Service/Fail"
BUSY = "/test.Service/Busy"
WAIT = "/test.Service/Wait"
MiB = 1024 * 1024
STEP_S = 5.0  # the most any single step of a test may take before it counts as hung


# -- the service -----------------------------------------------------------------------------


async def echo(request: bytes) -> bytes:
    return request


async def fail(request: bytes) -> bytes:
    raise ValueError("a bug in the method")


async def busy(request: bytes) -> bytes:
    raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (("retry-after", "2"),))


class Gate:
    """A method that waits for ``release``; says when it started and whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def __call__(self, request: bytes) -> bytes:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"released:" + request


def methods(gate: Gate | None = None) -> dict[str, UnaryMethod]:
    return {ECHO: echo, FAIL: fail, BUSY: busy, WAIT: gate or Gate()}


@contextlib.asynccontextmanager
async def serving(
    service: Mapping[str, UnaryMethod] | None = None, settings: ServerSettings | None = None
) -> AsyncIterator[tuple[GrpcServer, int]]:
    server = GrpcServer(service if service is not None else methods(), settings)
    port = await server.start("127.0.0.1", 0)
    assert port > 0
    try:
        yield server, port
    finally:
        await server.stop(grace=0)


async def within(awaitable: Any, timeout: float = STEP_S) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


# -- grpc.aio as the client ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def grpc_channel(port: int, max_message: int = 4 * MiB) -> AsyncIterator[grpc.aio.Channel]:
    options = [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        yield channel


async def echo_works(port: int, payload: bytes = b"still serving") -> None:
    async with grpc_channel(port) as channel:
        assert await channel.unary_unary(ECHO)(payload, timeout=5) == payload


async def test_echo_round_trip() -> None:
    async with serving() as (_, port), grpc_channel(port) as channel:
        assert await channel.unary_unary(ECHO)(b"hello", timeout=5) == b"hello"
        assert await channel.unary_unary(ECHO)(b"", timeout=5) == b""


async def test_a_method_sees_when_its_call_opened() -> None:
    """``call_opened``: when the call's HEADERS arrived, set for the method's own task only."""
    seen: list[tuple[float | None, float]] = []

    async def opened(request: bytes) -> bytes:
        seen.append((call_opened.get(), time.monotonic()))
        return b""

    before = time.monotonic()
    async with (
        serving(methods() | {"/test.Service/Opened": opened}) as (_, port),
        grpc_channel(port) as channel,
    ):
        stub = channel.unary_unary("/test.Service/Opened")
        await stub(b"a", timeout=5)
        await stub(b"b" * MiB, timeout=5)
    assert call_opened.get() is None
    assert len(seen) == 2 and seen[0][0] != seen[1][0]
    for stamp, entered in seen:
        assert stamp is not None and before <= stamp <= entered


async def test_many_concurrent_calls_each_get_their_own_answer() -> None:
    n = 200
    arrived = 0
    all_in = asyncio.Event()

    async def together(request: bytes) -> bytes:
        # Answers only once every call is in progress: the calls really are concurrent.
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_in.set()
        await all_in.wait()
        return request[::-1]

    async with (
        serving(methods() | {"/test.Service/Together": together}) as (_, port),
        grpc_channel(port) as channel,
    ):
        stub = channel.unary_unary("/test.Service/Together")
        replies = await within(
            asyncio.gather(*(stub(f"call-{i}".encode(), timeout=10) for i in range(n))), 10
        )
    assert replies == [f"call-{i}".encode()[::-1] for i in range(n)]


async def test_large_request_and_large_response() -> None:
    size = 6 * MiB
    request = os.urandom(size)

    async def bigger(body: bytes) -> bytes:
        return body[::-1] + b"!"

    settings = ServerSettings(max_message_bytes=8 * MiB)
    async with (
        serving(methods() | {"/test.Service/Big": bigger}, settings) as (_, port),
        grpc_channel(port, max_message=16 * MiB) as channel,
    ):
        reply = await channel.unary_unary("/test.Service/Big")(request, timeout=10)
        assert reply == request[::-1] + b"!"
        # The connection is still sound after both windows were used up and given back.
        again = os.urandom(size)
        assert await channel.unary_unary(ECHO)(again, timeout=10) == again


async def test_rpc_error_gives_code_details_and_trailing_metadata() -> None:
    async with serving() as (_, port), grpc_channel(port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(BUSY)(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "busy"
    assert ("retry-after", "2") in list(info.value.trailing_metadata())


async def test_details_are_percent_encoded_and_round_trip() -> None:
    details = "50% über Last ☃ — %41 %%\tline\nnext 🙂"

    async def odd(request: bytes) -> bytes:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, details)

    async with serving(methods() | {"/test.Service/Odd": odd}) as (_, port), grpc_channel(port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Service/Odd")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == details


async def test_a_method_raising_gives_internal_and_the_server_keeps_serving() -> None:
    async with serving() as (_, port), grpc_channel(port) as channel:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(FAIL)(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "a bug in the method" not in (info.value.details() or "")  # no internals leak
            assert await channel.unary_unary(ECHO)(b"after", timeout=5) == b"after"


async def test_a_cancel_from_inside_the_method_still_ends_the_call() -> None:
    # CancelledError out of a method the server did not cancel (say, a future it awaited was
    # cancelled by its owner) must not leave the call unanswered until the client's deadline.
    async def gives_up(request: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        return await future

    async with serving(methods() | {"/test.Service/GivesUp": gives_up}) as (server, port):
        async with grpc_channel(port) as channel:
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Service/GivesUp")(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.CANCELLED
            assert time.monotonic() - start < 3.0  # not the 5 s deadline
            assert await channel.unary_unary(ECHO)(b"after", timeout=5) == b"after"
        # Nothing is left open: a stop with no time limit returns.
        await within(server.stop(grace=None))


async def test_unknown_method_is_unimplemented() -> None:
    async with serving() as (_, port), grpc_channel(port) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Service/Nope")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/test.Service/Nope" in (info.value.details() or "")


async def test_request_over_max_message_is_resource_exhausted() -> None:
    async with (
        serving(settings=ServerSettings(max_message_bytes=1000)) as (_, port),
        grpc_channel(port) as channel,
    ):
        assert await channel.unary_unary(ECHO)(b"x" * 1000, timeout=5) == b"x" * 1000  # at the limit
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(ECHO)(b"x" * 1001, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(ECHO)(os.urandom(3 * MiB), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The rest of an oversized request is dropped without harm to the connection.
        assert await channel.unary_unary(ECHO)(b"small", timeout=5) == b"small"


async def test_client_timeout_is_deadline_exceeded_and_cancels_the_method() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), grpc_channel(port) as channel:
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(WAIT)(b"x", timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 3.0
        await within(gate.cancelled.wait())
        assert await channel.unary_unary(ECHO)(b"after", timeout=5) == b"after"


async def test_client_cancel_cancels_the_method() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), grpc_channel(port) as channel:
        call = channel.unary_unary(WAIT)(b"x", timeout=30)
        await within(gate.started.wait())
        assert call.cancel()
        await within(gate.cancelled.wait())
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await channel.unary_unary(ECHO)(b"after", timeout=5) == b"after"


# -- graceful stop ---------------------------------------------------------------------------


async def test_stop_lets_a_call_in_progress_finish_and_refuses_new_connections() -> None:
    gate = Gate()
    server = GrpcServer(methods(gate))
    port = await server.start("127.0.0.1", 0)
    async with grpc_channel(port) as channel:
        call = channel.unary_unary(WAIT)(b"inflight", timeout=30)
        await within(gate.started.wait())
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0)  # one step of stop(): it closes the listener before its first await
        assert not stopping.done()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not stopping.done()  # waiting for the call
        gate.release.set()
        assert await within(call) == b"released:inflight"
        await within(stopping)
    assert not gate.cancelled.is_set()


async def test_stop_sends_goaway_and_refuses_new_streams_on_an_open_connection() -> None:
    gate = Gate()
    server = GrpcServer(methods(gate))
    port = await server.start("127.0.0.1", 0)
    client = await H2Client.connect(port)
    first = client.request(WAIT, message(b"one"))
    await within(gate.started.wait())
    stopping = asyncio.create_task(server.stop(grace=5))
    goaway = await client.wait_for(h2.events.ConnectionTerminated)
    assert goaway.error_code == ErrorCode.NO_ERROR
    assert goaway.last_stream_id == first
    # h2 takes no frames after a GOAWAY: the rest is written and read as raw frames. A new
    # stream, then a PING whose ack says the server has handled it.
    block = client.conn.encoder.encode(request_headers(ECHO))
    client.writer.write(
        frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, first + 2, block)
        + frame(FrameType.PING, 0, 0, b"handled?")
    )
    data = b""
    while frame(FrameType.PING, Flag.ACK, 0, b"handled?") not in data:
        chunk = await within(client.reader.read(1 << 16))
        assert chunk, "closed before the PING's ack"
        data += chunk
    gate.release.set()
    data += await within(client.reader.read())  # to the end: closed once idle
    frames = [f for f in parse_frames(data) if f[0] != FrameType.PING]
    client.close()
    await within(stopping)
    refused = [f for f in frames if f[2] == first + 2]
    assert refused == [(FrameType.RST_STREAM, 0, first + 2, struct.pack(">I", ErrorCode.REFUSED_STREAM))]
    frames = [f for f in frames if f not in refused]
    assert [(kind, sid) for kind, _, sid, _ in frames] == [
        (FrameType.HEADERS, first),
        (FrameType.DATA, first),
        (FrameType.HEADERS, first),
    ]
    assert b"".join(p for kind, _, _, p in frames if kind == FrameType.DATA) == message(b"released:one")
    assert frames[-1][1] & Flag.END_STREAM
    assert decode(frames[-1][3]) == [("grpc-status", "0")]
    assert not gate.cancelled.is_set()


async def test_stop_cancels_calls_still_running_after_grace() -> None:
    gate = Gate()
    server = GrpcServer(methods(gate))
    port = await server.start("127.0.0.1", 0)
    async with grpc_channel(port) as channel:
        call = channel.unary_unary(WAIT)(b"x", timeout=30)
        await within(gate.started.wait())
        start = time.monotonic()
        await within(server.stop(grace=0.3))
        elapsed = time.monotonic() - start
        assert 0.25 <= elapsed < 3.0
        await within(gate.cancelled.wait())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await within(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- h2 as a raw HTTP/2 client ---------------------------------------------------------------


def message(payload: bytes, compressed: int = 0) -> bytes:
    """One gRPC length-prefixed message."""
    return struct.pack(">BI", compressed, len(payload)) + payload


def request_headers(path: str = ECHO, **override: str) -> list[tuple[bytes, bytes]]:
    """A gRPC request's headers; ``override``: header (``_`` for ``-``, ``method`` for
    ``:method``) to value, or to "" to leave it out."""
    headers = {":method": "POST", ":scheme": "http", ":path": path, ":authority": "localhost",
               "content-type": "application/grpc", "te": "trailers"}  # fmt: skip
    for key, value in override.items():
        name = ":method" if key == "method" else key.replace("_", "-")
        headers[name] = value
    return [(k.encode(), v.encode()) for k, v in headers.items() if v]


@dataclass
class Reply:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    ended: bool = False
    reset: int | None = None

    @property
    def metadata(self) -> dict[bytes, bytes]:
        """The status fields: the trailers, or the headers of a Trailers-Only answer."""
        return self.trailers or self.headers

    @property
    def status(self) -> int:
        return int(self.metadata[b"grpc-status"])


class H2Client:
    """An ``h2`` client connection over an asyncio stream; answers are collected per stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_ack: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.auto_ack = auto_ack  # give back the flow control window for DATA as it arrives
        self.replies: dict[int, Reply] = {}
        self.events: list[h2.events.Event] = []
        self.eof = False

    @classmethod
    async def connect(
        cls, port: int, settings: dict[int, int] | None = None, *, auto_ack: bool = True, send: bool = True
    ) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, auto_ack)
        client.conn.initiate_connection()
        if settings:
            client.conn.update_settings(settings)
        if send:
            client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def close(self) -> None:
        self.writer.close()

    def request(
        self,
        path: str = ECHO,
        body: bytes | None = b"",
        *,
        end: bool = True,
        headers: Mapping[str, str] | None = None,
        **override: str,
    ) -> int:
        """Send a request (``body`` None: headers only); returns its stream id. ``headers`` and
        ``override``: as for ``request_headers``."""
        sid = self.conn.get_next_available_stream_id()
        self.replies[sid] = Reply()
        fields = request_headers(path, **dict(headers or {}, **override))
        self.conn.send_headers(sid, fields, end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    async def send(self, sid: int, body: bytes) -> None:
        """Send ``body`` and end the request, keeping to the server's flow control windows."""
        view = memoryview(body)
        while view:
            n = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n <= 0:
                await self.receive()  # for a WINDOW_UPDATE
                continue
            self.conn.send_data(sid, bytes(view[:n]))
            view = view[n:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    async def receive(self) -> list[h2.events.Event]:
        """The events of the next bytes from the server; [] at end of stream."""
        data = await within(self.reader.read(1 << 20))
        if not data:
            self.eof = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self._note(event)
        self.events += events
        self.flush()
        return events

    def _note(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        reply = self.replies.get(sid) if sid is not None else None
        if reply is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            reply.headers = dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            reply.trailers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            reply.body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset):
            reply.reset = event.error_code

    async def wait_for(self, kind: type[Any], predicate: Callable[[Any], bool] = lambda _: True) -> Any:
        """The first event (seen so far or next) of type ``kind`` that satisfies ``predicate``."""
        seen = 0
        while True:
            for event in self.events[seen:]:
                if isinstance(event, kind) and predicate(event):
                    return event
            seen = len(self.events)
            if self.eof:
                raise AssertionError(f"connection closed before {kind.__name__}")
            await self.receive()

    async def response(self, sid: int) -> Reply:
        reply = self.replies[sid]
        while not reply.ended and reply.reset is None:
            if self.eof:
                raise AssertionError(f"connection closed before stream {sid} ended")
            await self.receive()
        return reply


@contextlib.asynccontextmanager
async def h2_client(port: int, settings: dict[int, int] | None = None, **kw: Any) -> AsyncIterator[H2Client]:
    client = await H2Client.connect(port, settings, **kw)
    try:
        yield client
    finally:
        client.close()


async def test_h2_echo() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(b"ping-pong"))
        reply = await client.response(sid)
    assert reply.headers[b":status"] == b"200"
    assert reply.headers[b"content-type"] == b"application/grpc"
    assert reply.body == message(b"ping-pong")
    assert reply.trailers == {b"grpc-status": b"0"}
    assert reply.reset is None


async def test_h2_wrong_content_type_is_http_415() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(b"x"), content_type="application/json")
        reply = await client.response(sid)
        assert reply.headers[b":status"] == b"415"
        assert b"grpc-status" not in reply.headers
        sid = client.request(ECHO, message(b"x"), content_type="")  # none at all
        assert (await client.response(sid)).headers[b":status"] == b"415"


async def test_h2_get_is_http_405() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, None, method="GET")
        reply = await client.response(sid)
    assert reply.headers[b":status"] == b"405"
    assert reply.ended


@pytest.mark.parametrize(
    ("body", "override", "code", "needle"),
    [
        (message(b"a") + message(b"b"), {}, grpc.StatusCode.INTERNAL, "exactly one"),
        (message(b"abc")[:-1], {}, grpc.StatusCode.INTERNAL, "exactly one"),  # truncated
        (message(b"a", compressed=1), {}, grpc.StatusCode.INTERNAL, "compressed"),
        (b"", {}, grpc.StatusCode.INTERNAL, "got none"),
        (b"\x00\x00", {}, grpc.StatusCode.INTERNAL, "got none"),  # not even a whole prefix
        (message(b"a"), {"grpc_timeout": "1x"}, grpc.StatusCode.INTERNAL, "grpc-timeout"),
        (message(b"a"), {"grpc_timeout": "123456789S"}, grpc.StatusCode.INTERNAL, "grpc-timeout"),
        (message(b"a"), {"path": "/test.Service/Nope"}, grpc.StatusCode.UNIMPLEMENTED, "unknown method"),
    ],
    ids=[
        "two-messages",
        "truncated",
        "compressed",
        "empty",
        "short-prefix",
        "bad-timeout",
        "long-timeout",
        "unknown-path",
    ],
)
async def test_h2_bad_requests_get_a_status(
    body: bytes, override: dict[str, str], code: grpc.StatusCode, needle: str
) -> None:
    headers = dict(override)
    path = headers.pop("path", ECHO)
    calls: list[bytes] = []

    async def record(request: bytes) -> bytes:
        calls.append(request)
        return request

    async with serving({ECHO: record}) as (_, port), h2_client(port) as client:
        sid = client.request(path, body, headers=headers)
        reply = await client.response(sid)
        assert reply.headers[b":status"] == b"200"
        assert reply.status == code.value[0]
        assert needle in urllib.parse.unquote(reply.metadata[b"grpc-message"].decode())
        assert reply.body == b""
        assert calls == []
        # Only that stream failed: the connection goes on.
        sid = client.request(ECHO, message(b"ok"))
        assert (await client.response(sid)).body == message(b"ok")


async def test_h2_headers_only_request_is_internal() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, None)  # END_STREAM on the HEADERS
        reply = await client.response(sid)
    assert reply.status == grpc.StatusCode.INTERNAL.value[0]


async def test_h2_an_unknown_encoding_is_unimplemented_with_accept_encoding() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(b"a", compressed=1), grpc_encoding="deflate")
        reply = await client.response(sid)
        assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert reply.metadata[b"grpc-accept-encoding"] == b"identity,gzip"
        sid = client.request(ECHO, message(b"a"), grpc_encoding="identity")  # identity is fine
        assert (await client.response(sid)).body == message(b"a")


async def test_h2_a_gzip_request_gets_a_gzip_answer() -> None:
    payload = b"0123456789" * 100
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(gzip.compress(payload), compressed=1), grpc_encoding="gzip")
        reply = await client.response(sid)
    assert reply.status == 0 and reply.headers[b"grpc-encoding"] == b"gzip"
    flag, length = struct.unpack(">BI", reply.body[:5])
    assert flag == 1 and length == len(reply.body) - 5
    assert gzip.decompress(reply.body[5:]) == payload


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"not gzip at all", grpc.StatusCode.INTERNAL, "cannot decompress"),
        (gzip.compress(b"x" * 1000)[:-12], grpc.StatusCode.INTERNAL, "cannot decompress"),
        (gzip.compress(b"\0" * (5 * MiB)), grpc.StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger than max"),
    ],
)
async def test_h2_bad_or_too_large_gzip_gets_a_status_and_the_server_keeps_serving(
    body: bytes, code: grpc.StatusCode, words: str
) -> None:
    """A gzip bomb (5 MiB of zeros in 5 KiB) stops at the 4 MiB message limit."""
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(body, compressed=1), grpc_encoding="gzip")
        reply = await client.response(sid)
        assert reply.status == code.value[0] and words in urllib.parse.unquote(reply.metadata[b"grpc-message"].decode())
        sid = client.request(ECHO, message(b"ok"))
        assert (await client.response(sid)).body == message(b"ok")


@pytest.mark.parametrize("payload", [b"squeeze me " * 1000, os.urandom(300 * 1024)])  # in line; off the loop
async def test_grpc_clients_compressing_with_gzip_are_served(payload: bytes) -> None:
    async with serving() as (_, port), grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                                 compression=grpc.Compression.Gzip) as channel:
        assert await channel.unary_unary(ECHO)(payload, timeout=5) == payload


async def test_h2_answer_before_the_request_ends_resets_the_stream() -> None:
    # A request refused at its headers is answered at once; its stream is then reset (NO_ERROR),
    # and the client's further DATA on it is ignored.
    async with serving() as (_, port), h2_client(port) as client:
        sid = client.request("/test.Service/Nope", None, end=False)
        reply = await client.response(sid)
        assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
        await client.wait_for(h2.events.StreamReset, lambda e: e.stream_id == sid)
        assert reply.reset == ErrorCode.NO_ERROR
        client.writer.write(frame(FrameType.DATA, Flag.END_STREAM, sid, message(b"late")))
        sid = client.request(ECHO, message(b"next"))
        assert (await client.response(sid)).body == message(b"next")


async def test_h2_grpc_timeout_is_enforced_by_the_server() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), h2_client(port) as client:
        start = time.monotonic()
        sid = client.request(WAIT, message(b"x"), grpc_timeout="100m")
        reply = await client.response(sid)
        assert reply.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert 0.09 <= time.monotonic() - start < 3.0
        await within(gate.cancelled.wait())
        # A deadline that is not reached changes nothing.
        sid = client.request(ECHO, message(b"in time"), grpc_timeout="10S")
        reply = await client.response(sid)
        assert reply.status == 0
        assert reply.body == message(b"in time")


async def test_h2_ping_is_acked_with_its_payload() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        client.conn.ping(b"\x01pingme\xff")
        client.flush()
        ack = await client.wait_for(h2.events.PingAckReceived)
    assert ack.ping_data == b"\x01pingme\xff"


async def test_h2_server_settings_are_the_server_settings() -> None:
    settings = ServerSettings(max_concurrent_streams=77, stream_window=100_000, connection_window=1_000_000,
                              max_frame_bytes=32_768, max_header_list_bytes=9_000,
                              max_message_bytes=500_000)  # fmt: skip
    async with serving(settings=settings) as (_, port), h2_client(port) as client:
        await client.wait_for(h2.events.RemoteSettingsChanged)
        await client.wait_for(h2.events.WindowUpdated, lambda e: e.stream_id == 0)
        remote = client.conn.remote_settings
        assert remote.max_concurrent_streams == 77
        assert remote.initial_window_size == 100_000
        assert remote.max_frame_size == 32_768
        assert remote.max_header_list_size == 9_000
        assert client.conn.outbound_flow_control_window == 1_000_000
        # The server acknowledges the client's SETTINGS.
        await client.wait_for(h2.events.SettingsAcknowledged)


async def test_h2_smallest_connection_window_sends_no_zero_window_update() -> None:
    # WINDOW_UPDATE with an increment of 0 is a connection error (RFC 9113 6.9): with the
    # default connection window the server must not send one. (The connection window holds at
    # least one whole request, so that window needs a small max_message_bytes.)
    settings = ServerSettings(connection_window=65_535, stream_window=65_535, max_message_bytes=40_000)
    assert settings.receive_window == 65_535
    body = os.urandom(40_000)
    async with serving(settings=settings) as (_, port), h2_client(port) as client:
        for _ in range(4):  # more than both windows, each way, over the calls
            sid = client.request(ECHO, None, end=False)
            await client.send(sid, message(body))
            reply = await client.response(sid)
            assert reply.body == message(body)
    assert not [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]


async def test_h2_large_request_within_the_server_windows() -> None:
    # A client that keeps to the server's windows gets them back: the stream's as the server
    # reads, the connection's as each request ends.
    settings = ServerSettings(connection_window=100_000, stream_window=70_000, max_message_bytes=1 * MiB)
    body = os.urandom(900_000)
    async with serving(settings=settings) as (_, port), h2_client(port) as client:
        await client.wait_for(h2.events.RemoteSettingsChanged)
        sids = [client.request(ECHO, None, end=False) for _ in range(2)]
        for sid in sids:
            await client.send(sid, message(body))
        for sid in sids:
            assert (await client.response(sid)).body == message(body)


async def test_h2_flow_control_is_honoured_for_the_response() -> None:
    size = 50_000
    body = os.urandom(size)

    async def big(request: bytes) -> bytes:
        return body

    window = 1000
    async with (
        serving({ECHO: big}) as (_, port),
        h2_client(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}, auto_ack=False) as client,
    ):
        await client.wait_for(h2.events.SettingsAcknowledged)  # the server has our window
        sid = client.request(ECHO, message(b"go"))
        reply = client.replies[sid]
        while len(reply.body) < window:
            await client.receive()
        # A PING's ack comes after anything the server had written: nothing beyond the window.
        client.conn.ping(b"12345678")
        client.flush()
        await client.wait_for(h2.events.PingAckReceived)
        assert len(reply.body) == window
        assert b"grpc-status" not in reply.trailers
        assert not reply.ended
        # Giving the window back lets the rest through.
        acked = 0
        while not reply.ended:
            data = [e for e in client.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid]
            for event in data[acked:]:
                client.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            acked = len(data)
            client.flush()
            await client.receive()
        frames = [e for e in client.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid]
    assert reply.body == message(body)
    assert reply.status == 0
    assert max(len(e.data) for e in frames) <= window


async def test_h2_a_larger_initial_window_releases_a_blocked_answer() -> None:
    # SETTINGS_INITIAL_WINDOW_SIZE changes the window of open streams (RFC 9113 6.9.2).
    body = os.urandom(50_000)

    async def big(request: bytes) -> bytes:
        return body

    async with (
        serving({ECHO: big}) as (_, port),
        h2_client(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}, auto_ack=False) as client,
    ):
        await client.wait_for(h2.events.SettingsAcknowledged)
        sid = client.request(ECHO, message(b"go"))
        reply = client.replies[sid]
        while len(reply.body) < 1000:
            await client.receive()
        assert not reply.ended
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 60_000})
        client.flush()
        reply = await client.response(sid)  # no WINDOW_UPDATE sent: the new setting is enough
    assert reply.body == message(body)
    assert reply.status == 0


async def test_h2_concurrent_large_answers_share_the_connection_window() -> None:
    bodies = {i: os.urandom(200_000 + i) for i in range(3)}

    async def big(request: bytes) -> bytes:
        return bodies[int(request)]

    async with serving({ECHO: big}) as (_, port), h2_client(port) as client:
        sids = {client.request(ECHO, message(str(i).encode())): i for i in bodies}
        for sid, i in sids.items():
            reply = await client.response(sid)
            assert reply.status == 0
            assert reply.body == message(bodies[i])


async def test_h2_client_reset_cancels_the_method() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), h2_client(port) as client:
        sid = client.request(WAIT, message(b"x"))
        await within(gate.started.wait())
        client.conn.reset_stream(sid)
        client.flush()
        await within(gate.cancelled.wait())
        sid = client.request(ECHO, message(b"after"))
        assert (await client.response(sid)).body == message(b"after")


async def test_h2_reset_before_the_request_ends_starts_no_call() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), h2_client(port) as client:
        sid = client.request(WAIT, message(b"x"), end=False)
        client.conn.reset_stream(sid)
        client.flush()
        # A PING's ack shows the server handled the reset; then the rest of the request comes.
        client.conn.ping(b"abcdefgh")
        client.flush()
        await client.wait_for(h2.events.PingAckReceived)
        client.writer.write(frame(FrameType.DATA, Flag.END_STREAM, sid, b""))
        sid = client.request(ECHO, message(b"after"))
        assert (await client.response(sid)).body == message(b"after")
    assert gate.calls == 0


async def test_h2_streams_over_max_concurrent_are_refused() -> None:
    gate = Gate()
    # Both requests go out before the client knows the server's limit.
    async with (
        serving(methods(gate), ServerSettings(max_concurrent_streams=1)) as (_, port),
        h2_client(port, send=False) as client,
    ):
        first = client.request(WAIT, message(b"1"))
        second = client.request(WAIT, message(b"2"))
        assert (await client.response(second)).reset == ErrorCode.REFUSED_STREAM
        gate.release.set()
        assert (await client.response(first)).body == message(b"released:1")
    assert gate.calls == 1


async def test_h2_header_block_in_continuation_frames() -> None:
    # With the server's smallest frame size, a 40 kB header goes out in HEADERS + CONTINUATION.
    async with (
        serving(settings=ServerSettings(max_frame_bytes=16_384)) as (_, port),
        h2_client(port) as client,
    ):
        await client.wait_for(h2.events.RemoteSettingsChanged)
        sid = client.request(ECHO, message(b"big headers"), x_big="v" * 40_000)
        reply = await client.response(sid)
    assert reply.body == message(b"big headers")


async def test_h2_long_status_is_split_into_continuation_frames() -> None:
    details = "d" * 40_000

    async def wordy(request: bytes) -> bytes:
        raise RpcError(grpc.StatusCode.ABORTED, details, (("x-extra", "e" * 5000),))

    async with serving({ECHO: wordy}) as (_, port), h2_client(port) as client:
        sid = client.request(ECHO, message(b"x"))
        reply = await client.response(sid)
        assert reply.status == grpc.StatusCode.ABORTED.value[0]
        assert reply.metadata[b"grpc-message"] == details.encode()
        assert reply.metadata[b"x-extra"] == b"e" * 5000
        # And before the request has ended (then followed by RST_STREAM): an unknown long path.
        path = "/" + "p" * 40_000
        sid = client.request(path, None, end=False)
        await client.wait_for(h2.events.StreamReset, lambda e: e.stream_id == sid)
        early = client.replies[sid]
        assert early.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert early.metadata[b"grpc-message"].endswith(path.encode())
        assert early.reset == ErrorCode.NO_ERROR
        sid = client.request(ECHO, message(b"x"))
        assert (await client.response(sid)).status == grpc.StatusCode.ABORTED.value[0]


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        body = os.urandom(300_000)

        async def big(request: bytes) -> bytes:
            return request + body

        async with serving({ECHO: big}) as (_, port), h2_client(port) as client:
            sid = client.request(ECHO, message(b"head"))
            assert (await client.response(sid)).body == message(b"head" + body)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- frames written by hand ------------------------------------------------------------------


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "a partial frame header"
        hi, lo, kind, flags, sid = struct.unpack_from(">BHBBI", data, pos)
        length = (hi << 16) | lo
        out.append((kind, flags, sid & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data), "a partial frame"
    return out


def header_block(path: str = ECHO) -> bytes:
    return hpack.Encoder().encode(request_headers(path))


CLIENT_START = PREFACE + settings_frame({})


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.PROTOCOL_ERROR),
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", ErrorCode.PROTOCOL_ERROR),
        (CLIENT_START + struct.pack(">BHBBI", 0, 16_385, FrameType.DATA, 0, 1), ErrorCode.FRAME_SIZE_ERROR),
        (
            CLIENT_START + frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 2, header_block()),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            CLIENT_START
            + frame(
                FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff\xff"
            ),
            ErrorCode.COMPRESSION_ERROR,
        ),
        (CLIENT_START + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\x80"), ErrorCode.COMPRESSION_ERROR),
        (CLIENT_START + frame(FrameType.PING, 0, 0, b"short"), ErrorCode.FRAME_SIZE_ERROR),
        (
            CLIENT_START
            + frame(FrameType.HEADERS, 0, 1, header_block())
            + frame(FrameType.PING, 0, 0, b"8 bytes!"),
            ErrorCode.PROTOCOL_ERROR,
        ),  # not the CONTINUATION expected
        (CLIENT_START + frame(FrameType.DATA, 0, 3, b"x"), ErrorCode.PROTOCOL_ERROR),  # idle stream
        (CLIENT_START + frame(FrameType.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), ErrorCode.PROTOCOL_ERROR),
    ],
    ids=[
        "http1",
        "bad-preface",
        "frame-too-large",
        "even-stream",
        "hpack-garbage",
        "hpack-index-0",
        "short-ping",
        "no-continuation",
        "data-on-idle-stream",
        "zero-window-update",
    ],
)
async def test_raw_connection_errors_send_goaway_and_close(data: bytes, code: ErrorCode) -> None:
    async with serving(settings=ServerSettings(max_frame_bytes=16_384)) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        received = await within(reader.read())  # to the end: the server closes the connection
        writer.close()
        frames = parse_frames(received)
        assert frames[0][0] == FrameType.SETTINGS  # the server's preface
        kind, _, sid, payload = frames[-1]
        assert kind == FrameType.GOAWAY
        assert sid == 0
        last_stream, error = struct.unpack_from(">II", payload)
        assert error == code
        assert last_stream == 0
        await echo_works(port)


async def test_raw_request_fed_in_pieces() -> None:
    # Every frame split across reads, down to single bytes, still makes one request.
    request = (
        CLIENT_START
        + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block())
        + frame(FrameType.DATA, 0, 1, message(b"piece by piece")[:7])
        + frame(
            FrameType.DATA,
            Flag.END_STREAM | Flag.PADDED,
            1,
            b"\x03" + message(b"piece by piece")[7:] + b"\0\0\0",
        )
    )
    for step in (1, 2, 5, 9, 1000):
        out = await feed(request, step)
        frames = parse_frames(out)
        data = b"".join(p for kind, _, sid, p in frames if kind == FrameType.DATA and sid == 1)
        assert data == message(b"piece by piece"), step
        kind, flags, sid, _ = frames[-1]
        assert (kind, sid) == (FrameType.HEADERS, 1)
        assert flags & Flag.END_STREAM


async def raw_exchange(
    data: bytes, settings: ServerSettings | None = None
) -> list[tuple[int, int, int, bytes]]:
    """The frames the server sends for ``data`` (a whole client side), up to a PING barrier."""
    async with serving(settings=settings) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data + frame(FrameType.PING, 0, 0, b"barrier!"))
        received = b""
        while not any(k == FrameType.PING and f & Flag.ACK and p == b"barrier!"
                      for k, f, _, p in parse_frames_prefix(received)):  # fmt: skip
            chunk = await within(reader.read(65536))
            assert chunk, "the server closed the connection"
            received += chunk
        writer.close()
        await echo_works(port)
    return parse_frames_prefix(received)


def parse_frames_prefix(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The whole frames at the start of ``data``."""
    end = 0
    while len(data) - end >= 9:
        hi, lo = struct.unpack_from(">BH", data, end)
        if end + 9 + ((hi << 16) | lo) > len(data):
            break
        end += 9 + ((hi << 16) | lo)
    return parse_frames(data[:end])


async def test_raw_headers_on_an_answered_stream_are_ignored() -> None:
    # A client may still send on a stream the server has answered (RFC 9113 5.1).
    async with serving() as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            CLIENT_START
            + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block(ECHO))
            + frame(FrameType.DATA, Flag.END_STREAM, 1, message(b"first"))
        )
        received = b""
        while not any(k == FrameType.HEADERS and f & Flag.END_STREAM and sid == 1
                      for k, f, sid, _ in parse_frames_prefix(received)):  # fmt: skip
            received += await within(reader.read(65536))
        late = hpack.Encoder().encode([("x", "y")])  # a fresh encoder: no table entries needed
        writer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, late))
        writer.write(frame(FrameType.PING, 0, 0, b"barrier!"))
        while not any(k == FrameType.PING and f & Flag.ACK for k, f, _, _ in parse_frames_prefix(received)):
            chunk = await within(reader.read(65536))
            assert chunk, "the server closed the connection"
            received += chunk
        writer.close()
    frames = parse_frames_prefix(received)
    assert not [f for f in frames if f[0] in (FrameType.GOAWAY, FrameType.RST_STREAM)]
    assert b"".join(p for k, _, sid, p in frames if k == FrameType.DATA and sid == 1) == message(b"first")


async def test_raw_data_past_the_stream_window_resets_the_stream() -> None:
    # The server gives window back at half use, so only one frame larger than the window overruns it.
    settings = ServerSettings(stream_window=65_535, max_frame_bytes=100_000)
    frames = await raw_exchange(
        CLIENT_START
        + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block(ECHO))
        + frame(FrameType.DATA, 0, 1, b"x" * 70_000),
        settings,
    )
    resets = [struct.unpack(">I", p)[0] for k, _, sid, p in frames if k == FrameType.RST_STREAM and sid == 1]
    assert resets == [ErrorCode.FLOW_CONTROL_ERROR]
    assert not [f for f in frames if f[0] == FrameType.GOAWAY]


async def test_raw_data_past_the_connection_window_is_a_connection_error() -> None:
    # A small max_message_bytes: the connection window is never below what one request needs.
    settings = ServerSettings(connection_window=65_535, max_frame_bytes=100_000, max_message_bytes=1000)
    async with serving(settings=settings) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            CLIENT_START
            + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block(ECHO))
            + frame(FrameType.DATA, 0, 1, b"x" * 70_000)
        )
        received = await within(reader.read())
        writer.close()
        await echo_works(port)
    kind, _, _, payload = parse_frames(received)[-1]
    assert kind == FrameType.GOAWAY
    assert struct.unpack_from(">II", payload)[1] == ErrorCode.FLOW_CONTROL_ERROR


async def test_drain_before_the_connection_is_set_up_still_sends_goaway() -> None:
    conn = GrpcConnection({ECHO.encode(): echo}, ServerSettings())
    conn.drain()
    transport = FakeTransport()
    conn.connection_made(transport)
    frames = parse_frames(bytes(transport.out))
    assert [k for k, _, _, _ in frames] == [FrameType.SETTINGS, FrameType.WINDOW_UPDATE, FrameType.GOAWAY]
    assert transport.closing  # idle: closed (the fake has no half-close)


async def test_a_drained_connection_half_closes_and_still_reads() -> None:
    # After the last answer the server sends EOF but keeps reading until the client closes, so a
    # frame in flight does not turn the close into a reset that could eat the answer.
    gate = Gate()
    async with serving(methods(gate)) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            CLIENT_START
            + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block(WAIT))
            + frame(FrameType.DATA, Flag.END_STREAM, 1, message(b"last"))
        )
        await within(gate.started.wait())
        stopping = asyncio.ensure_future(server.stop(grace=5))
        gate.release.set()
        received = await within(reader.read())  # EOF from the server: it half-closed
        writer.write(frame(FrameType.PING, 0, 0, b"in fligh"))  # the server still reads this
        await writer.drain()
        writer.close()
        await within(stopping)
    frames = parse_frames(received)
    assert b"".join(p for k, _, sid, p in frames if k == FrameType.DATA and sid == 1) == message(
        b"released:last"
    )
    assert any(k == FrameType.HEADERS and f & Flag.END_STREAM and sid == 1 for k, f, sid, _ in frames)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.wrote = asyncio.Event()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data
        self.wrote.set()

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def feed(data: bytes, step: int) -> bytes:
    """What a connection writes for ``data`` arriving ``step`` bytes at a time, once its call ends."""
    conn = GrpcConnection({ECHO.encode(): echo}, ServerSettings())
    transport = FakeTransport()
    conn.connection_made(transport)
    for i in range(0, len(data), step):
        conn.data_received(data[i : i + step])
    assert not transport.closing
    while not any(kind == FrameType.HEADERS and flags & Flag.END_STREAM
                  for kind, flags, _, _ in parse_frames(bytes(transport.out))):  # fmt: skip
        transport.wrote.clear()
        await within(transport.wrote.wait())
    conn.connection_lost(None)
    return bytes(transport.out)


# -- headers and settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"7u", 7e-6), (b"9n", 9e-9),
        (b"0S", 0.0), (b"99999999S", 99_999_999.0), (b"000000010m", None),  # 9 digits
        (b"123456789n", None), (b"5s", None), (b"5", None), (b"S", None), (b"", None), (b"-1S", None),
        (b"1.5S", None), (b" 1S", None), (b"1 S", None), (b"\xd9\xa1S", None),  # a non-ASCII digit
    ],
)  # fmt: skip
def test_parse_timeout(value: bytes, seconds: float | None) -> None:
    result = parse_timeout(value)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def decode(block: bytes) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in hpack.Decoder(max_header_list_size=1 << 20).decode(block)]


@pytest.mark.parametrize("with_headers", [False, True])
def test_status_block_round_trips_through_hpack(with_headers: bool) -> None:
    message_text = "nope: 100% ünïcødé\r\n☃ %zz"
    block = status_block(
        8, message_text, [("Retry-After", "2"), ("X-Mixed-Case", "Value Kept")], with_headers=with_headers
    )
    fields = decode(block)
    head = [(":status", "200"), ("content-type", "application/grpc")] if with_headers else []
    assert fields[: len(head)] == head
    rest = dict(fields[len(head) :])
    assert rest["grpc-status"] == "8"
    encoded = rest["grpc-message"]
    assert encoded.isascii() and encoded.isprintable()
    assert "%25" in encoded and "%zz" not in encoded  # "%" itself is escaped
    assert urllib.parse.unquote(encoded) == message_text
    assert rest["retry-after"] == "2"
    assert rest["x-mixed-case"] == "Value Kept"
    assert list(rest) == ["grpc-status", "grpc-message", "retry-after", "x-mixed-case"]


def test_status_block_without_message() -> None:
    assert decode(status_block(0, "", with_headers=False)) == [("grpc-status", "0")]


def test_status_block_with_long_fields() -> None:
    # Lengths over 126 take HPACK's multi-byte integers.
    for n in (126, 127, 128, 255, 16_383, 16_384, 70_000):
        fields = dict(decode(status_block(2, "m" * n, [("k", "v" * n)], with_headers=False)))
        assert fields["grpc-message"] == "m" * n
        assert fields["k"] == "v" * n


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_frame_bytes": 16_383}, {"max_frame_bytes": 2**24}, {"stream_window": 65_534},
        {"stream_window": 2**31}, {"connection_window": 65_534}, {"connection_window": 2**31},
        {"max_message_bytes": -1}, {"max_concurrent_streams": 0}, {"max_concurrent_streams": 2**32},
        {"max_header_list_bytes": -1}, {"max_header_list_bytes": 2**32},
    ],
)  # fmt: skip
def test_server_settings_reject_out_of_range(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {}, {"max_frame_bytes": 16_384}, {"max_frame_bytes": 2**24 - 1}, {"stream_window": 65_535},
        {"stream_window": 2**31 - 1}, {"connection_window": 2**31 - 1}, {"max_message_bytes": 0},
        {"max_concurrent_streams": 1}, {"max_concurrent_streams": 2**32 - 1}, {"max_header_list_bytes": 2**32 - 1},
    ],
)  # fmt: skip
def test_server_settings_accept_the_edges(kwargs: dict[str, int]) -> None:
    ServerSettings(**kwargs)


@pytest.mark.parametrize("table", [0, 1024])
async def test_raw_a_smaller_header_table_is_confirmed_by_the_next_header_block(table: int) -> None:
    """A client that lowers SETTINGS_HEADER_TABLE_SIZE below 4,096 waits for a dynamic table size
    update at the start of the next header block (RFC 7541 4.2); nghttp2 fails the block without
    it. The server's blocks never use the table: the update says 0, once."""
    from gateway.grpc_server.frames import Setting

    request = frame(FrameType.HEADERS, Flag.END_HEADERS, 1, header_block()) + frame(
        FrameType.DATA, Flag.END_STREAM, 1, message(b"small table"))
    second = frame(FrameType.HEADERS, Flag.END_HEADERS, 3, header_block()) + frame(
        FrameType.DATA, Flag.END_STREAM, 3, message(b"again"))
    frames = await raw_exchange(PREFACE + settings_frame({Setting.HEADER_TABLE_SIZE: table}) + request + second)
    blocks = [p for kind, _, sid, p in frames if kind == FrameType.HEADERS]
    assert blocks[0][:1] == b"\x20" and not any(b[:1] == b"\x20" for b in blocks[1:])
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = table
    assert (b":status", b"200") in decoder.decode(blocks[0], raw=True)
    plain = await raw_exchange(CLIENT_START + request)  # no setting: no update
    assert not any(p[:1] == b"\x20" for kind, _, _, p in plain if kind == FrameType.HEADERS)


async def test_a_goaway_never_names_a_later_stream_than_the_one_before() -> None:
    """Stopping: GOAWAY(first); a new stream is refused; at the grace's end the connection is
    closed with a second GOAWAY, which must not name the refused stream (RFC 9113 6.8)."""
    gate = Gate()
    server = GrpcServer(methods(gate))
    port = await server.start("127.0.0.1", 0)
    client = await H2Client.connect(port)
    first = client.request(WAIT, message(b"one"))
    await within(gate.started.wait())
    stopping = asyncio.create_task(server.stop(grace=0.5))
    await client.wait_for(h2.events.ConnectionTerminated)
    block = client.conn.encoder.encode(request_headers(ECHO))
    client.writer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, first + 2, block))
    data = await within(client.reader.read())  # to the end: the grace runs out, the call is cut
    client.close()
    await within(stopping)
    goaways = [struct.unpack_from(">I", p)[0] for kind, _, _, p in parse_frames(data) if kind == FrameType.GOAWAY]
    assert goaways and all(last == first for last in goaways)
