"""Bidirectional streaming calls on the gateway's own gRPC server (what the endpoint picker
serves Envoy's ext_proc on): messages both ways as they come, over grpc.aio and a raw h2
client; the method's end, errors, resets and bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import h2.errors
import h2.events
import pytest
from test_server import ECHO, echo_works, h2_client, message, methods, within

from gateway.grpc_server import CallStream, GrpcServer, RpcError, StreamMethod
from gateway.grpc_server.server import ServerSettings

CHAT = "/test.Service/Chat"


class Chat:
    """Answers each message at once with its reverse; on "bye" returns, on "err" raises."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.ended = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, call: CallStream) -> None:
        try:
            async for msg in call:
                self.seen.append(msg)
                if msg == b"bye":
                    call.send(b"see you")
                    return
                if msg == b"err":
                    raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "no errors here")
                call.send(msg[::-1])
            call.send(b"you closed")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.ended.set()


@contextlib.asynccontextmanager
async def serving(chat: StreamMethod, settings: ServerSettings | None = None) -> AsyncIterator[int]:
    server = GrpcServer(methods(), settings, streams={CHAT: chat})
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop(grace=0)


async def test_messages_go_both_ways_as_they_come() -> None:
    chat = Chat()
    async with serving(chat) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(CHAT)()
        for word in (b"one", b"two", b""):
            await call.write(word)
            assert await within(call.read()) == word[::-1]  # before the next is written
        await call.done_writing()
        assert await within(call.read()) == b"you closed"
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert chat.seen == [b"one", b"two", b""]
        await echo_works(port)  # unary calls on the same server


async def test_the_method_ends_the_call_before_the_client_does() -> None:
    chat = Chat()
    async with serving(chat) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(CHAT)()
        await call.write(b"bye")
        assert await within(call.read()) == b"see you"
        assert await within(call.code()) == grpc.StatusCode.OK


async def test_an_rpc_error_is_the_calls_status_and_the_server_goes_on() -> None:
    chat = Chat()
    async with serving(chat) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(CHAT)()
        await call.write(b"hi")
        assert await within(call.read()) == b"ih"
        await call.write(b"err")
        assert await within(call.code()) == grpc.StatusCode.FAILED_PRECONDITION
        assert await call.details() == "no errors here"
        again = channel.stream_stream(CHAT)()
        await again.write(b"abc")
        assert await within(again.read()) == b"cba"
        again.cancel()


async def test_a_client_cancel_ends_the_input_of_a_method_waiting_for_a_message() -> None:
    chat = Chat()
    async with serving(chat) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(CHAT)()
        await call.write(b"hi")
        await within(call.read())
        call.cancel()
        await within(chat.ended.wait())
        assert not chat.cancelled.is_set()  # its loop ended: no exception through the call
        assert await call.code() == grpc.StatusCode.CANCELLED
        await echo_works(port)


class Busy:
    """Reads one message, then works (sleeps) until cancelled."""

    def __init__(self) -> None:
        self.working = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, call: CallStream) -> None:
        async for _ in call:
            self.working.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise


async def test_many_streams_at_once_each_get_their_own_answers() -> None:
    async with serving(Chat()) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

        async def one(i: int) -> list[bytes]:
            call = channel.stream_stream(CHAT)()
            got = []
            for k in range(3):
                await call.write(f"{i}-{k}".encode())
                got.append(await call.read())
            await call.done_writing()
            got.append(await call.read())
            return got

        replies = await within(asyncio.gather(*(one(i) for i in range(100))), 20)
    for i, got in enumerate(replies):
        assert got == [f"{i}-{k}".encode()[::-1] for k in range(3)] + [b"you closed"]


