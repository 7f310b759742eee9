"""The asyncio gRPC server under known HTTP/2 attacks (floods of control frames, CONTINUATION
floods, rapid reset, slow or absent readers, unfinished requests): each attacker is cut off or
held to the server's settings, while a legitimate client on another connection is still served.

Frames are written by hand on raw sockets; each attack is small (small settings make the limits
bite early) and bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import h2.events
import h2.settings
import hpack
import pytest
from test_server import (
    CLIENT_START,
    ECHO,
    STEP_S,
    WAIT,
    FakeTransport,
    Gate,
    MiB,
    echo,
    grpc_channel,
    h2_client,
    header_block,
    message,
    methods,
    parse_frames,
    parse_frames_prefix,
    request_headers,
    serving,
    within,
)

from gateway.grpc_server import GrpcServer
from gateway.grpc_server.connection import MIN_CONTINUATIONS, GrpcConnection
from gateway.grpc_server.frames import (
    ErrorCode,
    Flag,
    FrameType,
    Setting,
    frame,
    settings_frame,
    window_update,
)
from gateway.grpc_server.server import ServerSettings

Frame = tuple[int, int, int, bytes]
BIG = "/test.Service/Big"
HEADERS_END = Flag.END_HEADERS
REQUEST_END = Flag.END_HEADERS | Flag.END_STREAM


class Raw:
    """A client socket that writes frames by hand and keeps every byte the server sends, even
    when the server's close turns into a reset."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.closed = False

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> Raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def send(self, data: bytes) -> bool:
        """False if the server closed the connection before taking it all."""
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError:
            return False
        return True

    @property
    def frames(self) -> list[Frame]:
        return parse_frames_prefix(self.data)

    async def read_until(self, done: Callable[[list[Frame]], bool], timeout: float = STEP_S) -> list[Frame]:
        """Read until ``done(frames)`` or the end of the connection; the frames so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed and not done(self.frames):
            left = deadline - loop.time()
            assert left > 0, "timed out"
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), left)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.data += chunk
        return self.frames

    async def read_to_end(self, timeout: float = STEP_S) -> list[Frame]:
        return await self.read_until(lambda _: False, timeout)

    def close(self) -> None:
        self.sock.close()


@contextlib.asynccontextmanager
async def raw(port: int, **kw: Any) -> AsyncIterator[Raw]:
    client = await Raw.connect(port, **kw)
    try:
        yield client
    finally:
        client.close()


def goaway_code(frames: list[Frame]) -> int | None:
    codes = [struct.unpack_from(">II", p)[1] for k, _, _, p in frames if k == FrameType.GOAWAY]
    return codes[-1] if codes else None


def resets(frames: list[Frame], sid: int) -> list[int]:
    return [struct.unpack(">I", p)[0] for k, _, s, p in frames if k == FrameType.RST_STREAM and s == sid]


def grpc_status(frames: list[Frame], sid: int) -> int:
    """The grpc-status of stream ``sid``'s last header block."""
    block = [p for k, _, s, p in frames if k == FrameType.HEADERS and s == sid][-1]
    fields = dict(hpack.Decoder().decode(block, raw=True))
    return int(fields[b"grpc-status"])


def ping_barrier(frames: list[Frame]) -> bool:
    return any(k == FrameType.PING and f & Flag.ACK and p == b"barrier!" for k, f, _, p in frames)


BARRIER = frame(FrameType.PING, 0, 0, b"barrier!")


async def legit_while(attack: Any, port: int, calls: int = 20) -> Any:
    """Run ``attack`` while a legitimate client on another connection makes ``calls`` calls."""

    async def legit() -> None:
        async with grpc_channel(port) as channel:
            for i in range(calls):
                payload = f"legit {i}".encode()
                assert await channel.unary_unary(ECHO)(payload, timeout=5) == payload

    result, _ = await within(asyncio.gather(attack, legit()), 2 * STEP_S)
    return result


def the_connection(server: GrpcServer) -> GrpcConnection:
    (conn,) = server._connections
    return conn


