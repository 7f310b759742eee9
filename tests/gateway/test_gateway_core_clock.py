"""GatewayCore on a manual clock: deadlines, shedding and orphaned slots reached by moving time,
not by sleeping (the instances answer only when the test releases them)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import ManualClock
from gateway.errors import DeadlineExceeded
from tests.helpers.fake_instances import held, make_core, ok_after, request


async def settle() -> None:
    """Let the loop run the tasks and callbacks that are ready (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_queued_query_is_shed_when_the_clock_reaches_its_latest_start() -> None:
    clock, release = ManualClock(), asyncio.Event()
    core, _ = make_core([held(release)], clock=clock)
    first = asyncio.ensure_future(core.infer(request(0)))
    await settle()
    waiting = asyncio.ensure_future(core.infer(request(1, qos_ms=60)))
    await settle()
    assert not waiting.done() and len(core.dispatcher.pending) == 1
    latest = core.dispatcher.next_shed_ms()
    assert latest is not None
    clock.advance(latest - clock.now_ms() - 1.0)  # not yet
    await settle()
    assert not waiting.done()
    clock.advance(2.0)  # the shed timer fires: answered at once, without waiting for the instance
    await settle()
    with pytest.raises(DeadlineExceeded, match="shed"):
        await waiting
    assert core.metrics.gateway.refusals.labels("rm2", "default", "shed")._value.get() == 1
    release.set()
    assert (await first).reply.body == b"q0"


async def test_an_orphaned_slot_opens_when_the_estimate_says_the_instance_is_done() -> None:
    clock, release = ManualClock(), asyncio.Event()
    core, (fake,) = make_core([held(release)], clock=clock, late_queries="serve")
    gone = asyncio.ensure_future(core.infer(request(0)))
    await settle()
    assert core.dispatcher.instances[0].in_flight
    gone.cancel()  # the client went away mid-call: the instance is still busy with it
    await settle()
    nxt = asyncio.ensure_future(core.infer(request(1)))
    await settle()
    assert not fake.calls["q1"]  # the slot is still held
    (q0,) = core.dispatcher.instances[0].in_flight.values()
    clock.advance(q0.started_ms + q0.est_ms - clock.now_ms() + 0.1)
    await settle()
    assert fake.calls["q1"] == 1  # the estimate ran out: the slot went to the next query
    release.set()
    assert (await nxt).reply.body == b"q1"


async def test_a_late_answer_counts_as_a_violation_on_the_core_clock() -> None:
    clock, release = ManualClock(), asyncio.Event()
    core, _ = make_core([held(release), ok_after(0)], clock=clock, late_queries="serve")
    late = asyncio.ensure_future(core.infer(request(0, qos_ms=50)))
    await settle()
    clock.advance(60.0)  # the answer comes after its deadline by the core's clock
    release.set()
    await late
    violations = core.metrics.gateway.violations.labels("rm2", "default")
    assert violations._value.get() == 1
    await core.infer(request(1, qos_ms=50))  # no time passes: in time
    assert violations._value.get() == 1
