"""The gateway-wide budget on request bodies being received: oldest slow reads evicted first."""

from __future__ import annotations

import asyncio

from gateway.frontend.budget import BodyBudget


async def test_the_oldest_read_is_evicted_for_a_new_one_and_its_task_cancelled() -> None:
    budget = BodyBudget(100, min_age_s=0.0)
    gate = asyncio.Event()

    async def slow() -> None:
        read = budget.open()
        assert budget.take(read, 60)
        await gate.wait()

    old = asyncio.ensure_future(slow())
    await asyncio.sleep(0)
    fresh = budget.open()
    assert budget.take(fresh, 70)  # evicts the old read
    await asyncio.sleep(0)
    assert old.cancelled() and budget.used == 70 and budget.evictions == 1
    budget.close(fresh)
    assert budget.used == 0


async def test_young_reads_are_not_evicted_and_a_chunk_that_cannot_fit_is_refused() -> None:
    budget = BodyBudget(100, min_age_s=60.0)
    a, b = budget.open(), budget.open()
    assert budget.take(a, 80)
    assert not budget.take(b, 30)  # a is too young to evict
    assert budget.used == 80 and not a.evicted
    budget.close(a)
    budget.close(a)  # closing twice gives nothing back twice
    assert budget.used == 0