async def wait_until(predicate: Callable[[], bool], timeout: float = STEP_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- CONTINUATION floods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("piece", "count", "settings"),
    [
        (b"", 40_000, ServerSettings()),  # empty frames: cut off at the frame cap, not after 9.7 s
        (b"x", MIN_CONTINUATIONS + 1, ServerSettings()),  # small ones: the frame cap
        (b"x" * 1000, 3, ServerSettings(max_header_list_bytes=1000)),  # large ones: the byte cap
    ],
    ids=["empty", "many", "large"],
)
async def test_continuation_flood_is_enhance_your_calm(
    piece: bytes, count: int, settings: ServerSettings
) -> None:
    async with serving(settings=settings) as (_, port):

        async def attack() -> list[Frame]:
            async with raw(port) as client:
                flood = (
                    frame(FrameType.HEADERS, 0, 1, b"") + frame(FrameType.CONTINUATION, 0, 1, piece) * count
                )
                start = time.monotonic()
                await client.send(CLIENT_START + flood)
                frames = await client.read_to_end()
                assert time.monotonic() - start < 2.0
                return frames

        frames = await legit_while(attack(), port)
    assert goaway_code(frames) == ErrorCode.ENHANCE_YOUR_CALM


async def test_a_header_block_in_many_small_continuation_frames_is_served() -> None:
    block = header_block(ECHO)
    assert len(block) <= MIN_CONTINUATIONS + 1
    frames = [frame(FrameType.HEADERS, Flag.END_STREAM, 1, block[:1])]
    frames += [frame(FrameType.CONTINUATION, 0, 1, block[i : i + 1]) for i in range(1, len(block) - 1)]
    frames.append(frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[-1:]))
    async with serving() as (_, port), raw(port) as client:
        await client.send(CLIENT_START + b"".join(frames))
        got = await client.read_until(lambda fs: any(k == FrameType.HEADERS and s == 1 for k, _, s, _ in fs))
    assert grpc_status(got, 1) == grpc.StatusCode.INTERNAL.value[0]  # served: no message, as sent


# -- floods of control frames ----------------------------------------------------------------


FLOODS: dict[str, tuple[bytes, bytes]] = {  # prefix (after the client's preface), the repeated frame
    "ping": (b"", frame(FrameType.PING, 0, 0, b"12345678")),
    "ping-ack": (b"", frame(FrameType.PING, Flag.ACK, 0, b"12345678")),
    "settings": (b"", settings_frame({})),
    "settings-ack": (b"", frame(FrameType.SETTINGS, Flag.ACK, 0)),
    "priority": (b"", frame(FrameType.PRIORITY, 0, 1, b"\0\0\0\0\x10")),
    "window-update": (b"", window_update(0, 1)),
    "stream-window-update": (
        frame(FrameType.HEADERS, REQUEST_END, 1, header_block(ECHO)),
        window_update(1, 1),
    ),
    "unknown-type": (b"", frame(0x20, 0, 0, b"??")),
    "rst-closed-stream": (
        frame(FrameType.HEADERS, REQUEST_END, 1, header_block(ECHO)),
        frame(FrameType.RST_STREAM, 0, 1, struct.pack(">I", ErrorCode.CANCEL)),
    ),
    "empty-data": (
        frame(FrameType.HEADERS, HEADERS_END, 1, header_block(ECHO)),
        frame(FrameType.DATA, 0, 1, b""),
    ),
    "headers-closed-stream": (
        frame(FrameType.HEADERS, REQUEST_END, 1, header_block(ECHO)),
        frame(FrameType.HEADERS, REQUEST_END, 1, hpack.Encoder().encode([("x", "y")])),
    ),
}


@pytest.mark.parametrize("kind", list(FLOODS))
async def test_control_frame_flood_is_enhance_your_calm(kind: str) -> None:
    prefix, repeated = FLOODS[kind]
    budget = 100
    async with serving(settings=ServerSettings(control_frame_budget=budget)) as (_, port):

        async def attack() -> list[Frame]:
            async with raw(port) as client:
                await client.send(CLIENT_START + prefix + repeated * (20 * budget))
                return await client.read_to_end()

        frames = await legit_while(attack(), port)
    assert goaway_code(frames) == ErrorCode.ENHANCE_YOUR_CALM
    acks = [f for f in frames if f[0] in (FrameType.PING, FrameType.SETTINGS) and f[1] & Flag.ACK]
    assert len(acks) <= 2 * budget  # the budget, what refilled meanwhile, the preface's ack


async def test_ping_flood_from_a_client_that_never_reads() -> None:
    # Measured before: +183 MB. Now the flood is cut off by the budget after ~1000 acks.
    async with serving() as (server, port), raw(port, rcvbuf=4096) as client:

        async def attack() -> None:
            await client.send(CLIENT_START + frame(FrameType.PING, 0, 0, b"12345678") * 50_000)
            await wait_until(lambda: not server._connections)

        await legit_while(attack(), port)


