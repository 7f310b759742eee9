"""The attacker's side of the wire: raw TCP connections to loopback that speak HTTP/2 with prior
knowledge (frames written by hand) or HTTP/1.1, and that notice when the server gets rid of them.

A ``Conn`` is a non-blocking socket driven with ``loop.sock_sendall``/``sock_recv`` rather than
an asyncio transport, so an attack decides exactly when the socket is read: never
(``ping-flood-noread``), a few bytes at a time (``slow-reader``), or as it comes. Every write is
charged to the attack's ``Budget`` first, so no attack can write more frames or bytes than its caps.

A connection counts as disconnected by the server, with the time it was seen, when any of these
is observed: a GOAWAY frame, end of stream, a reset (read or write), or a TCP state other than
ESTABLISHED (``TCP_INFO``; the only signal left for a socket that is not being read).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections import Counter

import hpack

from gateway.grpc_server.frames import (
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    MAX_WINDOW,
    PREFACE,
    ErrorCode,
    Flag,
    FrameType,
    Setting,
    frame,
    frame_header,
    settings_frame,
    window_update,
)

TCP_ESTABLISHED = 1  # linux/tcp_states.h
_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}  # fmt: skip
_FRAME_NAMES = {int(k): k.name for k in FrameType}
_ERROR_NAMES = {int(k): k.name for k in ErrorCode}
_HEAD = struct.Struct(">BHBBI")


def now() -> float:
    return time.monotonic()


class Budget:
    """The caps of one attack, shared by all its connections: frames and bytes written."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.bytes = 0
        self.exhausted = False

    def take(self, nbytes: int, nframes: int) -> bool:
        if self.frames + nframes > self.max_frames or self.bytes + nbytes > self.max_bytes:
            self.exhausted = True
            return False
        self.frames += nframes
        self.bytes += nbytes
        return True


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state of ``sock`` (Linux ``TCP_INFO``), None where unavailable."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except (OSError, AttributeError):
        return None


