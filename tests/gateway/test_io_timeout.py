"""Timeouts that give an answer already in the socket its chance after a stall of the loop
(``gateway.io_timeout``), on uvloop (the gateway's loop) and on asyncio's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from gateway.io_timeout import STALLED_DELAY_S, IoTimeout, io_timeout_at

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(factory: Callable[[], asyncio.AbstractEventLoop], main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


async def _connected_pair() -> tuple[asyncio.Transport, asyncio.Future[bytes], asyncio.Server]:
    """A loopback connection: the client's transport, and a future the server side sets with
    the first bytes it reads."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            if not got.done():
                got.set_result(data)

    server = await loop.create_server(Reader, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    await asyncio.sleep(0.05)  # accepted
    return transport, got, server  # type: ignore[return-value]


@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_that_came_during_a_stall_beats_its_timeout(loop: str) -> None:
    """The answer arrives before the deadline while the loop is blocked past it; a task (as the
    picker's stream) takes it. The timeout must see it taken."""

    async def main() -> list[bool]:
        transport, got, server = await _connected_pair()
        taken: list[bytes] = []

        async def taker() -> None:
            taken.append(await got)

        task = asyncio.ensure_future(taker())
        await asyncio.sleep(0)
        verdicts: list[bool] = []
        lp = asyncio.get_running_loop()
        IoTimeout(lp, lp.time() + 0.05, lambda: verdicts.append(bool(taken)))
        transport.write(b"answer")  # in the server's socket at once (loopback)
        time.sleep(0.3)  # the stall: past the deadline, nothing read
        for _ in range(200):  # until the verdict (STALLED_DELAY_S after the late deadline)
            if verdicts:
                break
            await asyncio.sleep(0.01)
        await task
        transport.close()
        server.close()
        return verdicts

    assert run(LOOPS[loop], main) == [True]


@pytest.mark.parametrize("loop", LOOPS)
def test_no_answer_times_out_after_the_deadline_not_before(loop: str) -> None:
    async def main() -> tuple[float, float]:
        lp = asyncio.get_running_loop()
        fired: asyncio.Future[float] = lp.create_future()
        start = lp.time()
        IoTimeout(lp, start + 0.1, lambda: fired.set_result(lp.time()))
        return start, await asyncio.wait_for(fired, 5)

    start, at = run(LOOPS[loop], main)
    assert 0.1 <= at - start < 1.0


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("stalled", [False, True])  # cancelled before the deadline, or past it before the verdict
def test_cancel_stops_it(loop: str, stalled: bool) -> None:
    async def main() -> list[int]:
        lp = asyncio.get_running_loop()
        calls: list[int] = []
        timer = IoTimeout(lp, lp.time() + 0.05, calls.append, 1)
        if stalled:
            time.sleep(0.1)
            await asyncio.sleep(0)  # one turn: on uvloop the deadline's stage has run by now
        timer.cancel()
        await asyncio.sleep(0.2)
        return calls

    assert run(LOOPS[loop], main) == []


def test_cancel_after_the_verdict_is_queued_stops_it() -> None:
    async def main() -> list[int]:
        lp = asyncio.get_running_loop()
        calls: list[int] = []
        timer = IoTimeout(lp, lp.time() + 60, calls.append, 1)
        timer._polled()  # the last stage: the callback queued with call_soon
        timer.cancel()
        await asyncio.sleep(0.05)
        return calls

    assert run(uvloop.new_event_loop, main) == []


def test_a_deadline_found_late_waits_longer_for_threads_that_read() -> None:
    """A deadline timer that fires late (the loop stalled) gives threads that read for it
    (grpc.aio's) ``STALLED_DELAY_S`` more, not ``POLL_DELAY_S``."""

    async def main() -> tuple[float, float]:
        lp = asyncio.get_running_loop()
        fired: dict[str, float] = {}
        first = lp.time() + 0.01
        IoTimeout(lp, first, lambda: fired.setdefault("on_time", lp.time() - first))
        await asyncio.sleep(0.2)
        second = lp.time() + 0.01
        IoTimeout(lp, second, lambda: fired.setdefault("stalled", lp.time() - second))
        time.sleep(0.2)  # past the deadline by ~0.19 s
        await asyncio.sleep(0.4)
        return fired["on_time"], fired["stalled"]

    on_time, stalled = run(uvloop.new_event_loop, main)
    assert stalled >= 0.19 + STALLED_DELAY_S - 0.003
    assert on_time < stalled - 0.2


# -- io_timeout_at: the same verdict for a block, as asyncio.timeout_at -----------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_whose_answer_came_during_a_stall_completes(loop: str) -> None:
    async def main() -> bytes:
        transport, got, server = await _connected_pair()
        lp = asyncio.get_running_loop()
        try:
            async with io_timeout_at(lp, lp.time() + 0.05):
                transport.write(b"answer")
                time.sleep(0.3)  # the stall, inside the block: past the deadline, nothing read
                data = await got
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
            await asyncio.sleep(0.2)  # no late cancellation either
            return data
        finally:
            transport.close()
            server.close()

    assert run(LOOPS[loop], main) == b"answer"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_with_no_answer_raises_timeout_error_after_the_deadline(loop: str) -> None:
    async def main() -> tuple[float, int]:
        lp = asyncio.get_running_loop()
        start = lp.time()
        with pytest.raises(TimeoutError):
            async with io_timeout_at(lp, start + 0.1):
                await asyncio.sleep(5)
        task = asyncio.current_task()
        assert task is not None
        return lp.time() - start, task.cancelling()

    waited, cancelling = run(LOOPS[loop], main)
    assert 0.1 <= waited < 1.0 and cancelling == 0


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> str:
        lp = asyncio.get_running_loop()

        async def inner() -> None:
            async with io_timeout_at(lp, lp.time() + 0.2):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(inner())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "finished"

    assert run(uvloop.new_event_loop, main) == "cancelled"