async def test_a_flood_is_logged_once_at_info_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.grpc_server")
    async with serving(settings=ServerSettings(control_frame_budget=10)) as (_, port), raw(port) as client:
        await client.send(CLIENT_START + frame(FrameType.PING, 0, 0, b"12345678") * 100)
        await client.read_to_end()
    records = [r for r in caplog.records if r.name.startswith("gateway.grpc_server")]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO and records[0].exc_info is None
    assert "ENHANCE_YOUR_CALM" in records[0].getMessage()


async def feed_connection(conn: GrpcConnection, transport: FakeTransport, data: bytes) -> list[Frame]:
    conn.data_received(data)
    return parse_frames(bytes(transport.out))


async def test_the_budget_refills_with_time_and_with_answered_calls() -> None:
    settings = ServerSettings(
        control_frame_budget=5, control_frame_refill_per_s=100, control_frame_credit_per_call=10
    )
    ping = frame(FrameType.PING, 0, 0, b"12345678")

    def connect() -> tuple[GrpcConnection, FakeTransport]:
        conn = GrpcConnection({ECHO.encode(): echo}, settings)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.data_received(CLIENT_START[:-9])  # the preface and no SETTINGS: only PINGs count
        return conn, transport

    conn, transport = connect()
    conn.data_received(ping * 5)
    assert not transport.closing
    conn.data_received(ping)
    assert transport.closing
    assert goaway_code(parse_frames(bytes(transport.out))) == ErrorCode.ENHANCE_YOUR_CALM

    conn, transport = connect()
    conn.data_received(ping * 5)
    await asyncio.sleep(0.06)  # 6 units back
    conn.data_received(ping * 5)
    assert not transport.closing

    conn, transport = connect()
    conn.data_received(ping * 5)
    conn.data_received(frame(FrameType.HEADERS, HEADERS_END, 1, header_block(ECHO)))
    conn.data_received(frame(FrameType.DATA, Flag.END_STREAM, 1, message(b"paid")))
    await wait_until(lambda: not conn._streams)  # answered: 10 units (and 2 for the stream), up to 5
    conn.data_received(ping * 5)
    assert not transport.closing
    conn.data_received(ping)
    assert transport.closing  # the bucket holds no more than its size
    conn.connection_lost(None)


async def test_settings_apply_only_the_last_initial_window_of_a_frame() -> None:
    # A SETTINGS frame may repeat INITIAL_WINDOW_SIZE thousands of times: the open streams are
    # walked once per frame, and only when the window changes.
    conn = GrpcConnection({ECHO.encode(): echo}, ServerSettings())
    transport = FakeTransport()
    conn.connection_made(transport)
    encoder = hpack.Encoder()
    opened = b"".join(
        frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(ECHO))) for sid in (1, 3)
    )
    conn.data_received(CLIENT_START + opened)
    windows = b"".join(struct.pack(">HI", Setting.INITIAL_WINDOW_SIZE, w) for w in range(1000, 2000))
    conn.data_received(
        frame(FrameType.SETTINGS, 0, 0, windows + struct.pack(">HI", Setting.INITIAL_WINDOW_SIZE, 7))
    )
    assert not transport.closing
    assert [s.send_window for s in conn._streams.values()] == [7, 7]
    conn.connection_lost(None)


# -- rapid reset -----------------------------------------------------------------------------


@pytest.mark.parametrize("complete", [False, True], ids=["headers-only", "whole-request"])
async def test_rapid_reset_is_enhance_your_calm(complete: bool) -> None:
    gate = Gate()
    n = 5000
    encoder = hpack.Encoder()
    flood = []
    for i in range(n):
        sid = 2 * i + 1
        if complete:
            flood.append(frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(WAIT))))
            flood.append(frame(FrameType.DATA, Flag.END_STREAM, sid, message(b"x")))
        else:
            flood.append(frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(WAIT))))
        flood.append(frame(FrameType.RST_STREAM, 0, sid, struct.pack(">I", ErrorCode.CANCEL)))
    async with serving(methods(gate)) as (_, port):

        async def attack() -> list[Frame]:
            async with raw(port) as client:
                await client.send(CLIENT_START + b"".join(flood))
                return await client.read_to_end()

        frames = await legit_while(attack(), port)
    assert goaway_code(frames) == ErrorCode.ENHANCE_YOUR_CALM
    (goaway,) = [p for k, _, _, p in frames if k == FrameType.GOAWAY]
    last_stream = struct.unpack_from(">I", goaway)[0]
    assert last_stream < n  # about 500 streams: the default budget at 2 units each


