"""A minimal HTTP/1.1 keep-alive client for the hot path (asyncio Protocols, no per-request objects
beyond a future).

aiohttp's client spends ~0.1-0.4 ms of CPU per request (request objects, header multidicts,
tracing hooks), which caps one process near 1,200 q/s on a small box. The gateway's HTTP
backend and the load generator only need a request with a prebuilt body and the status, a few
headers and the body back, so this writes the request bytes straight to the transport and
parses the response itself: Content-Length or chunked bodies, ``Connection: close``, one
request at a time per connection (no pipelining).
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import cast

from gateway.io_timeout import IoTimeout, io_timeout_at

_CRLF2 = b"\r\n\r\n"
_UNSAFE_PATH = frozenset(" \r\n\t\x00")


def _safe_head(path: str, headers: str) -> bool:
    """Defence in depth under the front ends' checks: a path or header value carrying CR, LF or
    NUL would let one request smuggle a second onto a shared keep-alive connection."""
    if _UNSAFE_PATH.intersection(path):
        return False
    return "\x00" not in headers and headers.count("\r\n") == headers.count("\n") == headers.count("\r")


class HttpError(Exception):
    """The connection failed or the response was not valid HTTP/1.1."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body


class _Conn(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.keep_alive = True
        self.served = 0  # responses completed on this connection
        self.answered = False  # bytes of the current request's response have come
        self._head: tuple[int, dict[str, str]] | None = None
        self._length: int | None = None  # body length; -1 chunked; None until EOF

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            # Bytes nobody asked for (a second response to one request): whatever follows on
            # this connection could be answered to the wrong request.
            self.keep_alive = False
            self.close()
            return
        self.answered = True
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(HttpError(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        if self._head is not None and self._length is None and self.waiter is not None:
            self._finish(bytes(self.buf))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection lost: {exc or 'closed by peer'}"))

    # -- client side -------------------------------------------------------------------------
    def send(self, parts: list[bytes | memoryview]) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self.answered = False
        self.waiter = self.loop.create_future()
        self.transport.writelines(parts)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The per-request timeout fired: the answer, if it ever comes, belongs to no one, so
        the connection cannot be reused."""
        self._fail(TimeoutError())
        self.close()

    def _fail(self, exc: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def _finish(self, body: bytes) -> None:
        assert self._head is not None
        status, headers = self._head
        self._head, self._length = None, None
        w, self.waiter = self.waiter, None
        self.served += 1
        if headers.get("connection", "").lower() == "close" or self.buf:
            # Bytes past the end of the response: an extra response, not this request's.
            self.keep_alive = False
        if w is not None and not w.done():
            w.set_result(Response(status, headers, body))

    def _parse(self) -> None:
        buf = self.buf
        if self._head is None:
            end = buf.find(_CRLF2)
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            version, code = lines[0].split(" ", 2)[:2]
            if not version.startswith("HTTP/1."):
                raise ValueError(f"status line {lines[0]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._head = (int(code), headers)
            if version == "HTTP/1.0":
                self.keep_alive = False
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._length = -1
            elif "content-length" in headers:
                self._length = int(headers["content-length"])
            elif self._head[0] in (204, 304) or 100 <= self._head[0] < 200:
                self._length = 0
            else:
                self._length = None  # until the server closes
                self.keep_alive = False
        if self._length is None:
            return
        if self._length >= 0:
            if len(buf) >= self._length:
                body = bytes(buf[: self._length])
                del buf[: self._length]
                self._finish(body)
            return
        self._parse_chunked()

    def _parse_chunked(self) -> None:
        buf = self.buf
        pos = 0
        chunks: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            start = eol + 2
            if size == 0:
                end = buf.find(_CRLF2, eol)  # optional trailers, then CRLF
                if end < 0:
                    return
                del buf[: end + 4]
                self._finish(b"".join(chunks))
                return
            if len(buf) < start + size + 2:
                return
            chunks.append(bytes(buf[start : start + size]))
            pos = start + size + 2


class Http1Pool:
    """Keep-alive connections to one host:port, at most ``limit`` open; requests beyond wait for
    a free connection (FIFO)."""

    def __init__(self, host: str, port: int, limit: int = 1000) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.host_header = f"{host}:{port}"
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Conn] = set()
        self._closed = False

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
            self._open -= 1
        return None

    async def _acquire(self) -> _Conn:
        while True:
            if self._closed:  # a connection opened now would never be closed
                raise ConnectionResetError(f"{self.host}:{self.port}: the client is closed")
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self._open < self.limit:
                self._open += 1
                try:
                    loop = asyncio.get_running_loop()
                    _, proto = await loop.create_connection(partial(_Conn, loop), self.host, self.port)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                if self._closed:  # closed while it connected (close() reset the count)
                    proto.close()
                    raise ConnectionResetError(f"{self.host}:{self.port}: the client is closed")
                self._all.add(proto)
                return proto
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if not fut.cancelled() and fut.done():
                    self._wake()  # pass the wake-up on
                raise

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and conn.keep_alive and not conn.closed and conn.waiter is None:
            self._idle.append(conn)
        else:
            conn.close()
            self._all.discard(conn)
            self._open -= 1
        self._wake()

    async def request(
        self,
        method: str,
        path: str,
        headers: str = "",
        body: bytes | memoryview = b"",
        timeout_s: float | None = None,
    ) -> Response:
        """``headers``: extra header lines, each ending in CRLF. Raises HttpError / OSError, and
        TimeoutError when ``timeout_s`` passes before the whole response is in (the connection
        is then closed)."""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n"
        ).encode("latin-1")
        if not _safe_head(path, headers):
            raise ValueError("refusing a request head with control characters or a space in its path")
        parts: list[bytes | memoryview] = [head, body] if body else [head]
        # The common case: a kept-alive connection is free (and no one queues for one). It knows
        # its loop: on Python 3.11 asyncio.get_running_loop() makes a getpid() syscall, ~3% of
        # the gateway's CPU per gRPC query.
        conn = None if self._waiters else self._take_idle()
        loop = asyncio.get_running_loop() if conn is None else conn.loop
        deadline = None if timeout_s is None else loop.time() + timeout_s
        for retry in (False, True):
            if conn is None:
                if deadline is None:
                    conn = await self._acquire()
                else:
                    async with io_timeout_at(loop, deadline):  # a connect that completed in a stall counts
                        conn = await self._acquire()
            ok = False
            reused = conn.served > 0
            # A timer, not an asyncio.timeout block (this runs once per query), that gives an answer
            # already in the socket its chance after a stall of the process (io_timeout).
            timer = None if deadline is None else IoTimeout(loop, deadline, conn.expire)
            try:
                resp = await conn.send(parts)
                ok = True
                return resp
            except HttpError:
                # A kept-alive connection the server had closed as this request went out (uvicorn
                # closes one after every 500, without saying so): nothing of an answer came, so
                # the request goes once more, on a fresh connection.
                if retry or not reused or conn.answered:
                    raise
            finally:
                if timer is not None:
                    timer.cancel()
                self._release(conn, ok)
            conn = None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._open = 0
        await asyncio.sleep(0)  # let transports close