async def test_h2_messages_split_and_joined_across_frames() -> None:
    chat = Chat()
    async with serving(chat) as port, h2_client(port) as client:
        sid = client.request(CHAT, body=None, end=False)
        data = message(b"first") + message(b"second")
        for i in range(0, len(data), 3):  # three bytes a frame: messages cut anywhere
            client.conn.send_data(sid, data[i : i + 3])
            client.flush()
        client.conn.send_data(sid, message(b"x") + message(b"y"), end_stream=True)  # two in one frame
        client.flush()
        reply = await client.response(sid)
    assert chat.seen == [b"first", b"second", b"x", b"y"]
    assert reply.body == b"".join(message(m) for m in (b"tsrif", b"dnoces", b"x", b"y", b"you closed"))
    assert reply.status == 0


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (message(b"big" * 400), grpc.StatusCode.RESOURCE_EXHAUSTED, b"larger than max"),
        (message(b"z", compressed=1), grpc.StatusCode.INTERNAL, b"compressed"),
        (message(b"whole") + b"\0\0\0", grpc.StatusCode.INTERNAL, b"inside a message"),
    ],
)
async def test_h2_bad_messages_end_the_call_with_a_status(data: bytes, status: grpc.StatusCode, words: bytes) -> None:
    chat = Chat()
    async with serving(chat, ServerSettings(max_message_bytes=1000)) as port, h2_client(port) as client:
        sid = client.request(CHAT, data)
        reply = await client.response(sid)
        assert reply.status == status.value[0] and words in reply.metadata[b"grpc-message"]
        await within(chat.ended.wait())
        await echo_works(port)


async def test_h2_a_stream_outlives_the_request_timeout() -> None:
    chat = Chat()
    settings = ServerSettings(request_timeout_s=0.3)
    async with serving(chat, settings) as port, h2_client(port) as client:
        sid = client.request(CHAT, message(b"early"), end=False)
        await asyncio.sleep(0.8)  # past the unary requests' limit: a stream is the client's to end
        client.conn.send_data(sid, message(b"late"), end_stream=True)
        client.flush()
        reply = await client.response(sid)
    assert reply.status == 0 and chat.seen == [b"early", b"late"]


async def test_h2_a_reset_from_the_client_ends_a_waiting_methods_input() -> None:
    chat = Chat()
    async with serving(chat) as port, h2_client(port) as client:
        sid = client.request(CHAT, message(b"hello"), end=False)
        await client.wait_for(h2.events.DataReceived, lambda e: e.stream_id == sid)
        client.conn.reset_stream(sid)
        client.flush()
        await within(chat.ended.wait())
        assert chat.seen == [b"hello"] and not chat.cancelled.is_set()
        await echo_works(port)


async def test_h2_a_reset_cancels_a_method_that_is_not_waiting_for_a_message() -> None:
    busy = Busy()
    async with serving(busy) as port, h2_client(port) as client:
        sid = client.request(CHAT, message(b"work"), end=False)
        await within(busy.working.wait())
        client.conn.reset_stream(sid)
        client.flush()
        await within(busy.cancelled.wait())
        await echo_works(port)


async def test_h2_streams_answered_then_reset_do_not_spend_the_connections_budget() -> None:
    """Envoy's ext_proc client resets each stream once it has its answer: thousands of those on
    one connection are not a rapid-reset attack (each would have cost 4 units of 1,000)."""
    async with serving(Chat()) as port, h2_client(port) as client:
        for i in range(1500):
            sid = client.request(CHAT, message(b"q%d" % i), end=False)
            await client.wait_for(h2.events.DataReceived, lambda e, sid=sid: e.stream_id == sid)
            client.conn.reset_stream(sid)
            client.flush()
        sid = client.request(ECHO, message(b"still here"))
        reply = await client.response(sid)
        assert reply.status == 0 and reply.body == message(b"still here")
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)


async def test_h2_streams_reset_before_an_answer_still_spend_the_budget() -> None:
    """The rapid-reset guard stands: streams reset before the server answered anything."""
    async with serving(Busy(), ServerSettings(control_frame_budget=100, control_frame_refill_per_s=1)) as port, \
            h2_client(port) as client:
        for _ in range(60):
            sid = client.request(CHAT, None, end=False)
            client.conn.reset_stream(sid)
            client.flush()
        closed = await client.wait_for(h2.events.ConnectionTerminated)
        assert closed.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


async def test_unary_methods_are_not_streams() -> None:
    async with serving(Chat()) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await channel.unary_unary(ECHO)(b"x", timeout=5) == b"x"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Service/Nope")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED



async def test_h2_a_message_and_a_reset_in_one_read_cancel_the_method() -> None:
    """The reader was woken for the message but has not run: the reset must still cancel it (its
    stream is gone, with its deadline and its place among the connection's streams)."""
    busy = Busy()
    async with serving(busy) as port, h2_client(port) as client:
        sid = client.request(CHAT, None, end=False)
        await asyncio.sleep(0.2)  # the method waits for its first message
        client.conn.send_data(sid, message(b"work"))
        client.conn.reset_stream(sid)
        client.flush()  # DATA and RST_STREAM in one write
        await asyncio.sleep(0.5)
        # cancelled before or after it took the message: either way it does not go on working
        assert not busy.working.is_set() or busy.cancelled.is_set()
        await echo_works(port)