@pytest.mark.parametrize(
    "error",
    [
        lambda sid, _: window_update(sid, 0),
        lambda sid, _: frame(FrameType.DATA, 0, sid, b"after END_STREAM"),
        lambda sid, encoder: frame(FrameType.HEADERS, REQUEST_END, sid, encoder.encode([("x", "y")])),
    ],
    ids=["zero-window-update", "data-after-end", "second-trailers"],
)
async def test_streams_reset_for_client_errors_cost_like_resets(
    error: Callable[[int, hpack.Encoder], bytes],
) -> None:
    # "MadeYouReset": stream errors make the server reset the stream (and cancel its method).
    gate = Gate()
    encoder = hpack.Encoder()
    flood = b"".join(
        frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(WAIT)))
        + frame(FrameType.DATA, Flag.END_STREAM, sid, message(b"x"))
        + error(sid, encoder)
        for sid in range(1, 2 * 3000, 2)
    )
    async with serving(methods(gate)) as (_, port):

        async def attack() -> list[Frame]:
            async with raw(port) as client:
                await client.send(CLIENT_START + flood)
                return await client.read_to_end()

        frames = await legit_while(attack(), port)
    assert goaway_code(frames) == ErrorCode.ENHANCE_YOUR_CALM


async def test_a_client_cancelling_its_calls_now_and_then_is_not_cut_off() -> None:
    gate = Gate()
    async with serving(methods(gate)) as (_, port), grpc_channel(port) as channel:
        for _ in range(300):  # each reset takes ~2 units; each answered call gives 12
            call = channel.unary_unary(WAIT)(b"x", timeout=5)
            await within(gate.started.wait())
            gate.started.clear()
            call.cancel()
            assert await channel.unary_unary(ECHO)(b"ok", timeout=5) == b"ok"


# -- slow, stalled and absent readers --------------------------------------------------------


async def test_a_headers_only_stream_is_ended_after_request_timeout() -> None:
    gate = Gate()
    settings = ServerSettings(request_timeout_s=0.3)
    async with serving(methods(gate), settings) as (server, port), raw(port) as client:
        encoder = hpack.Encoder()
        start = time.monotonic()
        await client.send(
            CLIENT_START
            + frame(FrameType.HEADERS, HEADERS_END, 1, encoder.encode(request_headers(WAIT)))  # then nothing
            + frame(FrameType.HEADERS, HEADERS_END, 3, encoder.encode(request_headers(WAIT)))
            + frame(FrameType.DATA, 0, 3, message(b"never ends")[:8])  # a partial body
        )
        frames = await client.read_until(lambda fs: bool(resets(fs, 1) and resets(fs, 3)))
        elapsed = time.monotonic() - start
        assert 0.3 <= elapsed < 3.0
        for sid in (1, 3):
            assert grpc_status(frames, sid) == grpc.StatusCode.CANCELLED.value[0]
            assert resets(frames, sid) == [ErrorCode.NO_ERROR]
        assert not the_connection(server)._streams
        await client.send(BARRIER)  # the connection itself goes on
        frames = await client.read_until(ping_barrier)
        assert goaway_code(frames) is None
    assert gate.calls == 0


async def test_a_client_holding_many_streams_that_time_out_is_cut_off() -> None:
    """Headers-only streams by the hundred: each is ended at its timeout, and together they spend
    the connection's budget, so the holder is disconnected rather than left to open more."""
    settings = ServerSettings(request_timeout_s=0.3, control_frame_budget=100)
    async with serving(methods(Gate()), settings) as (_server, port), raw(port) as client:
        encoder = hpack.Encoder()
        block = encoder.encode(request_headers(WAIT))
        await client.send(
            CLIENT_START + b"".join(frame(FrameType.HEADERS, HEADERS_END, 2 * k + 1, block) for k in range(40))
        )
        frames = await client.read_until(lambda fs: goaway_code(fs) is not None)
        assert goaway_code(frames) == ErrorCode.ENHANCE_YOUR_CALM


