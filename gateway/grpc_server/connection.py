"""One client connection: HTTP/2 frames in, unary gRPC calls to the service's methods, answers out.

Protocol errors that break the connection end it with GOAWAY; those of one stream end that
stream with RST_STREAM. Every call that reaches a method ends with exactly one status: the
method's answer, its ``RpcError``, INTERNAL for anything else it raises, or DEADLINE_EXCEEDED
when the client's ``grpc-timeout`` passes first. A call the client resets, or whose connection
is lost, has its method's task cancelled.

What one connection may cost the server is bounded by its ``ServerSettings``:

* request bytes: the connection window is given back only for bytes that a request handed to
  its method or that a closed stream let go, so unfinished requests never hold more than that
  window. If they fill it, none can end: the oldest that fit in it whole are kept and the
  others refused (REFUSED_STREAM), so that a client that interleaves its requests still gets on;
* answer bytes: reading pauses while the socket's write buffer is over ``write_buffer_bytes``,
  and an answer that would take the answers buffered on the connection over
  ``max_buffered_answer_bytes`` ends its call with RESOURCE_EXHAUSTED instead;
* time: a request not fully arrived ``request_timeout_s`` after its HEADERS is ended without
  calling its method; an answer that flow control holds back, or writes that the client does
  not read (nor drained from the kernel's send queue), for ``stall_timeout_s`` end the stream
  or the connection. One timer per connection checks, ticking only while the connection has
  streams, paused writes or unsent bytes;
* CPU: frames that make the server work without asking for a call (PING, SETTINGS, PRIORITY,
  RST_STREAM, idle WINDOW_UPDATE, empty DATA or CONTINUATION, unknown types, streams reset by
  the client or for its errors, or refused; refused for a full window, its bytes too, past two
  windows' worth thrown away since a request last ended) spend a budget that refills with time
  and with answered calls; once it is spent the connection ends with GOAWAY ENHANCE_YOUR_CALM
  (as against CVE-2019-9512/9515/9518, CVE-2023-44487 "rapid reset" and CVE-2025-8671
  "MadeYouReset"). Header blocks are bounded in bytes and in CONTINUATION frames.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import grpc
import hpack

from gateway.grpc_server.compression import gunzip, gzip_message
from gateway.grpc_server.frames import (
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    FRAME_HEADER,
    HEADER_SIZE,
    LARGEST_MAX_FRAME,
    MAX_WINDOW,
    PREFACE,
    ConnectionError_,
    ErrorCode,
    Flag,
    FrameType,
    Setting,
    frame,
    frame_header,
    goaway,
    rst_stream,
    settings_frame,
    window_update,
)
from gateway.grpc_server.header_cache import CachingDecoder
from gateway.grpc_server.headers import (
    ACCEPT_ENCODING,
    GZIP_RESPONSE_HEADERS,
    OK_TRAILERS,
    RESPONSE_HEADERS,
    http_status_block,
    parse_timeout,
    status_block,
)
from gateway.grpc_server.service import RpcError, StreamMethod, UnaryMethod, call_opened

if TYPE_CHECKING:
    from gateway.grpc_server.server import ServerSettings

log = logging.getLogger(__name__)

_DATA, _HEADERS, _CONTINUATION = FrameType.DATA, FrameType.HEADERS, FrameType.CONTINUATION
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = Flag.END_STREAM, Flag.END_HEADERS, Flag.PADDED, Flag.PRIORITY
_MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC message framing: compressed flag, length
_U32 = struct.Struct(">I")
CLOSE_LINGER_S = 1.0  # how long a drained connection waits for the client to close it
_OK_TRAILERS_FRAME_FLAGS = Flag.END_HEADERS | Flag.END_STREAM
MIN_CONTINUATIONS = 64  # CONTINUATION frames allowed per header block (more if the list size needs them)
_PRODUCTIVE = 1024  # answer bytes a WINDOW_UPDATE must let out to cost no budget
_SETTINGS_PER_UNIT = 10  # a SETTINGS frame costs one unit more per this many settings
# Budget each stream brings: clients send a WINDOW_UPDATE or two per call (grpc-core does).
# A client's reset of an open stream takes it back, plus a unit each for the reset and the HEADERS.
_STREAM_ALLOWANCE = 2.0
CALLS_PER_TURN = 16  # header blocks (calls) one read may handle before the connection yields the loop
# ... and a quarter of that while the connection had calls left over after its last turn: a
# burst of thousands of calls takes short turns, while a client whose calls fit in a turn keeps
# the cheaper long ones (measurements in docs/hardening.md).
BURST_CALLS_PER_TURN = 4
# A connection that holds this many bytes of unfinished requests yields the loop after each
# DATA_PER_TURN bytes, so that a window filled at once is not read in one go.
HOLDING_BYTES = 1024 * 1024
DATA_PER_TURN = 64 * 1024
MIN_DRAIN_BYTES_PER_S = 1024  # a client reading slower than this, with answers waiting, is stalled
_TIMED_OUT_STREAM_UNITS = 100.0  # ten of them spend a full budget
# A client whose concurrent requests overfill the window throws away a few windows for each
# one that ends (grpc-core spreads its DATA over them); one that ends none, all it sends.
FREE_DISCARDED_WINDOWS = 2
DISCARDED_BYTES_PER_UNIT = 64 * 1024  # past those: a unit per this many bytes refused


class _Stream:
    __slots__ = ("body", "closed", "ending", "gzip", "headers_sent", "held", "id", "inbox", "method", "opened",
                 "pending", "queued", "remote_closed", "send_window", "size", "stalled_at", "task", "timer",
                 "unacked", "waiter")  # fmt: skip

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.opened = time.monotonic()  # its HEADERS arrived
        self.method: UnaryMethod | None = None
        self.body: bytes | bytearray = b""  # not a list of chunks: a bytes object per 1-byte frame is ~40x
        self.size = 0  # request bytes received
        self.held = 0  # request bytes in ``body`` that the connection window has not had back
        self.unacked = 0  # request bytes not yet given back to the client's stream window
        self.send_window = send_window
        self.remote_closed = False  # the client sent END_STREAM
        self.closed = False
        self.headers_sent = False
        self.pending: memoryview | None = None  # response DATA waiting for flow control
        self.stalled_at = 0.0  # when its answer first waited for flow control (a trickle does not reset it)
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.gzip = False  # grpc-encoding gzip: the request may come compressed, the answer goes compressed
        # A streaming call: its messages not yet read (None: the client half-closed), the reader
        # waiting for one, and whether its method has returned (trailers once all is sent).
        self.inbox: deque[bytes | None] | None = None
        self.queued = 0  # bytes of the messages in ``inbox``: held (both windows) until read
        self.waiter: asyncio.Future[None] | None = None
        self.ending = False


class _CallStream:
    """A streaming call as its method sees it (``service.CallStream``)."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: GrpcConnection, stream: _Stream) -> None:
        self._conn = conn
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        inbox = stream.inbox
        assert inbox is not None
        while not inbox:
            if stream.closed:
                raise StopAsyncIteration
            stream.waiter = self._conn._loop.create_future()
            try:
                await stream.waiter
            finally:
                stream.waiter = None
        message = inbox.popleft()
        if message is None:
            inbox.append(None)  # stays ended
            raise StopAsyncIteration
        self._conn._read(stream, _MESSAGE_PREFIX.size + len(message))
        return message

    def send(self, message: bytes) -> None:
        self._conn._send_message(self._stream, message)


