"""One client connection: HTTP/2 frames in, unary gRPC calls to the service's methods, answers out.

Protocol errors that break the connection end it with GOAWAY; those of one stream end that
stream with RST_STREAM. Every call that reaches a method ends with exactly one status: the
method's answer, its ``RpcError``, INTERNAL for anything else it raises, or DEADLINE_EXCEEDED
when the client's ``grpc-timeout`` passes first. A call the client resets, or whose connection
is lost, has its method's task cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import grpc
import hpack

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
from gateway.grpc_server.headers import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    http_status_block,
    parse_timeout,
    status_block,
)
from gateway.grpc_server.service import RpcError, UnaryMethod, call_opened

if TYPE_CHECKING:
    from gateway.grpc_server.server import ServerSettings

log = logging.getLogger(__name__)

_DATA, _HEADERS, _CONTINUATION = FrameType.DATA, FrameType.HEADERS, FrameType.CONTINUATION
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = Flag.END_STREAM, Flag.END_HEADERS, Flag.PADDED, Flag.PRIORITY
_MESSAGE_PREFIX = struct.Struct(">BI")  # gRPC message framing: compressed flag, length
_U32 = struct.Struct(">I")
CLOSE_LINGER_S = 1.0  # how long a drained connection waits for the client to close it
_OK_TRAILERS_FRAME_FLAGS = Flag.END_HEADERS | Flag.END_STREAM


class _Stream:
    __slots__ = ("chunks", "closed", "headers_sent", "id", "method", "opened", "pending", "remote_closed",
                 "send_window", "size", "task", "timer", "unacked")  # fmt: skip

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.opened = time.monotonic()  # its HEADERS arrived
        self.method: UnaryMethod | None = None
        self.chunks: list[bytes] = []
        self.size = 0  # request bytes received
        self.unacked = 0  # request bytes not yet given back to the client's stream window
        self.send_window = send_window
        self.remote_closed = False  # the client sent END_STREAM
        self.closed = False
        self.headers_sent = False
        self.pending: memoryview | None = None  # response DATA waiting for flow control
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class GrpcConnection(asyncio.Protocol):
    def __init__(self, methods: Mapping[bytes, UnaryMethod], settings: ServerSettings) -> None:
        self._methods = methods
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder(max_header_list_size=settings.max_header_list_bytes)
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}  # answers waiting for a window, in order
        self._last_stream_id = 0
        self._continuation: tuple[int, int, list[bytes]] | None = None
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._draining = False  # GOAWAY sent or received: no new streams, close when idle
        self._eof_sent = False
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        s = self._settings
        preface = settings_frame({
            Setting.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            Setting.INITIAL_WINDOW_SIZE: s.stream_window,
            Setting.MAX_FRAME_SIZE: s.max_frame_bytes,
            Setting.MAX_HEADER_LIST_SIZE: s.max_header_list_bytes,
        })  # fmt: skip
        if s.connection_window > DEFAULT_WINDOW:  # an increment of 0 is a connection error (RFC 9113 6.9)
            preface += window_update(0, s.connection_window - DEFAULT_WINDOW)
        if self._draining:  # the server began to stop before this connection was set up
            preface += goaway(0, ErrorCode.NO_ERROR)
        transport.write(preface)
        self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for stream in list(self._streams.values()):
            self._drop(stream)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._eof_sent:  # read and dropped, so that the close is not a reset
            return
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

    # -- shutdown ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Refuse new streams (GOAWAY), finish the open ones, then close."""
        if self._draining:
            return
        self._draining = True
        if self._transport is not None:  # else connection_made sends it
            self._transport.write(goaway(self._last_stream_id, ErrorCode.NO_ERROR))
            self._close_if_idle()

    def abort(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close now: GOAWAY with ``code``, then the socket (open calls are cancelled)."""
        if self._transport is None:
            return
        if code != ErrorCode.NO_ERROR:
            log.info("gRPC connection error %s: %s", code.name, reason)
        self._write(goaway(self._last_stream_id, code, reason.encode()[:256]))
        self._transport.close()

    def _close_if_idle(self) -> None:
        """Once draining and idle: half-close, and close when the client does (or in a second).

        Why not close at once: a socket closed with unread bytes (a PING or WINDOW_UPDATE in
        flight) is reset, and a reset may drop the end of the last answer on its way out.
        """
        transport = self._transport
        if not self._draining or self._streams or transport is None or self._eof_sent:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._eof_sent = True
        try:
            transport.write_eof()
        except OSError:  # the client is gone already
            transport.close()
            return
        self._loop.call_later(CLOSE_LINGER_S, transport.close)

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
        while n - pos >= HEADER_SIZE and self._transport is not None:
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
            elif kind == _HEADERS:
                self._on_headers(flags, stream_id, payload)
            else:
                self._on_control(kind, flags, stream_id, payload)
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
            if not flags & Flag.ACK:
                self._write(frame(FrameType.PING, Flag.ACK, 0, bytes(payload)))
        elif kind == FrameType.RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "bad RST_STREAM")
            self._idle_check(stream_id, "RST_STREAM")
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._drop(stream)
        elif kind == FrameType.GOAWAY:
            self._draining = True
            self._close_if_idle()
        elif kind == FrameType.PUSH_PROMISE:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif kind == FrameType.PRIORITY and stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        # PRIORITY and frame types this server does not know are ignored, as RFC 9113 asks.

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= LARGEST_MAX_FRAME:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            # The header table size bounds the encoder's dynamic table, which this server's
            # literal-only header blocks never use; the other settings concern the client.
        self._write(frame(FrameType.SETTINGS, Flag.ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._flush_blocked()
            return
        self._idle_check(stream_id, "WINDOW_UPDATE")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # closed already: an update in flight
        stream.send_window += increment
        if increment == 0 or stream.send_window > MAX_WINDOW:
            self._reset(stream, ErrorCode.PROTOCOL_ERROR if increment == 0 else ErrorCode.FLOW_CONTROL_ERROR)
        elif stream.pending is not None:
            self._flush(stream)

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

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        first_flags, parts = self._continuation[1], self._continuation[2]
        parts.append(bytes(payload))
        if sum(map(len, parts)) > 2 * self._settings.max_header_list_bytes:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, b"".join(parts))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        try:  # always decoded: the HPACK table is the connection's, whatever becomes of the stream
            headers = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise ConnectionError_(ErrorCode.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers, which a unary request has no use for
            if stream.remote_closed or not flags & _END_STREAM:
                self._reset(
                    stream, ErrorCode.STREAM_CLOSED if stream.remote_closed else ErrorCode.PROTOCOL_ERROR
                )
            else:
                self._end_of_request(stream)
            return
        if stream_id % 2 == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"HEADERS on server stream {stream_id}")
        if stream_id <= self._last_stream_id:
            return  # a stream this server answered or reset: its frames may still be in flight
        self._last_stream_id = stream_id
        if self._draining or len(self._streams) >= self._settings.max_concurrent_streams:
            self._write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        stream = _Stream(stream_id, self._peer_initial_window)
        self._streams[stream_id] = stream
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
        elif (handler := self._methods.get(path or b"")) is None:
            self._send_status(
                stream,
                grpc.StatusCode.UNIMPLEMENTED,
                f"unknown method {(path or b'').decode(errors='replace')}",
            )
        elif encoding not in (None, b"identity"):
            self._send_status(
                stream, grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding.decode(errors='replace')} is not supported",
                (("grpc-accept-encoding", "identity"),),
            )  # fmt: skip
        else:
            stream.method = handler
            if timeout is not None:
                seconds = parse_timeout(timeout)
                if seconds is None:
                    self._send_status(stream, grpc.StatusCode.INTERNAL, f"malformed grpc-timeout {timeout!r}")
                    return
                stream.timer = self._loop.call_later(seconds, self._expire, stream)
            if stream.remote_closed:
                self._end_of_request(stream)

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        counted = len(payload)  # padding included, as flow control counts it
        self._recv_unacked += counted
        if self._recv_unacked > self._settings.connection_window:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "DATA past the connection window")
        if self._recv_unacked >= self._settings.connection_window // 2:
            self._write(window_update(0, self._recv_unacked))
            self._recv_unacked = 0
        payload = _unpad(flags, payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._idle_check(stream_id, "DATA")
            return  # a stream already answered or refused: its data may still be in flight
        if stream.remote_closed:
            self._reset(stream, ErrorCode.STREAM_CLOSED)
            return
        stream.unacked += counted
        if stream.unacked > self._settings.stream_window:
            self._reset(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        stream.size += len(payload)
        limit = self._settings.max_message_bytes
        if stream.size > limit + _MESSAGE_PREFIX.size:
            self._send_status(
                stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({stream.size - _MESSAGE_PREFIX.size} vs. {limit})",
            )  # fmt: skip
            return
        stream.chunks.append(bytes(payload))
        if flags & _END_STREAM:
            stream.remote_closed = True
            self._end_of_request(stream)
            return
        if stream.unacked >= self._settings.stream_window // 2:
            self._write(window_update(stream_id, stream.unacked))
            stream.unacked = 0

    def _idle_check(self, stream_id: int, what: str) -> None:
        if stream_id > self._last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    # -- calls -------------------------------------------------------------------------------

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.method is None or stream.closed:
            return
        body = stream.chunks[0] if len(stream.chunks) == 1 else b"".join(stream.chunks)
        stream.chunks = []
        if len(body) < _MESSAGE_PREFIX.size:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "expected one request message, got none")
            return
        compressed, length = _MESSAGE_PREFIX.unpack_from(body)
        if len(body) != _MESSAGE_PREFIX.size + length:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "expected exactly one request message")
            return
        if compressed:
            self._send_status(stream, grpc.StatusCode.INTERNAL, "compressed message without grpc-encoding")
            return
        stream.task = self._loop.create_task(self._call(stream, stream.method, body[_MESSAGE_PREFIX.size :]))

    async def _call(self, stream: _Stream, method: UnaryMethod, message: bytes) -> None:
        call_opened.set(stream.opened)  # this task's own context: seen by this call only
        try:
            reply = await method(message)
        except RpcError as exc:
            self._send_status(stream, exc.code, exc.details, exc.trailers)
        except asyncio.CancelledError:
            # The server's own cancels (reset, deadline, lost connection) close the stream first;
            # any other (a future the method awaited was cancelled) still owes the client a status.
            self._send_status(stream, grpc.StatusCode.CANCELLED, "cancelled on the server")
            raise
        except Exception:
            log.exception("gRPC method failed on stream %d", stream.id)
            self._send_status(stream, grpc.StatusCode.INTERNAL, "internal error")
        else:
            self._send_reply(stream, reply)

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.task is not None:
            stream.task.cancel()
        self._send_status(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    # -- frames out --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._eof_sent:
            self._transport.write(data)

    def _send_reply(self, stream: _Stream, reply: bytes) -> None:
        if stream.closed:
            return
        sid = stream.id
        size = _MESSAGE_PREFIX.size + len(reply)
        prefix = _MESSAGE_PREFIX.pack(0, len(reply))
        if size <= stream.send_window and size <= self._send_window and size <= self._peer_max_frame:
            stream.send_window -= size
            self._send_window -= size
            self._write(b"".join((
                frame(_HEADERS, _END_HEADERS, sid, RESPONSE_HEADERS),
                frame_header(_DATA, 0, sid, size), prefix, reply,
                frame(_HEADERS, _OK_TRAILERS_FRAME_FLAGS, sid, OK_TRAILERS),
            )))  # fmt: skip
            self._finish(stream)
            return
        self._write(frame(_HEADERS, _END_HEADERS, sid, RESPONSE_HEADERS))
        stream.headers_sent = True
        stream.pending = memoryview(prefix + reply)
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        """Send what flow control allows of a stream's answer; its trailers once all is sent."""
        pending = stream.pending
        assert pending is not None
        while pending and stream.send_window > 0 and self._send_window > 0:
            n = min(len(pending), stream.send_window, self._send_window, self._peer_max_frame)
            self._write(frame(_DATA, 0, stream.id, pending[:n]))
            pending = pending[n:]
            stream.send_window -= n
            self._send_window -= n
        if pending:
            stream.pending = pending
            self._blocked[stream.id] = stream
            return
        stream.pending = None
        self._blocked.pop(stream.id, None)
        self._write(frame(_HEADERS, _OK_TRAILERS_FRAME_FLAGS, stream.id, OK_TRAILERS))
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

    def _send_block(self, stream: _Stream, block: bytes) -> None:
        sid = stream.id
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

    def _reset(self, stream: _Stream, code: ErrorCode) -> None:
        self._write(rst_stream(stream.id, code))
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """The stream ends without an answer (reset, or the connection is gone)."""
        task = stream.task
        self._finish(stream)
        if task is not None and not task.done():
            task.cancel()

    def _finish(self, stream: _Stream) -> None:
        stream.closed = True
        stream.pending = None
        stream.chunks = []
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self._streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if self._draining and not self._streams:
            self._close_if_idle()


def _unpad(flags: int, payload: memoryview) -> memoryview:
    if not flags & _PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - payload[0]]