async def test_a_blocked_answer_is_dropped_after_stall_timeout() -> None:
    answer = os.urandom(10_000)

    async def big(request: bytes) -> bytes:
        return answer

    settings = ServerSettings(stall_timeout_s=0.3)
    async with (
        serving({ECHO: big}, settings) as (server, port),
        h2_client(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_ack=False) as client,
    ):
        await client.wait_for(h2.events.SettingsAcknowledged)  # the server has our zero window
        start = time.monotonic()
        sid = client.request(ECHO, message(b"go"))
        reply = await client.response(sid)
        assert 0.3 <= time.monotonic() - start < 3.0
        assert reply.reset == ErrorCode.CANCEL
        assert reply.body == b""
        conn = the_connection(server)
        assert not conn._streams and conn._pending_bytes == 0
        sid = client.request("/test.Service/Nope", message(b"x"))  # no DATA: still answered
        assert (await client.response(sid)).status == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_answers_past_the_buffer_limit_are_resource_exhausted() -> None:
    answer = os.urandom(100_000)

    async def big(request: bytes) -> bytes:
        return answer

    settings = ServerSettings(write_buffer_bytes=16_384, max_buffered_answer_bytes=150_000)
    async with (
        serving({ECHO: big}, settings) as (_, port),
        h2_client(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}) as client,
    ):
        await client.wait_for(h2.events.SettingsAcknowledged)
        first = client.request(ECHO, message(b"1"))
        await client.wait_for(h2.events.ResponseReceived, lambda e: e.stream_id == first)
        second = client.request(ECHO, message(b"2"))
        reply = await client.response(second)
        assert reply.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        # The first is still there: opening the window lets it through.
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        client.flush()
        reply = await client.response(first)
        assert reply.body == message(answer) and reply.status == 0


def calls_with_open_windows(path: str, n: int) -> bytes:
    """A client preface with the largest windows, then ``n`` whole calls to ``path``: all their
    answers may go at once, whatever becomes of them on the way."""
    encoder = hpack.Encoder()
    requests = b"".join(
        frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(path)))
        + frame(FrameType.DATA, Flag.END_STREAM, sid, message(b"x"))
        for sid in range(1, 2 * n, 2)
    )
    windows = settings_frame({Setting.INITIAL_WINDOW_SIZE: 2**31 - 1}) + window_update(0, 2**31 - 1 - 65_535)
    return CLIENT_START[:-9] + windows + requests


async def test_a_client_that_never_reads_is_paused_then_aborted() -> None:
    answer = os.urandom(1 * MiB)

    async def big(request: bytes) -> bytes:
        return answer

    settings = ServerSettings(write_buffer_bytes=64 * 1024, stall_timeout_s=0.5)
    async with serving(methods() | {BIG: big}, settings) as (server, port), raw(port, rcvbuf=4096) as client:
        await client.send(calls_with_open_windows(BIG, 32))

        await wait_until(lambda: bool(server._connections))
        conn = the_connection(server)  # before the legitimate client's

        async def attack() -> None:
            await wait_until(lambda: conn._write_paused)
            transport = conn._transport
            assert transport is not None and not transport.is_reading()  # read no more of it
            await within(asyncio.shield(conn.closed))  # aborted after stall_timeout_s
            assert 0.5 <= time.monotonic() - conn._paused_at < 3.0

        await legit_while(attack(), port)


async def test_a_client_that_reads_a_trickle_is_cut_off_though_no_write_pauses() -> None:
    """Answers small enough to leave the transport at once sit in the kernel's send queue of a
    client that hardly reads: no write pauses, yet the connection is cut off once they drain
    slower than MIN_DRAIN_BYTES_PER_S for the stall timeout."""
    answer = os.urandom(16 * 1024)

    async def mid(request: bytes) -> bytes:
        return answer

    settings = ServerSettings(stall_timeout_s=0.5)  # the default 1 MiB write buffer: never paused
    async with serving(methods() | {BIG: mid}, settings) as (server, port), raw(port, rcvbuf=4096) as client:
        await client.send(calls_with_open_windows(BIG, 32))
        await wait_until(lambda: bool(server._connections))
        conn = the_connection(server)

        async def attack() -> None:
            await within(asyncio.shield(conn.closed))
            assert not conn._write_paused

        await legit_while(attack(), port)


# -- unfinished requests and the connection window -------------------------------------------


async def test_unfinished_requests_cannot_hold_more_than_the_connection_window() -> None:
    # Measured before: 64 streams x 16 MiB of unfinished bodies held 1 GB. The connection window
    # comes back only for requests that end, so a client that sends past it breaks flow control.
    settings = ServerSettings(max_message_bytes=100_000, connection_window=65_535)
    window = settings.receive_window
    assert window == 100_000 + 5 + 16_384
    encoder = hpack.Encoder()
    chunk = b"x" * 10_000
    flood = b"".join(
        frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(ECHO)))
        + frame(FrameType.DATA, 0, sid, message(b"x" * 60_000)[:10_000])
        + frame(FrameType.DATA, 0, sid, chunk) * 4
        for sid in (1, 3, 5)
    )  # 150 kB, none of it ends a request
    async with serving(settings=settings) as (_, port):

        async def attack() -> list[Frame]:
            async with raw(port) as client:
                await client.send(CLIENT_START + flood)
                return await client.read_to_end()

        frames = await legit_while(attack(), port)
    assert goaway_code(frames) == ErrorCode.FLOW_CONTROL_ERROR
    updates = [
        struct.unpack(">I", p)[0] for k, _, sid, p in frames if k == FrameType.WINDOW_UPDATE and sid == 0
    ]
    assert updates == [window - 65_535]  # the preface's only: nothing given back