class GrpcConnection(asyncio.Protocol):
    def __init__(
        self,
        methods: Mapping[bytes, UnaryMethod],
        settings: ServerSettings,
        streaming: Mapping[bytes, StreamMethod] | None = None,
    ) -> None:
        self._methods = methods
        self._streaming = streaming or {}
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._decoder = CachingDecoder(hpack.Decoder(max_header_list_size=settings.max_header_list_bytes))
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}  # answers waiting for a window, in order
        self._last_stream_id = 0
        self._table_update_due = False  # a dynamic table size update leads the next header block
        self._goaway_last: int | None = None  # the last stream id a GOAWAY named
        self._continuation: tuple[int, int, list[bytes]] | None = None
        self._continuation_size = 0
        self._continuation_frames = 0
        self._max_continuations = max(
            MIN_CONTINUATIONS, 2 * settings.max_header_list_bytes // DEFAULT_MAX_FRAME + 2
        )
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._stream_window = settings.stream_window
        self._stream_half = settings.stream_window // 2
        self._max_request = settings.max_message_bytes + _MESSAGE_PREFIX.size
        self._recv_window = settings.receive_window
        self._recv_half = self._recv_window // 2
        self._min_update = min(DEFAULT_MAX_FRAME, self._recv_half)
        self._recv_unacked = 0  # bytes received that the client's connection window has not had back
        self._recv_held = 0  # of them, those in requests that have not ended
        self._discarded = 0  # bytes of requests refused for a full window since a request last ended
        self._budget = float(settings.control_frame_budget)
        self._budget_at = time.monotonic()
        self._call_credit = settings.control_frame_credit_per_call
        self._pending_bytes = 0  # answer bytes waiting for flow control, all streams
        self._released = 0  # answer bytes flow control let out (tells a useful WINDOW_UPDATE)
        self._write_paused = False
        self._paused_at = 0.0
        self._written = 0  # bytes handed to the transport (answers and frames)
        # While written bytes wait to be sent: since when, and how many had been sent then.
        self._unsent_since: float | None = None
        self._sent_then = 0
        self._tick: asyncio.TimerHandle | None = None
        self._tick_s = min(1.0, settings.request_timeout_s / 2, settings.stall_timeout_s / 2)
        self._draining = False  # GOAWAY sent or received: no new streams, close when idle
        self._misbehaved = False  # ended by a connection error: closed without waiting on writes
        self._calls_this_turn = 0  # header blocks handled from this read
        self._burst = False  # the last turn ended with calls still waiting
        self._data_this_turn = 0
        self._turn_paused = False  # reading paused until the loop has run what this read started
        self._eof_sent = False
        self._out_closed = False  # EOF sent or the transport closing: nothing more is written
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        s = self._settings
        transport.set_write_buffer_limits(high=s.write_buffer_bytes)
        preface = settings_frame({
            Setting.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            Setting.INITIAL_WINDOW_SIZE: s.stream_window,
            Setting.MAX_FRAME_SIZE: s.max_frame_bytes,
            Setting.MAX_HEADER_LIST_SIZE: s.max_header_list_bytes,
        })  # fmt: skip
        if self._recv_window > DEFAULT_WINDOW:  # an increment of 0 is a connection error (RFC 9113 6.9)
            preface += window_update(0, self._recv_window - DEFAULT_WINDOW)
        if self._draining:  # the server began to stop before this connection was set up
            preface += self._goaway(ErrorCode.NO_ERROR)
        transport.write(preface)
        self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for stream in list(self._streams.values()):
            self._drop(stream)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._eof_sent:  # read and dropped, so that the close is not a reset
            return
        if not self._turn_paused:
            self._calls_this_turn = 0
            self._data_this_turn = 0
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        try:
            pos = self._consume(buf)
        except ConnectionError_ as exc:
            self._buf = bytearray()
            self.abort(exc.code, str(exc))
            return
        if pos == len(buf):
            if self._buf:
                self._buf = bytearray()
        elif pos or buf is data:  # a partial frame left: keep it (a fresh copy, never resized under views)
            self._buf = bytearray(memoryview(buf)[pos:])

    def pause_writing(self) -> None:
        # The client reads slower than it asks: read no more of it until it catches up.
        self._write_paused = True
        self._paused_at = time.monotonic()
        if self._transport is not None:
            self._transport.pause_reading()
            self._start_tick()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._transport.is_closing() and not self._turn_paused:
            self._transport.resume_reading()

    def _yield_turn(self) -> None:
        """Enough header blocks handled from one read: let other connections and the calls run
        before this connection's next frames (a burst of thousands of calls would hold the loop)."""
        self._turn_paused = True
        if self._transport is not None:
            self._transport.pause_reading()
        self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_paused = False
        self._calls_this_turn = 0
        self._data_this_turn = 0
        if self._buf:
            self.data_received(b"")
        transport = self._transport
        if transport is not None and not self._turn_paused and not self._write_paused and not transport.is_closing():
            transport.resume_reading()

    # -- shutdown ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Refuse new streams (GOAWAY), finish the open ones, then close."""
        if self._draining:
            return
        self._draining = True
        if self._transport is not None:  # else connection_made sends it
            self._transport.write(self._goaway(ErrorCode.NO_ERROR))
            self._close_if_idle()

    def _goaway(self, code: ErrorCode, debug: bytes = b"") -> bytes:
        """A GOAWAY naming the last stream this server takes: never more than an earlier one
        named (RFC 9113 6.8), whatever streams were refused since."""
        last = self._last_stream_id if self._goaway_last is None else min(self._goaway_last, self._last_stream_id)
        self._goaway_last = last
        return goaway(last, code, debug)

    def abort(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close now: GOAWAY with ``code``, cancel the open calls, then close the socket (after
        a linger, as ``_close_if_idle`` does, so that the GOAWAY reaches the client)."""
        transport = self._transport
        if transport is None:
            return
        if code != ErrorCode.NO_ERROR:
            log.info("gRPC connection error %s: %s", code.name, reason)
            self._misbehaved = True
        self._draining = True
        if self._out_closed:  # half-closed already: nothing more to say
            self._close()
        else:
            self._write(self._goaway(code, reason.encode()[:256]))
            self._linger(transport)
        for stream in list(self._streams.values()):
            self._drop(stream)

    def _close_if_idle(self) -> None:
        """Once draining and idle: half-close, and close when the client does (or in a second)."""
        transport = self._transport
        if not self._draining or self._streams or transport is None or self._out_closed:
            return
        self._linger(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close, read and drop what still comes, and close in a second (or when the client
        does). Why not close at once: a socket closed with unread bytes (a PING or WINDOW_UPDATE
        in flight, or the rest of a flood) is reset, and a reset may drop what was last written."""
        if not transport.can_write_eof():
            self._close()
            return
        self._eof_sent = self._out_closed = True
        try:
            transport.write_eof()
        except OSError:  # the client is gone already
            self._close()
            return
        self._loop.call_later(CLOSE_LINGER_S, self._close)

    def _close(self) -> None:
        """Close once the buffered writes are out; drop them if the client will not take them."""
        self._out_closed = True
        if self._transport is not None:
            self._transport.close()
            # A client cut off for misbehaving gets its GOAWAY's linger, not a stall timeout more.
            wait = CLOSE_LINGER_S if self._misbehaved else self._settings.stall_timeout_s
            self._loop.call_later(wait, self._kill)

    def _kill(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- limits ------------------------------------------------------------------------------

    def _charge(self, what: str, units: float = 1.0) -> None:
        """Spend the budget for a frame that asks for no call; ENHANCE_YOUR_CALM once it is spent."""
        s = self._settings
        now = time.monotonic()
        budget = self._budget + (now - self._budget_at) * s.control_frame_refill_per_s
        if budget > s.control_frame_budget:
            budget = s.control_frame_budget
        self._budget = budget - units
        self._budget_at = now
        if self._budget < 0:
            raise ConnectionError_(
                ErrorCode.ENHANCE_YOUR_CALM, f"too many frames that ask for nothing ({what})"
            )

    def _start_tick(self) -> None:
        if self._tick is None:
            self._tick = self._loop.call_later(self._tick_s, self._on_tick)

    def _on_tick(self) -> None:
        """End what has waited too long: writes nobody reads, requests that do not arrive,
        answers that flow control holds back."""
        self._tick = None
        transport = self._transport
        if transport is None:
            return
        s = self._settings
        now = time.monotonic()
        if self._write_paused and now - self._paused_at > s.stall_timeout_s:
            log.info("gRPC connection aborted: the client read nothing for %g s", s.stall_timeout_s)
            self._out_closed = True
            transport.abort()
            return
        # A client that reads a few bytes a second keeps its answers in the kernel's send queue,
        # where no write ever pauses: cut off when, with bytes waiting all along, fewer than
        # MIN_DRAIN_BYTES_PER_S went out over the stall timeout.
        unsent = _unsent_bytes(transport)
        if not unsent:
            self._unsent_since = None
        elif self._unsent_since is None:
            self._unsent_since, self._sent_then = now, self._written - unsent
        elif now - self._unsent_since > s.stall_timeout_s:
            sent = self._written - unsent
            if sent - self._sent_then < MIN_DRAIN_BYTES_PER_S * (now - self._unsent_since):
                log.info("gRPC connection aborted: its answers drained too slowly for %g s", s.stall_timeout_s)
                self._out_closed = True
                transport.abort()
                return
            self._unsent_since, self._sent_then = now, sent
        try:
            for stream in list(self._streams.values()):
                if stream.inbox is None and not stream.remote_closed and now - stream.opened > s.request_timeout_s:
                    message = f"the request did not arrive within {s.request_timeout_s:g} s"
                    self._send_status(stream, grpc.StatusCode.CANCELLED, message)
                elif stream.pending is not None and now - stream.stalled_at > s.stall_timeout_s:
                    self._reset(stream, ErrorCode.CANCEL)
                else:
                    continue
                # A client that keeps streams it never completes or never reads is cut off
                # once they add up, not only its streams.
                self._charge("timed-out stream", _TIMED_OUT_STREAM_UNITS)
        except ConnectionError_ as exc:
            self.abort(exc.code, str(exc))
            return
        if self._streams or self._write_paused or self._unsent_since is not None:
            self._start_tick()

    # -- frames in ---------------------------------------------------------------------------

    def _consume(self, buf: bytes | bytearray) -> int:
        """Handle every whole frame in ``buf``; returns how many bytes were used."""
        view = memoryview(buf)
        pos = 0
        n = len(buf)
        if not self._preface_seen:
            if n < len(PREFACE):
                if PREFACE[:n] != buf:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if view[: len(PREFACE)] != PREFACE:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface_seen = True
            pos = len(PREFACE)
        max_frame = self._settings.max_frame_bytes
        yielded = False
        while n - pos >= HEADER_SIZE and self._transport is not None:
            calls_full = self._calls_this_turn >= (BURST_CALLS_PER_TURN if self._burst else CALLS_PER_TURN)
            if calls_full or (self._data_this_turn >= DATA_PER_TURN and self._recv_held >= HOLDING_BYTES):
                self._burst = calls_full  # short turns only while calls are left over
                yielded = True
                self._yield_turn()
                break
            hi, lo, kind, flags, stream_id = FRAME_HEADER.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if length > max_frame:
                raise ConnectionError_(
                    ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes over {max_frame}"
                )
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            payload = view[pos + HEADER_SIZE : end]
            pos = end
            stream_id &= 0x7FFFFFFF
            if self._continuation is not None and (
                kind != _CONTINUATION or stream_id != self._continuation[0]
            ):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
            if kind == _DATA:
                self._on_data(flags, stream_id, payload)
                self._data_this_turn += length
            elif kind == _HEADERS:
                self._on_headers(flags, stream_id, payload)
            else:
                self._on_control(kind, flags, stream_id, payload)
        if not yielded:
            self._burst = False
        return pos

    def _on_control(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if kind == FrameType.CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == FrameType.SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == FrameType.PING:
            if stream_id != 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING of other than 8 bytes")
            self._charge("PING")  # an ack too: this server sends no PING
            if not flags & Flag.ACK:
                self._write(frame(FrameType.PING, Flag.ACK, 0, bytes(payload)))
        elif kind == FrameType.RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "bad RST_STREAM")
            self._idle_check(stream_id, "RST_STREAM")
            stream = self._streams.get(stream_id)
            # A stream opened only to be reset costs its HEADERS too ("rapid reset"); one the
            # server has begun to answer is a client done with it (Envoy's ext_proc streams).
            answered = stream is not None and stream.headers_sent and _reading(stream)
            self._charge("RST_STREAM", 1.0 if stream is None or answered else 2.0 + _STREAM_ALLOWANCE)
            if stream is not None:
                self._drop(stream)
        elif kind == FrameType.GOAWAY:
            self._charge("GOAWAY")
            self._draining = True
            self._close_if_idle()
        elif kind == FrameType.PUSH_PROMISE:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif kind == FrameType.PRIORITY:
            if stream_id == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            self._charge("PRIORITY")
        else:  # frame types this server does not know are ignored, as RFC 9113 asks
            self._charge("unknown type")

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            self._charge("SETTINGS")
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self._charge("SETTINGS", 1.0 + len(payload) // (6 * _SETTINGS_PER_UNIT))
        window = None
        for key, value in struct.iter_unpack(">HI", payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                window = value
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= LARGEST_MAX_FRAME:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            elif key == Setting.HEADER_TABLE_SIZE:
                # The literal-only header blocks never use the dynamic table, but a decoder told
                # a smaller size than 4,096 waits for the encoder to confirm one (RFC 7541 4.2;
                # nghttp2 fails the next block without it): the next block starts with size 0.
                self._table_update_due = True
            # The other settings concern the client.
        self._write(frame(FrameType.SETTINGS, Flag.ACK, 0))
        # Only the last value counts, and only a change walks the streams.
        delta = 0 if window is None else window - self._peer_initial_window
        if delta:
            self._peer_initial_window += delta
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            if delta > 0:
                self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        released = self._released
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            if self._blocked:
                self._flush_blocked()
        else:
            self._idle_check(stream_id, "WINDOW_UPDATE")
            stream = self._streams.get(stream_id)
            if stream is not None:  # else closed already: an update in flight
                stream.send_window += increment
                if increment == 0 or stream.send_window > MAX_WINDOW:
                    code = ErrorCode.PROTOCOL_ERROR if increment == 0 else ErrorCode.FLOW_CONTROL_ERROR
                    self._stream_error(stream, code)
                elif stream.pending is not None:
                    self._flush(stream)
        # One that lets an answer move is paid for by the answer; any other costs the budget.
        if self._released - released < _PRODUCTIVE:
            self._charge("WINDOW_UPDATE")

    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = _unpad(flags, payload)
        if flags & _PRIORITY:
            if len(payload) < 5:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & _END_HEADERS:
            self._on_header_block(flags, stream_id, bytes(payload))
        else:
            self._continuation = (stream_id, flags, [bytes(payload)])
            self._continuation_size = len(payload)
            self._continuation_frames = 0

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        first_flags, parts = self._continuation[1], self._continuation[2]
        self._continuation_size += len(payload)
        self._continuation_frames += 1
        if self._continuation_size > 2 * self._settings.max_header_list_bytes:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if self._continuation_frames > self._max_continuations:
            raise ConnectionError_(
                ErrorCode.ENHANCE_YOUR_CALM, "header block in too many CONTINUATION frames"
            )
        if not payload:
            self._charge("empty CONTINUATION")
        parts.append(bytes(payload))
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, b"".join(parts))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        self._calls_this_turn += 1  # decoding a block, and the call it may start, is the costly part
        try:  # always decoded: the HPACK table is the connection's, whatever becomes of the stream
            headers = self._decoder.decode(block)
        except hpack.HPACKError as exc:
            raise ConnectionError_(ErrorCode.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers, which a request has no use for
            if stream.remote_closed or not flags & _END_STREAM:
                self._stream_error(
                    stream, ErrorCode.STREAM_CLOSED if stream.remote_closed else ErrorCode.PROTOCOL_ERROR
                )
            elif stream.inbox is not None:
                self._half_closed(stream)
            else:
                self._end_of_request(stream)
            return
        if stream_id % 2 == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"HEADERS on server stream {stream_id}")
        if stream_id <= self._last_stream_id:
            self._charge("HEADERS on a closed stream")
            return  # a stream this server answered or reset: its frames may still be in flight
        self._last_stream_id = stream_id
        if self._draining or len(self._streams) >= self._settings.max_concurrent_streams:
            self._charge("refused stream")
            self._write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        stream = _Stream(stream_id, self._peer_initial_window)
        self._streams[stream_id] = stream
        self._budget += _STREAM_ALLOWANCE
        if self._tick is None:
            self._start_tick()
        stream.remote_closed = bool(flags & _END_STREAM)
        method = path = content_type = timeout = encoding = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
        if method != b"POST":
            self._send_http_status(stream, 405)
        elif content_type is None or not content_type.startswith(b"application/grpc"):
            self._send_http_status(stream, 415)
        elif (streamer := self._streaming.get(path or b"")) is not None:
            if encoding not in (None, b"identity"):
                self._send_status(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed streams are not supported")
                return
            if not self._arm_deadline(stream, timeout):
                return
            stream.inbox = deque()
            if stream.remote_closed:
                stream.inbox.append(None)
            stream.task = self._loop.create_task(self._stream_call(stream, streamer))
        elif (handler := self._methods.get(path or b"")) is None:
            self._send_status(
                stream,
                grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {(path or b'').decode(errors='replace')}",
            )
        elif encoding not in (None, b"identity", b"gzip"):
            self._send_status(
                stream, grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding.decode(errors='replace')} is not supported",
                (("grpc-accept-encoding", ACCEPT_ENCODING.decode()),),
            )  # fmt: skip
        else:
            stream.method = handler
            stream.gzip = encoding == b"gzip"
            if not self._arm_deadline(stream, timeout):
                return
            if stream.remote_closed:
                self._end_of_request(stream)

    def _arm_deadline(self, stream: _Stream, timeout: bytes | None) -> bool:
        """End the call at the client's ``grpc-timeout``; False (the call ended) if malformed."""
        if timeout is None:
            return True
        seconds = parse_timeout(timeout)
        if seconds is None:
            self._send_status(stream, grpc.StatusCode.INTERNAL, f"malformed grpc-timeout {timeout!r}")
            return False
        stream.timer = self._loop.call_later(seconds, self._expire, stream)
        return True

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        counted = len(payload)  # padding included, as flow control counts it
        self._recv_unacked += counted
        if self._recv_unacked > self._recv_window:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "DATA past the connection window")
        payload = _unpad(flags, payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._idle_check(stream_id, "DATA")  # else a stream already answered or refused
            if not counted and not flags & _END_STREAM:
                self._charge("empty DATA")
        elif stream.remote_closed:
            self._stream_error(stream, ErrorCode.STREAM_CLOSED)
        elif stream.inbox is not None:
            self._on_stream_data(stream, flags, counted, payload)
        else:
            stream.unacked += counted
            n = len(payload)
            stream.size += n
            if stream.unacked > self._stream_window:
                self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
            elif stream.size > self._max_request:
                limit = self._settings.max_message_bytes
                self._send_status(
                    stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({stream.size - _MESSAGE_PREFIX.size} vs. {limit})",
                )  # fmt: skip
            else:
                if n:
                    _append(stream, payload)
                elif not flags & _END_STREAM:
                    self._charge("empty DATA")
                if flags & _END_STREAM:
                    self._end_of_request(stream)  # this frame's bytes go straight to the method
                else:
                    stream.held += n
                    self._recv_held += n
                    if stream.unacked >= self._stream_half:
                        self._write(window_update(stream_id, stream.unacked))
                        stream.unacked = 0
        if self._recv_unacked >= self._recv_half:
            self._give_back()
            if self._recv_held >= self._recv_window:
                self._unjam()

    def _on_stream_data(self, stream: _Stream, flags: int, counted: int, payload: memoryview) -> None:
        """DATA of a streaming call: each whole message goes to the method as it completes."""
        stream.unacked += counted
        if stream.unacked > self._stream_window:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        n = len(payload)
        if n:
            _append(stream, payload)
            stream.held += n
            self._recv_held += n
        elif not flags & _END_STREAM:
            self._charge("empty DATA")
        body = stream.body
        inbox = stream.inbox
        assert inbox is not None
        start = 0
        while len(body) - start >= _MESSAGE_PREFIX.size:
            compressed, length = _MESSAGE_PREFIX.unpack_from(body, start)
            if compressed:
                self._send_status(stream, grpc.StatusCode.INTERNAL, "compressed message without grpc-encoding")
                return
            if length > self._settings.max_message_bytes:
                limit = self._settings.max_message_bytes
                self._send_status(
                    stream, grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({length} vs. {limit})"
                )
                return
            end = start + _MESSAGE_PREFIX.size + length
            if len(body) < end:
                break
            inbox.append(bytes(body[start + _MESSAGE_PREFIX.size : end]))
            self._discarded = 0
            start = end
        if start:
            stream.body = body[start:]
            stream.queued += start  # held until the method reads them: a method that does not read
            # stops the client (flow control), instead of its messages piling up here
        if flags & _END_STREAM:
            if stream.body:
                self._send_status(stream, grpc.StatusCode.INTERNAL, "the stream ended inside a message")
                return
            self._half_closed(stream)
        else:
            self._ack_stream(stream)
        if inbox:
            _wake(stream)

    def _ack_stream(self, stream: _Stream) -> None:
        """Give the client's stream window back what no unread message holds, in large steps."""
        free = stream.unacked - stream.queued
        if free >= self._stream_half:
            self._write(window_update(stream.id, free))
            stream.unacked -= free

    def _read(self, stream: _Stream, n: int) -> None:
        """A streaming method took a message of ``n`` bytes: both windows may have them back."""
        if stream.closed:
            return  # its bytes went back when it ended
        stream.queued -= n
        stream.held -= n
        self._recv_held -= n
        if not stream.remote_closed:
            self._ack_stream(stream)
        if self._recv_unacked >= self._recv_half:
            self._give_back()

    def _half_closed(self, stream: _Stream) -> None:
        stream.remote_closed = True
        assert stream.inbox is not None
        stream.inbox.append(None)
        _wake(stream)

    def _give_back(self) -> None:
        """WINDOW_UPDATE on stream 0 for the bytes that no unfinished request holds: in large
        increments, or in any while the client is short of window."""
        free = self._recv_unacked - self._recv_held
        if free >= self._min_update or (
            free > 0 and self._recv_window - self._recv_unacked < self._min_update
        ):
            self._write(window_update(0, free))
            self._recv_unacked -= free

    def _unjam(self) -> None:
        """Unfinished requests hold the whole connection window, so none can end (a client
        spreads its DATA over its streams). Keep the oldest that fit in the window whole, so
        that they can end however the client interleaves them; refuse the others (REFUSED_STREAM:
        never seen by a method, safe to retry)."""
        room = self._recv_window
        refused = []
        for stream in self._streams.values():  # oldest first
            if stream.held:
                whole = self._whole_request(stream)
                if whole <= room:
                    room -= whole
                else:
                    refused.append(stream)
        for stream in refused:
            # Past FREE_DISCARDED_WINDOWS thrown away with no request ended, each byte costs: a
            # client that only fills the window spent less on refusals than the budget refills.
            free = FREE_DISCARDED_WINDOWS * self._recv_window
            over = self._discarded - free
            self._discarded += stream.held
            thrown = self._discarded - free - max(over, 0)
            self._charge("refused stream", 1.0 + _STREAM_ALLOWANCE + max(thrown, 0) / DISCARDED_BYTES_PER_UNIT)
            # REFUSED_STREAM promises no method saw the call (the client may retry it): not so for
            # a streaming call, whose method runs from its HEADERS
            self._reset(stream, ErrorCode.CANCEL if stream.inbox is not None else ErrorCode.REFUSED_STREAM)

    def _whole_request(self, stream: _Stream) -> int:
        """The bytes the stream's request will hold once whole (its gRPC prefix tells)."""
        largest = self._settings.max_message_bytes + _MESSAGE_PREFIX.size
        if stream.size < _MESSAGE_PREFIX.size:
            return largest
        length = _MESSAGE_PREFIX.size + _MESSAGE_PREFIX.unpack_from(stream.body)[1]
        return min(largest, max(length, stream.size))

    def _idle_check(self, stream_id: int, what: str) -> None:
        if stream_id > self._last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    # -- calls -------------------------------------------------------------------------------

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.method is None or stream.closed:
            return
        body = stream.body
        stream.body = b""
        if stream.held:
            self._release(stream)
        if len(body) < _MESSAGE_PREFIX.size:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "expected one request message, got none")
            return
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if len(body) != _MESSAGE_PREFIX.size + length:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "expected exactly one request message")
            return
        if compressed and not stream.gzip:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "compressed message without grpc-encoding")
            return
        message = (
            body[_MESSAGE_PREFIX.size :]
            if type(body) is bytes
            else bytes(memoryview(body)[_MESSAGE_PREFIX.size :])
        )
        self._discarded = 0
        stream.task = self._loop.create_task(self._call(stream, stream.method, message, bool(compressed)))

    def _release(self, stream: _Stream) -> None:
        """The stream's request bytes no longer hold the connection window."""
        if stream.held:
            self._recv_held -= stream.held
            stream.held = 0
            if self._recv_unacked >= self._recv_half:
                self._give_back()

    async def _call(self, stream: _Stream, method: UnaryMethod, message: bytes, compressed: bool = False) -> None:
        async def unary() -> None:
            request = await gunzip(message, self._settings.max_message_bytes) if compressed else message
            reply = await method(request)
            if stream.gzip:
                reply = await gzip_message(reply)
            self._budget += self._call_credit  # an answered call pays for a few control frames
            self._send_reply(stream, reply)

        await self._guarded(stream, unary())

    async def _stream_call(self, stream: _Stream, method: StreamMethod) -> None:
        async def streaming() -> None:
            await method(_CallStream(self, stream))
            if stream.closed:  # reset by the client: no credit for a call it did not let end
                return
            self._budget += self._call_credit
            if stream.pending is not None:
                stream.ending = True  # the trailers follow what flow control holds back
            elif stream.headers_sent:
                out = frame(_HEADERS, _OK_TRAILERS_FRAME_FLAGS, stream.id, self._hb(OK_TRAILERS))
                if not stream.remote_closed:
                    out += rst_stream(stream.id, ErrorCode.NO_ERROR)
                self._write(out)
                self._finish(stream)
            else:
                self._send_status(stream, grpc.StatusCode.OK, "")

        await self._guarded(stream, streaming())

    async def _guarded(self, stream: _Stream, call: Awaitable[None]) -> None:
        """Run a call; a method's error, or cancel, ends its stream with a status."""
        call_opened.set(stream.opened)  # this task's own context: seen by this call only
        try:
            await call
        except RpcError as exc:
            if not stream.closed:  # no credit for a call the client reset
                self._budget += self._call_credit
            self._send_status(stream, exc.code, exc.details, exc.trailers)
        except asyncio.CancelledError:
            # The server's own cancels (reset, deadline, lost connection) close the stream first;
            # any other (a future the method awaited was cancelled) still owes the client a status.
            self._send_status(stream, grpc.StatusCode.CANCELLED, "cancelled on the server")
            raise
        except Exception:
            log.exception("gRPC method failed on stream %d", stream.id)
            self._send_status(stream, grpc.StatusCode.INTERNAL, "internal error")

    def _send_message(self, stream: _Stream, message: bytes) -> None:
        """One message of a streaming call's answer (dropped once the stream is closed)."""
        if stream.closed or stream.ending:
            return
        sid = stream.id
        size = _MESSAGE_PREFIX.size + len(message)
        prefix = _MESSAGE_PREFIX.pack(0, len(message))
        out = b"" if stream.headers_sent else frame(_HEADERS, _END_HEADERS, sid, self._hb(RESPONSE_HEADERS))
        stream.headers_sent = True
        if (
            stream.pending is None
            and size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_max_frame
            and not self._write_paused
        ):
            stream.send_window -= size
            self._send_window -= size
            self._write(b"".join((out, frame_header(_DATA, 0, sid, size), prefix, message)))
            return
        if out:
            self._write(out)
        transport = self._transport
        buffered = self._pending_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        if buffered > self._settings.write_buffer_bytes and buffered + size > self._settings.max_buffered_answer_bytes:
            self._send_status(stream, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many answers wait for the client")
            return
        if stream.pending is None:
            stream.pending = memoryview(prefix + message)
            stream.stalled_at = time.monotonic()
        else:
            stream.pending = memoryview(bytes(stream.pending) + prefix + message)
        self._pending_bytes += size
        self._flush(stream)

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.task is not None:
            stream.task.cancel()
        self._send_status(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    # -- frames out --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._out_closed:
            self._transport.write(data)
            self._written += len(data)

    def _send_reply(self, stream: _Stream, reply: bytes) -> None:
        if stream.closed:
            return
        sid = stream.id
        size = _MESSAGE_PREFIX.size + len(reply)
        prefix = _MESSAGE_PREFIX.pack(stream.gzip, len(reply))
        headers = GZIP_RESPONSE_HEADERS if stream.gzip else RESPONSE_HEADERS
        if (
            size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_max_frame
            and not self._write_paused
        ):
            stream.send_window -= size
            self._send_window -= size
            self._write(b"".join((
                frame(_HEADERS, _END_HEADERS, sid, self._hb(headers)),
                frame_header(_DATA, 0, sid, size), prefix, reply,
                frame(_HEADERS, _OK_TRAILERS_FRAME_FLAGS, sid, OK_TRAILERS),
            )))  # fmt: skip
            self._finish(stream)
            return
        # Buffered answers past the limit end their calls; while the buffer is under the
        # socket's high-water mark any one answer may go, however large.
        transport = self._transport
        buffered = self._pending_bytes + (transport.get_write_buffer_size() if transport is not None else 0)
        if (
            buffered > self._settings.write_buffer_bytes
            and buffered + size > self._settings.max_buffered_answer_bytes
        ):
            self._send_status(
                stream, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many answers wait for the client"
            )
            return
        self._write(frame(_HEADERS, _END_HEADERS, sid, self._hb(headers)))
        stream.headers_sent = True
        stream.pending = memoryview(prefix + reply)
        stream.stalled_at = time.monotonic()
        self._pending_bytes += size
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        """Send what flow control allows of a stream's answer; its trailers once all is sent."""
        pending = stream.pending
        assert pending is not None
        sent = 0
        while pending and stream.send_window > 0 and self._send_window > 0:
            n = min(len(pending), stream.send_window, self._send_window, self._peer_max_frame)
            self._write(frame(_DATA, 0, stream.id, pending[:n]))
            pending = pending[n:]
            stream.send_window -= n
            self._send_window -= n
            sent += n
        self._pending_bytes -= sent
        self._released += sent
        if pending:
            stream.pending = pending
            self._blocked[stream.id] = stream
            return
        stream.pending = None
        self._released += _PRODUCTIVE  # the end of an answer, however short, is progress
        self._blocked.pop(stream.id, None)
        if stream.inbox is not None and not stream.ending:
            return  # a streaming call goes on
        out = frame(_HEADERS, _OK_TRAILERS_FRAME_FLAGS, stream.id, self._hb(OK_TRAILERS))
        if stream.inbox is not None and not stream.remote_closed:
            out += rst_stream(stream.id, ErrorCode.NO_ERROR)
        self._write(out)
        self._finish(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            if stream.send_window > 0:
                self._flush(stream)

    def _send_status(
        self, stream: _Stream, code: grpc.StatusCode, message: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        """End the stream with a gRPC status (Trailers-Only if no headers went out yet)."""
        if stream.closed:
            return
        block = status_block(code.value[0], message, metadata, with_headers=not stream.headers_sent)
        self._send_block(stream, block)

    def _send_http_status(self, stream: _Stream, status: int) -> None:
        self._send_block(stream, http_status_block(status))

    def _hb(self, block: bytes) -> bytes:
        """A header block to send, led by a dynamic table size update (to 0) when one is due."""
        if self._table_update_due:
            self._table_update_due = False
            return b"\x20" + block
        return block

    def _send_block(self, stream: _Stream, block: bytes) -> None:
        sid = stream.id
        block = self._hb(block)
        limit = self._peer_max_frame
        if len(block) <= limit:
            out = frame(_HEADERS, _END_HEADERS | _END_STREAM, sid, block)
        else:  # rare: long details or metadata
            parts = [block[i : i + limit] for i in range(0, len(block), limit)]
            frames = [frame(_HEADERS, _END_STREAM, sid, parts[0])]
            frames += (frame(_CONTINUATION, 0, sid, p) for p in parts[1:-1])
            frames.append(frame(_CONTINUATION, _END_HEADERS, sid, parts[-1]))
            out = b"".join(frames)
        if not stream.remote_closed:  # the request is not needed any more
            out += rst_stream(sid, ErrorCode.NO_ERROR)
        self._write(out)
        self._finish(stream)

    def _stream_error(self, stream: _Stream, code: ErrorCode) -> None:
        """Reset a stream for the client's error: as costly as the client resetting it, or
        errors would reset streams for free ("MadeYouReset", CVE-2025-8671)."""
        self._charge("stream error", 2.0 + _STREAM_ALLOWANCE)
        self._reset(stream, code)

    def _reset(self, stream: _Stream, code: ErrorCode) -> None:
        self._write(rst_stream(stream.id, code))
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """The stream ends without an answer (reset, or the connection is gone). A streaming
        method waiting for its next message sees the end of its input, which costs no exception
        (Envoy resets every ext_proc stream once answered; docs/epp.md); any other call is
        cancelled."""
        task = stream.task
        reading = _reading(stream)
        self._finish(stream)
        if task is not None and not task.done() and not reading:
            task.cancel()

    def _finish(self, stream: _Stream) -> None:
        stream.closed = True
        _wake(stream)  # a reader of a streaming call sees the end
        if stream.pending is not None:
            self._pending_bytes -= len(stream.pending)
            stream.pending = None
        stream.body = b""
        if stream.held:
            self._release(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self._streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if not self._streams:
            if self._draining:
                self._close_if_idle()
            else:
                self._start_tick()  # one more look: is what was written being read?


def _reading(stream: _Stream) -> bool:
    """The stream's method waits for its next message, with none delivered yet (a woken reader
    has a message to handle, which a reset must still cancel)."""
    return stream.waiter is not None and not stream.waiter.done()


def _wake(stream: _Stream) -> None:
    """The reader of a streaming call waiting for a message (if any) looks again."""
    if stream.waiter is not None and not stream.waiter.done():
        stream.waiter.set_result(None)


def _append(stream: _Stream, payload: memoryview) -> None:
    """Add DATA to what the stream has received: bytes for the first frame (a one-frame request
    is not copied again), a bytearray once more come."""
    if not stream.body:
        stream.body = bytes(payload)
    else:
        if type(stream.body) is bytes:
            stream.body = bytearray(stream.body)
        stream.body += payload


def _unsent_bytes(transport: asyncio.Transport) -> int:
    """Bytes written but not yet sent: in the transport's buffer and the socket's send queue
    (Linux ``TIOCOUTQ``; elsewhere only the transport's)."""
    buffered = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None:
        return buffered
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, AttributeError, ValueError):
        return buffered
    return buffered + int(queued)


def _unpad(flags: int, payload: memoryview) -> memoryview:
    if not flags & _PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - payload[0]]
