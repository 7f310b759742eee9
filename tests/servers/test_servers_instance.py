"""The emulated instance core (servers.instance): draws, FIFO, batch checks, no I/O."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.errors import BadRequest, ModelNotFound
from gateway.profiles import load_profiles
from servers.instance import MAX_WAKE_LEAD_S, WAKE_STEP_S, FastSampler, Instance

PROFILES = load_profiles()


def _instance(
    index: int = 0, seed: int = 0, scale: float = 1.0, type_: str = "r5n.large", timers: str = "timerfd"
) -> Instance:
    return Instance(index, f"{type_}-{index}", "rm2", type_, PROFILES.get("rm2", type_), seed, scale, timers)


async def test_draws_are_seeded_per_instance_and_within_profile() -> None:
    a, b, c = (
        _instance(0, seed=3, scale=0.05),
        _instance(0, seed=3, scale=0.05),
        _instance(1, seed=3, scale=0.05),
    )
    ra = [await a.serve(20) for _ in range(5)]
    rb = [await b.serve(20) for _ in range(5)]
    rc = [await c.serve(20) for _ in range(5)]
    assert [r.service_ms for r in ra] == [r.service_ms for r in rb]
    assert [r.service_ms for r in ra] != [r.service_ms for r in rc]
    prof = PROFILES.get("rm2", "r5n.large")
    lo, hi = prof.quantile(20, 0.0) * 0.05, prof.quantile(20, 1.0) * 0.05
    assert all(lo - 1e-9 <= r.service_ms <= hi + 1e-9 for r in ra)
    assert a.served == 5


@pytest.mark.parametrize("timers", ["timerfd", "loop"])
async def test_fifo_one_at_a_time(timers: str) -> None:
    inst = _instance(scale=0.5, timers=timers)
    records = await asyncio.gather(*(inst.serve(100) for _ in range(3)))
    first, second, third = records
    assert first.queue_ms < 2.0
    # Each waits for everything ahead of it (timer slack of a few ms on a shared machine).
    assert second.queue_ms == pytest.approx(first.observed_ms, abs=10.0)
    assert third.queue_ms == pytest.approx(first.observed_ms + second.observed_ms, abs=15.0)
    early_ms = 0.0 if timers == "timerfd" else 1.0  # whole-ms loop timers can fire early
    for r in records:
        assert r.observed_ms >= r.service_ms - early_ms
        assert r.observed_ms - r.service_ms < 50.0  # gross errors only: the machine is shared


async def test_a_queued_query_starts_when_the_one_ahead_is_due_to_end() -> None:
    """The device's timeline is its own: a queued query starts at the drawn end of the one ahead
    of it, however late the process wakes to answer that one."""
    inst = _instance(scale=0.2)
    records = await asyncio.gather(*(inst.serve(100) for _ in range(3)))
    first, second, third = records
    assert second.queue_ms == pytest.approx(first.service_ms, abs=1.0)
    assert third.queue_ms == pytest.approx(first.service_ms + second.service_ms, abs=1.0)
    assert not inst.busy


async def test_the_instance_learns_to_set_its_timer_before_the_drawn_end() -> None:
    inst = _instance(scale=0.02)
    assert inst.wake_lead_s == 0.0
    await inst.serve(10)  # a timerfd never fires early: this answer was late
    assert inst.wake_lead_s == pytest.approx(WAKE_STEP_S)
    for _ in range(30):
        await inst.serve(10)
    assert 0.0 <= inst.wake_lead_s <= MAX_WAKE_LEAD_S


def test_an_unknown_timer_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="timers must be one of timerfd, loop"):
        _instance(timers="spin")


async def test_cancelled_caller_keeps_instance_busy() -> None:
    inst = _instance(scale=0.5)
    first = asyncio.ensure_future(inst.serve(100))
    await asyncio.sleep(0.002)
    second = asyncio.ensure_future(inst.serve(1))
    first.cancel()
    record = await second
    # The first query's service ran to its end although nobody waits for it any more.
    assert record.queue_ms > 15.0


async def test_zero_latency_and_checks() -> None:
    inst = _instance(scale=0.0)
    record = await inst.serve(1000)
    assert record.service_ms == 0.0 and record.observed_ms < 5.0
    for bad in (0, 1001):
        with pytest.raises(BadRequest, match="outside the profile"):
            await inst.serve(bad)
    with pytest.raises(ModelNotFound):
        inst.check_model("ncf")
    with pytest.raises(ModelNotFound, match="version"):
        inst.check_model("rm2", "7")
    inst.check_model("rm2", "1")
    assert not inst.busy


@pytest.mark.parametrize(
    ("model", "type_"), [("rm2", "r5n.large"), ("ncf", "g4dn.xlarge"), ("dien", "t3.xlarge")]
)
def test_fast_sampler_draws_what_the_profile_draws(model: str, type_: str) -> None:
    prof = PROFILES.get(model, type_)
    fast = FastSampler(prof)
    batches = [1, 5, 10, 11, 99, 100, 101, 555, 999, 1000]
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        for b in batches:
            assert fast.sample(b, rng_a) == pytest.approx(prof.sample(b, rng_b), rel=1e-9)