async def test_requests_that_fill_the_window_keep_the_oldest_that_fit() -> None:
    # Unfinished requests that hold the whole window cannot end: the oldest that fit in the
    # window whole are kept, the others refused (never seen by a method), freeing their bytes.
    settings = ServerSettings(max_message_bytes=100_000, connection_window=65_535)
    window = settings.receive_window
    encoder = hpack.Encoder()
    body = os.urandom(60_000)
    whole = message(body)

    def opened(sid: int, sent: int) -> bytes:
        return frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(ECHO))) + frame(
            FrameType.DATA, 0, sid, whole[:sent]
        )

    async with serving(settings=settings) as (_, port), raw(port) as client:
        await client.send(CLIENT_START + opened(1, 50_000) + opened(3, 50_000) + opened(5, window - 100_000))
        frames = await client.read_until(lambda fs: bool(resets(fs, 3) and resets(fs, 5)))
        assert resets(frames, 3) == resets(frames, 5) == [ErrorCode.REFUSED_STREAM]
        assert not resets(frames, 1)

        def given_back(fs: list[Frame]) -> int:  # after the preface's
            return sum(
                struct.unpack(">I", p)[0] for k, _, sid, p in fs if k == FrameType.WINDOW_UPDATE and sid == 0
            )

        frames = await client.read_until(lambda fs: given_back(fs) >= window - 65_535 + window - 50_000)
        assert given_back(frames) == window - 65_535 + window - 50_000  # all but stream 1's bytes
        await client.send(frame(FrameType.DATA, Flag.END_STREAM, 1, whole[50_000:]))
        frames = await client.read_until(
            lambda fs: any(k == FrameType.HEADERS and f & Flag.END_STREAM and sid == 1 for k, f, sid, _ in fs)
        )
    assert b"".join(p for k, _, sid, p in frames if k == FrameType.DATA and sid == 1) == whole
    assert grpc_status(frames, 1) == 0


async def test_a_client_that_keeps_filling_the_window_with_requests_it_never_ends_is_cut_off() -> None:
    # Each stream refused for a full window made the server read and throw away its bytes; at a
    # few units a refusal the budget refilled faster than such a client spent it (the abuse
    # suite's `unfinished-bodies` was cut only when its last streams timed out, or not at all).
    settings = ServerSettings(max_message_bytes=1_000_000, connection_window=65_535, control_frame_budget=100)
    window = settings.receive_window
    encoder = hpack.Encoder()
    whole = message(bytes(999_000))  # declared whole, never sent whole
    kept = 600_000

    def opened(sid: int, sent: int) -> bytes:
        data = whole[:sent]
        return frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(ECHO))) + b"".join(
            frame(FrameType.DATA, 0, sid, data[i : i + 16_384]) for i in range(0, len(data), 16_384)
        )

    def given_back(fs: list[Frame]) -> int:
        return sum(
            struct.unpack(">I", p)[0] for k, _, sid, p in fs if k == FrameType.WINDOW_UPDATE and sid == 0
        )

    async with serving(settings=settings) as (_, port), raw(port) as client:
        await client.send(CLIENT_START + opened(1, kept))
        refused = 0
        for sid in range(3, 3 + 2 * 30, 2):  # 30 refusals would cost 90 units at 3 each
            before = given_back(client.frames)
            await client.send(opened(sid, window - kept))  # the window, full
            frames = await client.read_until(
                lambda fs, sid=sid, before=before: (
                    goaway_code(fs) is not None
                    or (bool(resets(fs, sid)) and given_back(fs) >= before + window - kept)
                )
            )
            if goaway_code(frames) is not None:
                break
            assert resets(frames, sid) == [ErrorCode.REFUSED_STREAM]
            refused += 1
        assert goaway_code(client.frames) == ErrorCode.ENHANCE_YOUR_CALM
        assert 8 <= refused < 25  # 3 units each, 6.4 more for its 416 kB once two windows went
        assert not resets(client.frames, 1)  # the stream that fit was kept to the end