class Conn:
    """One attacker connection. ``h2``: HTTP/2 frames are parsed from what is read (GOAWAY,
    PING/SETTINGS acks, flow-control windows); otherwise the first HTTP/1.1 status line is kept."""

    def __init__(self, sock: socket.socket, t0: float, budget: Budget, *, h2: bool) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.t0 = t0
        self.budget = budget
        self.h2 = h2
        self.opened_s = now() - t0
        self.closed_s: float | None = None
        self.reason: str | None = None
        self.sent_bytes = 0
        self.received_bytes = 0
        self.frames_in: Counter[str] = Counter()
        self.http_status: int | None = None
        # What the server lets us send (RFC 9113 section 6.9), for attacks that send DATA.
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.stream_windows: dict[int, int] = {}
        self.reset_streams: set[int] = set()  # streams the server reset
        self.ended_streams: set[int] = set()  # streams the server ended (END_STREAM)
        self._window_event = asyncio.Event()
        # The server's SETTINGS, acked: only then may its limits (frame size ...) be used.
        self.settings_received = asyncio.Event()
        self._buf = bytearray()
        self._hpack: hpack.Decoder | None = hpack.Decoder() if h2 else None
        self._lock = asyncio.Lock()  # one writer at a time: a frame is never interleaved
        self._reader: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[bool]] = set()

    @classmethod
    async def open(
        cls, host: str, port: int, t0: float, budget: Budget, *, h2: bool, rcvbuf: int | None = None
    ) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:  # before connect, so that the advertised window scale follows it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, t0, budget, h2=h2)

    # -- state -------------------------------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self.closed_s is not None

    def mark_closed(self, reason: str) -> None:
        if self.closed_s is None:
            self.closed_s = now() - self.t0
            self.reason = reason
            self._window_event.set()  # wake a sender waiting for window

    def poll_tcp(self) -> None:
        """Notice a close that nothing read or wrote would show (a socket left unread)."""
        if self.gone:
            return
        state = tcp_state(self.sock)
        if state is not None and state != TCP_ESTABLISHED:
            self.mark_closed(f"tcp {_TCP_STATES.get(state, state)}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for task in self._side_tasks:
            task.cancel()
        self.sock.close()

    # -- writing -----------------------------------------------------------------------------

    async def send(
        self, data: bytes | bytearray | memoryview, frames: int = 1, *, answer: bool = False
    ) -> bool:
        """Write ``data`` (``frames`` frames or requests, for the budget). False when the
        connection is gone or the budget would be exceeded: the caller stops. ``answer``: an ack
        the server asked for, counted but never refused (the server bounds how many it asks)."""
        if self.gone:
            return False
        if answer:
            self.budget.frames += frames
            self.budget.bytes += len(data)
        elif not self.budget.take(len(data), frames):
            return False
        async with self._lock:
            try:
                await self.loop.sock_sendall(self.sock, data)
            except OSError as exc:
                # A GOAWAY that came before the reset says more than the reset: let it be read.
                if self.reading:
                    await asyncio.sleep(0.05)
                else:
                    self._salvage()
                self.mark_closed(f"write failed ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                return False
        self.sent_bytes += len(data)
        return True

    def _salvage(self) -> None:
        """Parse what is already in the receive buffer, without waiting."""
        if not self.h2:
            return  # HTTP/1.1: only the status line matters, and the reader keeps it
        with contextlib.suppress(OSError):
            for _ in range(64):
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
                if not data:
                    break
                self.received_bytes += len(data)
                self._feed_h2(data)

    def _send_later(self, data: bytes, then: asyncio.Event | None = None) -> None:
        # The reader never waits on a write: a server that stops reading would stop us reading.
        async def send() -> bool:
            sent = await self.send(data, answer=True)
            if then is not None:
                then.set()
            return sent

        task = asyncio.create_task(send())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def start_h2(
        self, settings: dict[Setting, int] | None = None, *, connection_window: int | None = MAX_WINDOW
    ) -> bool:
        """Client preface and SETTINGS; ``connection_window``: raise the connection's receive
        window to it at once (None: leave it at 65,535 and never give any back)."""
        data = PREFACE + settings_frame(settings or {})
        if connection_window is not None and connection_window > DEFAULT_WINDOW:
            data += window_update(0, connection_window - DEFAULT_WINDOW)
        return await self.send(data, frames=2)

    # -- reading -----------------------------------------------------------------------------

    def start_reader(self, chunk: int = 65536, interval_s: float = 0.0) -> None:
        """Read in the background: ``chunk`` bytes at a time, pausing ``interval_s`` between reads."""
        if self._reader is not None:
            self._reader.cancel()
        self._reader = asyncio.create_task(self._read_loop(chunk, interval_s))

    @property
    def reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _read_loop(self, chunk: int, interval_s: float) -> None:
        while not self.gone:
            if interval_s:
                await asyncio.sleep(interval_s)
                # A slow reader would read its buffered bytes for minutes before seeing a reset
                # the server sent: the kernel's TCP state says it at once.
                if _tcp_closed(self.sock):
                    self.mark_closed("reset (TCP state)")
                    return
            try:
                data = await self.loop.sock_recv(self.sock, chunk)
            except OSError as exc:
                self.mark_closed(f"reset ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
                return
            if not data:
                status = f" after HTTP {self.http_status}" if self.http_status is not None else ""
                self.mark_closed(f"closed{status}")
                return
            self.received_bytes += len(data)
            if self.h2:
                self._feed_h2(data)
            else:
                self._feed_http(data)

    def _feed_http(self, data: bytes) -> None:
        if self.http_status is not None or len(self._buf) > 4096:
            return  # only the first status line matters
        self._buf += data
        line, sep, _ = bytes(self._buf).partition(b"\r\n")
        if sep and line.startswith(b"HTTP/1."):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                self.http_status = int(parts[1])
                self.frames_in[f"http_{self.http_status}"] += 1

    def _feed_h2(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if len(buf) - pos - 9 < length:
                break
            # Copy only control payloads (small): a DATA payload is never looked at.
            payload = b"" if kind == FrameType.DATA else bytes(buf[pos + 9 : pos + 9 + length])
            self._on_frame(kind, flags, sid & 0x7FFFFFFF, payload)
            pos += 9 + length
            if self.gone:
                break
        del buf[:pos]

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        name = _FRAME_NAMES.get(kind, f"type_{kind}")
        if kind in (FrameType.PING, FrameType.SETTINGS) and flags & Flag.ACK:
            name += "_ACK"
        elif kind == FrameType.RST_STREAM and len(payload) == 4:
            name += " " + str(_ERROR_NAMES.get(struct.unpack(">I", payload)[0], "?"))
            self.reset_streams.add(sid)
            self._window_event.set()  # a sender may replace the stream
        elif kind == FrameType.HEADERS and flags & Flag.END_STREAM:
            name += f" (END_STREAM{self._grpc_status(flags, payload)})"  # the server ended the call
            self.ended_streams.add(sid)
            self._window_event.set()
        elif kind == FrameType.HEADERS:
            self._grpc_status(flags, payload)  # keeps the HPACK table in step
        self.frames_in[name] += 1
        if kind == FrameType.GOAWAY and len(payload) >= 8:
            _, code = struct.unpack_from(">II", payload)
            self.mark_closed(f"GOAWAY {_ERROR_NAMES.get(code, code)}")
        elif kind == FrameType.SETTINGS and not flags & Flag.ACK:
            for off in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, off)
                if key == Setting.INITIAL_WINDOW_SIZE:
                    delta = value - self.peer_initial_window
                    self.peer_initial_window = value
                    for s in self.stream_windows:
                        self.stream_windows[s] += delta
                    self._window_event.set()
                elif key == Setting.MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            self._send_later(frame(FrameType.SETTINGS, Flag.ACK, 0), then=self.settings_received)
        elif kind == FrameType.PING and not flags & Flag.ACK:
            self._send_later(frame(FrameType.PING, Flag.ACK, 0, payload))
        elif kind == FrameType.WINDOW_UPDATE and len(payload) == 4:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.send_window += increment
            elif sid in self.stream_windows:
                self.stream_windows[sid] += increment
            self._window_event.set()

    def _grpc_status(self, flags: int, payload: bytes) -> str:
        """``, grpc-status N`` of a header block, when it can be decoded (the decoder follows
        every block the server sends; a block split into CONTINUATION frames stops it)."""
        if self._hpack is None:
            return ""
        if flags & Flag.PADDED or flags & Flag.PRIORITY or not flags & Flag.END_HEADERS:
            self._hpack = None  # rare for a server; give up rather than decode wrong
            return ""
        try:
            headers = self._hpack.decode(payload, raw=True)
        except hpack.HPACKError:
            self._hpack = None
            return ""
        for key, value in headers:
            if key == b"grpc-status":
                return f", grpc-status {value.decode(errors='replace')}"
        return ""

    # -- flow control (for attacks that send DATA) --------------------------------------------

    def open_stream(self, sid: int) -> None:
        self.stream_windows[sid] = self.peer_initial_window

    def window(self, sid: int) -> int:
        return min(self.send_window, self.stream_windows.get(sid, 0))

    def consume(self, sid: int, n: int) -> None:
        self.send_window -= n
        self.stream_windows[sid] -= n

    async def window_opened(self) -> None:
        """Wait for the next WINDOW_UPDATE, SETTINGS or ended stream (or the connection's end)."""
        self._window_event.clear()
        await self._window_event.wait()

    async def wait_window(self, need: int, sid: int | None = None) -> bool:
        """Wait until ``need`` bytes of DATA may be sent (on the connection, and on ``sid``):
        an attacker that overran a window would be cut for that, not for its attack."""
        while not self.gone and (
            self.send_window < need or (sid is not None and self.stream_windows.get(sid, 0) < need)
        ):
            await self.window_opened()
        return not self.gone

    async def drain_briefly(self, seconds: float) -> None:
        """Read what is there for up to ``seconds``, fast (the watch after an attack)."""
        self.start_reader()  # at full speed now, whatever pace the attack read at
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self.gone:
                    await asyncio.sleep(0.02)
                    self.poll_tcp()


# -- HTTP/2 request pieces ------------------------------------------------------------------


def grpc_header_block(path: str, authority: str) -> bytes:
    """A gRPC request's header block, HPACK-encoded without the dynamic table (never-indexed
    literals), so one block can be sent on any stream of any connection."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
               ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
    return bytes(hpack.Encoder().encode([(k.encode(), v.encode(), True) for k, v in headers]))


def grpc_message(payload: bytes, declared: int | None = None) -> bytes:
    """A gRPC length-prefixed message; ``declared`` overrides the length it says it has."""
    return struct.pack(">BI", 0, len(payload) if declared is None else declared) + payload


def headers_frame(sid: int, block: bytes, *, end_stream: bool = False, end_headers: bool = True) -> bytes:
    flags = (Flag.END_HEADERS if end_headers else 0) | (Flag.END_STREAM if end_stream else 0)
    return frame(FrameType.HEADERS, flags, sid, block)


def data_frame(sid: int, payload: bytes | memoryview, *, end_stream: bool = False) -> bytes:
    return frame_header(FrameType.DATA, Flag.END_STREAM if end_stream else 0, sid, len(payload)) + bytes(
        payload
    )


_TCP_CLOSE = 7  # linux/tcp_states.h
_TCP_CLOSE_WAIT = 8


def _tcp_closed(sock: socket.socket) -> bool:
    """Whether the peer ended the connection (reset or FIN), from TCP_INFO (Linux; else False)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except (OSError, AttributeError):
        return False
    return info[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT)
