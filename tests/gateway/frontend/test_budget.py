"""The gateway-wide budget on request bodies being received: the largest unfinished ones go."""

from __future__ import annotations

import asyncio

from gateway.frontend.budget import BodyBudget


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