async def test_requests_larger_than_the_configured_window_still_fit() -> None:
    # One request of max_message_bytes always fits: the window grows to hold it.
    settings = ServerSettings(max_message_bytes=3 * MiB, connection_window=65_535)
    assert settings.receive_window > 3 * MiB
    async with serving(settings=settings) as (_, port), grpc_channel(port) as channel:
        for size in (3 * MiB, 3 * MiB, 1000):
            payload = os.urandom(size)
            assert await channel.unary_unary(ECHO)(payload, timeout=10) == payload


# -- legitimate heavy clients ----------------------------------------------------------------


async def test_a_heavy_grpc_aio_client_is_never_cut_off() -> None:
    # grpc-core sends a WINDOW_UPDATE or two per call, BDP PINGs and SETTINGS: all within budget.
    n = 5000
    async with serving() as (server, port), grpc_channel(port) as channel:
        stub = channel.unary_unary(ECHO)
        replies = await within(
            asyncio.gather(*(stub(i.to_bytes(4, "big"), timeout=30) for i in range(n))), 60
        )
        assert replies == [i.to_bytes(4, "big") for i in range(n)]
        big = os.urandom(2 * MiB)  # and large answers, with window updates under way
        assert await within(asyncio.gather(*(stub(big, timeout=30) for _ in range(8))), 30) == [big] * 8
        assert len(server._connections) == 1


async def test_a_grpc_aio_client_whose_large_requests_overfill_the_window_is_never_cut_off() -> None:
    # Concurrent requests of 3 MiB in a window of about one: grpc-core spreads its DATA over
    # them, the window jams, the younger ones are refused (UNAVAILABLE to the caller, who may
    # retry), and the bytes thrown away cost the connection less than the calls that end earn.
    settings = ServerSettings(max_message_bytes=3 * MiB, connection_window=65_535)
    payloads = [os.urandom(3 * MiB) for _ in range(12)]
    async with serving(settings=settings) as (server, port), grpc_channel(port) as channel:
        stub = channel.unary_unary(ECHO)
        answered = 0
        for _ in range(6):
            replies = await within(
                asyncio.gather(*(stub(p, timeout=30) for p in payloads), return_exceptions=True), 60
            )
            for reply, sent in zip(replies, payloads, strict=True):
                if isinstance(reply, grpc.aio.AioRpcError):
                    assert reply.code() == grpc.StatusCode.UNAVAILABLE and "error code 7" in (
                        reply.details() or ""
                    )
                else:
                    assert reply == sent
                    answered += 1
        assert answered >= 6
        assert len(server._connections) == 1  # never cut: the same connection throughout
        assert await stub(b"ok", timeout=5) == b"ok"


async def test_an_h2_client_with_pings_and_window_updates_is_never_cut_off() -> None:
    async with serving() as (_, port), h2_client(port) as client:
        await client.wait_for(h2.events.WindowUpdated, lambda e: e.stream_id == 0)  # the server's window
        for batch in range(20):
            sids = [client.request(ECHO, message(os.urandom(2000))) for _ in range(100)]
            client.conn.ping(batch.to_bytes(8, "big"))
            client.conn.increment_flow_control_window(1000)
            client.flush()
            for sid in sids:
                assert (await client.response(sid)).status == 0
        assert not [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_timeout_s": 0}, {"request_timeout_s": -1}, {"request_timeout_s": float("inf")},
        {"request_timeout_s": float("nan")}, {"stall_timeout_s": 0}, {"stall_timeout_s": float("inf")},
        {"write_buffer_bytes": 0}, {"max_buffered_answer_bytes": 0}, {"control_frame_budget": 0},
        {"control_frame_refill_per_s": 0}, {"control_frame_refill_per_s": float("nan")},
        {"control_frame_credit_per_call": -1},
    ],
)  # fmt: skip
def test_limit_settings_reject_out_of_range(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"request_timeout_s": 0.001}, {"stall_timeout_s": 1e6}, {"write_buffer_bytes": 1},
        {"max_buffered_answer_bytes": 1}, {"control_frame_budget": 1}, {"control_frame_refill_per_s": 0.01},
        {"control_frame_credit_per_call": 0},
    ],
)  # fmt: skip
def test_limit_settings_accept_the_edges(kwargs: dict[str, Any]) -> None:
    ServerSettings(**kwargs)


def test_limit_settings_defaults() -> None:
    s = ServerSettings()
    assert (s.request_timeout_s, s.stall_timeout_s) == (30.0, 5.0)
    assert (s.write_buffer_bytes, s.max_buffered_answer_bytes) == (1 * MiB, 64 * MiB)
    assert (s.control_frame_budget, s.control_frame_refill_per_s, s.control_frame_credit_per_call) == (
        1000,
        100.0,
        10,
    )