async def test_h2_streams_reset_with_a_failing_message_earn_no_credit() -> None:
    """Each stream costs net 2 units of a 20-unit budget: without credit for the reset calls the
    connection is cut after about ten (with 10 units of credit each it outlived all 40)."""
    settings = ServerSettings(control_frame_budget=20, control_frame_refill_per_s=0.001)
    async with serving(Chat(), settings) as port, h2_client(port) as client:

        def closed() -> list[h2.events.ConnectionTerminated]:
            return [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]

        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 40 and not closed() and not client.eof:
                sid = client.request(CHAT, None, end=False)
                await asyncio.sleep(0.02)  # the method waits for its first message
                client.conn.send_data(sid, message(b"err"))  # an RpcError, if it ever ran
                client.conn.reset_stream(sid)
                client.flush()
                sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.receive(), 0.05)
        assert sent < 40 and [e.error_code for e in closed()] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]


async def test_h2_a_method_that_does_not_read_stops_the_client_by_flow_control() -> None:
    """The messages a streaming method has not read hold the stream's window: the client is
    stopped at the window, not buffered without end (200 MiB were queued before); once the method
    reads, the window comes back and everything arrives."""
    window = 256 * 1024
    go = asyncio.Event()
    seen: list[int] = []

    async def late(call: CallStream) -> None:
        await go.wait()
        async for msg in call:
            seen.append(len(msg))
        call.send(b"done")

    chunk = message(b"m" * 16_000)
    async with serving(late, ServerSettings(stream_window=window, connection_window=16 * window)) as port, \
            h2_client(port) as client:
        sid = client.request(CHAT, body=None, end=False)
        sent = 0
        for _ in range(200):  # far past the window, had the server given it back
            if client.conn.local_flow_control_window(sid) < len(chunk):
                await asyncio.sleep(0.3)  # the server has read what was sent: a WINDOW_UPDATE, if any, is out
                with contextlib.suppress(TimeoutError):
                    while True:
                        await asyncio.wait_for(client.receive(), 0.1)
                if client.conn.local_flow_control_window(sid) < len(chunk):
                    break
            client.conn.send_data(sid, chunk)
            client.flush()
            sent += 1
        assert sent * len(chunk) <= window  # stopped at the stream's window
        go.set()
        body = b"".join([chunk] * 40)
        await client.send(sid, body)  # more, ended: it goes as the method reads
        reply = await client.response(sid)
    assert reply.status == 0 and reply.body == message(b"done")
    assert seen == [16_000] * (sent + 40)


async def test_h2_streaming_calls_cut_to_free_the_window_are_cancelled_not_refused() -> None:
    """Unfinished messages on many streams hold the whole connection window: the server cuts
    some. A streaming call's method has seen it (it runs from the HEADERS): REFUSED_STREAM, which
    tells the client it may safely retry, would be false; CANCEL."""
    chat = Chat()
    settings = ServerSettings(max_message_bytes=1000, connection_window=65_535)
    async with serving(chat, settings) as port, h2_client(port) as client:
        sids = []
        for i in range(80):
            sid = client.request(CHAT, body=None, end=False)
            client.conn.send_data(sid, message(b"hello %d" % i))
            sids.append(sid)
        client.flush()
        for sid in sids:  # each call seen and answered once
            await client.wait_for(h2.events.DataReceived, lambda e, sid=sid: e.stream_id == sid)
        partial = message(b"x" * 1000)[:990]  # 990 of its 1,005 bytes: never whole
        sent = dict.fromkeys(sids, 0)
        resets: list[int] = []
        for _ in range(100):  # fill every window the server gives, until it cuts streams
            for sid in sids:
                room = min(client.conn.local_flow_control_window(sid), len(partial) - sent[sid])
                if room > 0 and client.replies[sid].reset is None:
                    client.conn.send_data(sid, partial[sent[sid] : sent[sid] + room])
                    sent[sid] += room
            client.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.receive(), 0.2)
            resets = [r.reset for r in client.replies.values() if r.reset is not None]
            if resets:
                break
    assert resets and set(resets) == {h2.errors.ErrorCodes.CANCEL}
