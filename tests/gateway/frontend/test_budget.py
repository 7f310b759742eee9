"""The gateway-wide budget on request bodies being received: the largest unfinished ones go."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.frontend.budget import BodyBudget, BodyRead


async def test_the_largest_read_is_evicted_for_a_new_one_and_its_task_cancelled() -> None:
    budget = BodyBudget(100)
    gate = asyncio.Event()

    async def holding(n: int) -> None:
        read = budget.open()
        assert budget.take(read, n)
        await gate.wait()

    big, small = asyncio.ensure_future(holding(60)), asyncio.ensure_future(holding(30))
    await asyncio.sleep(0)
    fresh = budget.open()
    assert budget.take(fresh, 20)  # 110 > 100: the 60-byte read goes, the 30-byte one stays
    await asyncio.sleep(0)
    assert big.cancelled() and not small.done()
    assert budget.used == 50 and budget.evictions == 1
    budget.close(fresh)
    gate.set()
    await small


async def test_a_smaller_read_is_never_evicted_for_a_larger_one() -> None:
    budget = BodyBudget(100)
    a, b = budget.open(), budget.open()
    assert budget.take(a, 40)
    assert budget.take(b, 50)
    assert not budget.take(b, 20)  # b (50) is the largest: a (40) is not evicted for it
    assert budget.used == 90 and not a.evicted


async def test_closing_gives_the_bytes_back_once() -> None:
    budget = BodyBudget(100)
    a = budget.open()
    assert budget.take(a, 80)
    assert not budget.take(a, 30)  # nothing smaller to evict: over the budget
    budget.close(a)
    budget.close(a)
    assert budget.used == 0


async def _taken(budget: BodyBudget, n: int) -> tuple[float, BodyRead]:
    """Take n bytes for a new read and pace them: the seconds it waited, and the read."""
    read = budget.open()
    assert budget.take(read, n)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await budget.pace(read, n)
    return loop.time() - started, read


async def test_one_large_body_alone_is_not_paced() -> None:
    budget = BodyBudget(10_000_000, pace_bytes_per_s=100_000, pace_after=1000)
    waited, _ = await _taken(budget, 50_000)  # 0.5 s of the rate, but nothing else is large
    assert waited < 0.05 and budget.paced_s == 0.0


async def test_small_bodies_are_not_paced_beside_large_ones() -> None:
    budget = BodyBudget(10_000_000, pace_bytes_per_s=100_000, pace_after=1000)
    for _ in range(2):
        big = budget.open()
        assert budget.take(big, 5000)
    waited, _ = await _taken(budget, 1000)  # within its first pace_after bytes
    assert waited < 0.05 and budget.paced_s == 0.0


async def test_large_bodies_together_share_the_rate() -> None:
    paced: list[float] = []
    budget = BodyBudget(10_000_000, pace_bytes_per_s=100_000, pace_after=1000, on_paced=paced.append)
    other = budget.open()
    assert budget.take(other, 5000)  # another large body in flight
    waited, read = await _taken(budget, 10_000)  # 0.1 s of the rate, less the 5 ms burst
    assert 0.09 <= waited < 0.5
    assert budget.paced_s == pytest.approx(0.095, abs=0.01) and paced == [budget.paced_s]
    # The next chunk queues behind what was scheduled before it.
    assert budget.take(read, 10_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await budget.pace(read, 10_000)
    assert 0.09 <= loop.time() - started < 0.5
    # Once the other body is done, the one left is alone again: no pacing.
    budget.close(other)
    assert budget.take(read, 10_000)
    before = budget.paced_s
    await budget.pace(read, 10_000)
    assert budget.paced_s == before


async def test_no_rate_means_no_pacing_and_bad_settings_are_refused() -> None:
    budget = BodyBudget(10_000_000, pace_after=0)
    for _ in range(2):
        waited, _ = await _taken(budget, 1_000_000)
        assert waited < 0.05
    with pytest.raises(ValueError):
        BodyBudget(100, pace_bytes_per_s=-1)


async def test_eviction_is_reported() -> None:
    evicted: list[None] = []
    budget = BodyBudget(100, on_evict=lambda: evicted.append(None))

    async def holding() -> None:
        assert budget.take(budget.open(), 80)
        await asyncio.Event().wait()

    big = asyncio.ensure_future(holding())
    await asyncio.sleep(0)
    assert budget.take(budget.open(), 30)
    await asyncio.sleep(0)
    assert big.cancelled() and len(evicted) == 1


async def test_a_paced_read_cancelled_in_its_wait_gives_its_turn_back() -> None:
    budget = BodyBudget(10_000_000, pace_bytes_per_s=100_000, pace_after=1000)
    other = budget.open()
    assert budget.take(other, 5000)
    read = budget.open()
    assert budget.take(read, 50_000)
    waiting = asyncio.ensure_future(budget.pace(read, 50_000))  # 0.5 s of the rate
    await asyncio.sleep(0.01)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    budget.close(read)
    waited, _ = await _taken(budget, 10_000)  # 0.1 s of its own, not 0.6 s behind the cancelled one
    assert waited < 0.3