@pytest.mark.parametrize(
    ("kwargs", "window"),
    [
        ({}, 32 * MiB),
        ({"max_message_bytes": 64 * MiB}, 64 * MiB + 5 + 16_384),
        ({"max_message_bytes": 1000, "connection_window": 65_535}, 65_535),
        ({"max_message_bytes": 2**31}, 2**31 - 1),
    ],
)
def test_receive_window_holds_one_largest_request(kwargs: dict[str, int], window: int) -> None:
    assert ServerSettings(**kwargs).receive_window == window


async def test_a_burst_of_calls_on_one_connection_takes_turns_with_other_connections() -> None:
    """600 calls in one write start CALLS_PER_TURN at a time: a call on another connection is
    served between turns, not after the whole burst."""
    started = 0

    async def counting(request: bytes) -> bytes:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        return request

    async def probe(request: bytes) -> bytes:
        return str(started).encode()

    probe_path = "/test.Service/Probe"
    async with serving({ECHO: counting, probe_path: probe}) as (_server, port), raw(port) as client:
        encoder = hpack.Encoder()
        burst = b"".join(
            frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(ECHO)))
            + frame(FrameType.DATA, Flag.END_STREAM, sid, message(b"b"))
            for sid in range(1, 1200, 2)
        )
        async with grpc_channel(port) as channel:
            call = channel.unary_unary(probe_path)
            await call(b"", timeout=5)  # the channel is connected before the burst
            await client.send(CLIENT_START + burst)
            seen = int(await call(b"", timeout=5))
        await wait_until(lambda: started == 600)
    assert seen < 600


class _PausingTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _calls(first_sid: int, count: int, encoder: hpack.Encoder) -> bytes:
    return b"".join(frame(FrameType.HEADERS, HEADERS_END, sid, encoder.encode(request_headers(WAIT)))
                    for sid in range(first_sid, first_sid + 2 * count, 2))  # fmt: skip


async def test_a_connection_with_calls_left_over_takes_shorter_turns_until_it_has_caught_up() -> None:
    from gateway.grpc_server.connection import BURST_CALLS_PER_TURN, CALLS_PER_TURN

    conn = GrpcConnection({WAIT.encode(): Gate()}, ServerSettings(max_concurrent_streams=1000))
    conn.connection_made(_PausingTransport())
    encoder = hpack.Encoder()
    conn.data_received(CLIENT_START + _calls(1, 30, encoder))
    assert len(conn._streams) == CALLS_PER_TURN  # the first turn: a full one
    seen = [len(conn._streams)]
    while len(conn._streams) < 30:
        await asyncio.sleep(0)  # the next turn
        seen.append(len(conn._streams))
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert steps[:-1] == [BURST_CALLS_PER_TURN] * (len(steps) - 1) and 0 < steps[-1] <= BURST_CALLS_PER_TURN
    # Caught up: the next calls that fit in a turn get a full one again.
    await asyncio.sleep(0)
    conn.data_received(_calls(61, CALLS_PER_TURN, encoder))
    assert len(conn._streams) == 30 + CALLS_PER_TURN
    conn.connection_lost(None)


async def test_a_connection_holding_unfinished_requests_reads_its_data_a_slice_a_turn() -> None:
    from gateway.grpc_server.connection import DATA_PER_TURN, HOLDING_BYTES

    conn = GrpcConnection({ECHO.encode(): echo}, ServerSettings())
    conn.connection_made(_PausingTransport())
    encoder = hpack.Encoder()
    chunk = bytes(16 * 1024)
    body = struct.pack(">BI", 0, 3 * MiB) + bytes(16 * 1024 - 5)  # a 3 MiB message, never finished
    data = frame(FrameType.HEADERS, HEADERS_END, 1, encoder.encode(request_headers(ECHO)))
    data += frame(FrameType.DATA, 0, 1, body) + b"".join(frame(FrameType.DATA, 0, 1, chunk) for _ in range(127))
    conn.data_received(CLIENT_START + data)  # 2 MiB of DATA in one read
    first = conn._recv_held
    assert HOLDING_BYTES <= first < HOLDING_BYTES + DATA_PER_TURN + len(chunk)
    assert not conn._burst  # DATA slices do not shorten the turns for calls
    await asyncio.sleep(0)
    assert 0 < conn._recv_held - first <= DATA_PER_TURN + len(chunk)  # one slice a turn
    while conn._recv_held < 2 * MiB:
        await asyncio.sleep(0)
    assert conn._recv_held == 2 * MiB
    conn.connection_lost(None)
