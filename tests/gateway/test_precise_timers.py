import asyncio
import gc
import os
import sys

import pytest
import uvloop

from gateway import precise_timers
from gateway.precise_timers import clock, loop_timerfd, sleep_until, timer_sleep_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux-only")


def run(main):
    return uvloop.run(main())


@linux_only
def test_a_sleep_never_ends_before_its_deadline():
    # uvloop's own timers can fire ~0.5 ms early; the timerfd fires at or after the deadline.
    async def main():
        assert loop_timerfd() is not None
        late = []
        for k in range(40):
            deadline = clock() + 0.0003 + k * 0.00007
            await sleep_until(deadline)
            late.append(clock() - deadline)
        return late

    assert min(run(main)) >= 0.0


@linux_only
def test_concurrent_sleepers_wake_in_deadline_order():
    async def main():
        woke: list[int] = []
        base = clock() + 0.005

        async def sleeper(k: int, at: float) -> None:
            await sleep_until(at)
            assert clock() >= at
            woke.append(k)

        # Started out of order, and later deadlines first: each new head re-arms the timer.
        offsets = [9, 3, 7, 1, 5, 0, 8, 2, 6, 4]
        await asyncio.gather(*(sleeper(k, base + k * 0.002) for k in offsets))
        return woke

    assert run(main) == list(range(10))


@linux_only
def test_a_cancelled_sleeper_does_not_stop_the_others():
    async def main():
        start = clock()
        first = asyncio.ensure_future(sleep_until(start + 0.004))
        second = asyncio.ensure_future(sleep_until(start + 0.008))
        await asyncio.sleep(0)
        first.cancel()
        await second
        assert clock() >= start + 0.008
        with pytest.raises(asyncio.CancelledError):
            await first

    run(main)


def test_a_deadline_already_past_returns_at_once():
    async def main():
        await sleep_until(clock() - 1.0)
        await timer_sleep_until(clock() - 1.0)

    run(main)


def test_without_a_timerfd_the_loop_timers_are_used(monkeypatch):
    monkeypatch.setattr(precise_timers, "_libc", None)

    async def main():
        assert loop_timerfd() is None
        deadline = clock() + 0.01
        await sleep_until(deadline)
        # The loop's timers count whole milliseconds and can fire early: the fallback ends
        # within 1 ms of the deadline, on either side.
        assert abs(clock() - deadline) < 0.001 + 0.05  # late: a shared machine's scheduling

    run(main)


@linux_only
def test_each_loop_gets_its_own_timer_and_a_finished_loop_closes_it():
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        loop_fds = open_fds()
        await sleep_until(clock() + 0.001)
        await sleep_until(clock() + 0.001)
        assert loop_timerfd() is loop_timerfd()  # one per loop, reused
        return open_fds() - loop_fds

    gc.collect()
    before = open_fds()
    assert [run(main) for _ in range(3)] == [1, 1, 1]
    gc.collect()
    assert open_fds() == before  # each closed with its loop


@linux_only
def test_call_at_runs_callbacks_in_time_order_and_skips_cancelled_ones():
    async def main():
        timers = loop_timerfd()
        assert timers is not None
        ran: list[tuple[str, float]] = []
        done = asyncio.get_running_loop().create_future()
        base = clock() + 0.003

        def note(name: str, when: float) -> None:
            ran.append((name, clock() - when))

        timers.call_at(base + 0.004, note, "c", base + 0.004)
        timers.call_at(base, note, "a", base)
        dropped = timers.call_at(base + 0.002, note, "b", base + 0.002)
        timers.call_at(base + 0.006, done.set_result, None)
        dropped.cancel()
        await done
        return ran

    ran = run(main)
    assert [name for name, _ in ran] == ["a", "c"]
    assert all(late >= 0.0 for _, late in ran)


@linux_only
def test_a_failing_callback_is_reported_and_the_others_still_run():
    async def main():
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["exception"]))
        done = loop.create_future()
        when = clock() + 0.002

        def boom() -> None:
            raise RuntimeError("boom")

        timers = loop_timerfd()
        assert timers is not None
        timers.call_at(when, boom)
        timers.call_at(when, done.set_result, "after")
        return await done, reported

    result, reported = run(main)
    assert result == "after"
    assert [str(e) for e in reported] == ["boom"]
