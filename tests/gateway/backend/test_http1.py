"""The keep-alive HTTP/1.1 client of the gateway's HTTP backend (and of the load generator)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backend.http1 import Http1Pool, HttpError, _Conn


class _FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writelines(self, parts):
        self.written.extend(bytes(p) for p in parts)

    def close(self):
        pass


@pytest.mark.parametrize("split", [1, 7, 1000])
async def test_http1_parser_content_length_and_chunked(split):
    loop = asyncio.get_running_loop()
    conn = _Conn(loop)
    conn.connection_made(_FakeTransport())  # type: ignore[arg-type]

    def feed(data: bytes) -> None:
        for i in range(0, len(data), split):
            conn.data_received(data[i : i + split])

    fut = conn.send([b"GET / HTTP/1.1\r\n\r\n"])
    feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nInference-Header-Content-Length: 2\r\n\r\nhello")
    r = await fut
    assert (r.status, r.body, r.headers["inference-header-content-length"]) == (200, b"hello", "2")
    fut = conn.send([b"x"])
    feed(
        b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n"
    )
    r = await fut
    assert (r.status, r.body) == (503, b"wikipedia") and conn.keep_alive
    fut = conn.send([b"x"])
    feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert (await fut).body == b"" and not conn.keep_alive
    fut = conn.send([b"x"])
    conn.connection_lost(None)
    with pytest.raises(Exception, match="connection lost"):
        await fut


async def test_pool_keeps_alive_and_times_out_without_reusing_the_connection() -> None:
    """Answers the first request on a connection at once and never answers the second."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        n = 0
        while await reader.readuntil(b"\r\n\r\n"):
            n += 1
            if n == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port)
    try:
        assert (await pool.request("GET", "/", timeout_s=5.0)).body == b"ok"
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", timeout_s=0.05)  # same connection: never answered
        assert (await pool.request("GET", "/", timeout_s=5.0)).body == b"ok"  # a fresh one
        assert len(seen) == 2
    finally:
        await pool.close()
        server.close()


async def test_a_second_response_to_one_request_retires_the_connection() -> None:
    """An instance that answers twice (a smuggled request): the extra answer must never reach the
    next request on that connection."""

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
            writer.write(one + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
            await writer.drain()

    server = await asyncio.start_server(twice, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port)
    try:
        bodies = [(await pool.request("GET", "/", timeout_s=5)).body for _ in range(5)]
        assert bodies == [b"first"] * 5
    finally:
        await pool.close()
        server.close()


async def test_a_request_head_with_crlf_is_refused_before_it_is_sent() -> None:
    pool = Http1Pool("127.0.0.1", 9)  # nothing is sent: no server needed
    for path, headers in (("/v2/models/m/versions/1\r\nX: y/infer", ""), ("/a b", ""), ("/ok", "X: a\rb\r\n")):
        with pytest.raises(ValueError):
            await pool.request("POST", path, headers, b"{}", timeout_s=1)


async def test_a_request_on_a_connection_the_server_closed_goes_again_on_a_fresh_one() -> None:
    """A server that answers one request per connection and drops the next unanswered (as
    uvicorn does after a 500): the second request is sent again on a new connection, once."""
    connections = 0

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped
        writer.transport.abort()

    server = await asyncio.start_server(one_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port)
    try:
        statuses = [(await pool.request("POST", "/", body=b"{}", timeout_s=5)).status for _ in range(3)]
        assert statuses == [500, 500, 500] and connections == 3
    finally:
        await pool.close()
        server.close()


async def test_a_fresh_connection_that_fails_is_not_retried() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    pool = Http1Pool("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(HttpError):
            await pool.request("POST", "/", body=b"{}", timeout_s=5)
    finally:
        await pool.close()
        server.close()


async def test_a_connection_made_during_a_stall_of_the_process_is_not_a_timeout() -> None:
    """The loop blocks past the request's deadline while the connection is being set up; the
    server (a thread: it runs through the stall) accepts and answers in time. The verdict waits
    for the loop to read its sockets (gateway.io_timeout): the answer is taken, not a timeout."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = Http1Pool("127.0.0.1", port)
    try:
        asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # the stall, once the connect is under way
        assert (await pool.request("GET", "/", timeout_s=0.1)).body == b"ok"
    finally:
        await pool.close()
        listener.close()
        thread.join(5)


async def test_a_closed_pool_opens_no_connection() -> None:
    """A late call on a client the core has closed (a probe, a metadata read of an instance just
    removed) fails, instead of opening a connection that nothing would ever close."""
    accepted: list[int] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(1), "127.0.0.1", 0)
    pool = Http1Pool("127.0.0.1", server.sockets[0].getsockname()[1])
    await pool.close()
    try:
        with pytest.raises(ConnectionResetError, match="closed"):
            await pool.request("GET", "/v2/health/ready", timeout_s=1.0)
        await asyncio.sleep(0.05)
        assert accepted == []
    finally:
        server.close()
