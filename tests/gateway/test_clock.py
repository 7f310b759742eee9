"""The core's clock: the manual one fires its timers in order as time is advanced."""

from __future__ import annotations

import asyncio

from gateway.clock import LoopClock, ManualClock


def test_a_manual_clock_fires_due_timers_in_order_at_their_time() -> None:
    clock = ManualClock(start_ms=0.0)
    seen: list[tuple[str, float]] = []
    clock.call_at(30.0, lambda: seen.append(("b", clock.now_ms())))
    clock.call_at(10.0, lambda: seen.append(("a", clock.now_ms())))
    cancelled = clock.call_at(20.0, lambda: seen.append(("x", clock.now_ms())))
    cancelled.cancel()
    assert clock.advance(15.0) == 1 and seen == [("a", 10.0)] and clock.now_ms() == 15.0
    assert clock.advance(100.0) == 1 and seen[-1] == ("b", 30.0) and clock.now_ms() == 115.0
    assert clock.pending_timers == 0


def test_a_timer_set_by_a_timer_fires_in_the_same_advance_when_due() -> None:
    clock = ManualClock(start_ms=0.0)
    seen: list[float] = []
    clock.call_at(5.0, lambda: clock.call_at(8.0, lambda: seen.append(clock.now_ms())))
    clock.advance(10.0)
    assert seen == [8.0]


async def test_the_loop_clock_runs_on_the_loop() -> None:
    clock = LoopClock()
    done = asyncio.get_running_loop().create_future()
    clock.call_at(clock.now_ms() + 5.0, done.set_result, clock.now_ms())
    started = await done
    assert clock.now_ms() >= started + 4.0
