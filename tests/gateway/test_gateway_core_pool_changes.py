"""GatewayCore while instances come and go: every accepted query answered exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest

from gateway.errors import InferenceError
from gateway.profiles import load_profiles
from gateway.profiles.prior import prior_profile
from tests.helpers.fake_instances import FakeInstance, failing, make_core, ok_after, request


class ClosingFake(FakeInstance):
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_removing_a_busy_instance_waits_for_its_answer_then_closes_its_client() -> None:
    core, (slow, _) = make_core([ok_after(50), ok_after(1)], policy="round-robin")
    first = asyncio.ensure_future(core.infer(request(0)))
    await asyncio.sleep(0.01)
    closing = ClosingFake("spare", ok_after(1))
    core.clients[slow.name] = closing  # the client the core will close
    inst = core.remove_instance(slow.name)
    assert inst.draining and not inst.removed  # still holds q0
    assert (await first).reply.body == b"q0"
    await asyncio.sleep(0)
    assert inst.removed and slow.name not in core.clients and closing.closed
    results = await asyncio.gather(*(core.infer(request(i)) for i in range(1, 5)))
    assert {r.instance for r in results} == {"r5n.large-1"}


async def test_a_drained_instance_takes_no_new_query() -> None:
    core, fakes = make_core([ok_after(1), ok_after(1)], policy="round-robin")
    core.drain_instance("r5n.large-0")
    results = await asyncio.gather(*(core.infer(request(i)) for i in range(6)))
    assert {r.instance for r in results} == {"r5n.large-1"}
    assert not fakes[0].calls


async def test_an_added_instance_of_a_new_type_serves_at_once() -> None:
    core, _ = make_core([ok_after(1)], policy="round-robin")
    new = FakeInstance("gpu-0", ok_after(1))
    with pytest.raises(ValueError, match="profile"):
        core.add_instance("gpu-0", "g4dn.xlarge", new)
    gpu = load_profiles().get("rm2", "g4dn.xlarge")
    core.add_instance("gpu-0", "g4dn.xlarge", new, profile=gpu)
    await asyncio.gather(*(core.infer(request(i)) for i in range(6)))
    assert sum(new.calls.values()) == 3
    est = core.dispatcher.estimator
    assert est.type_names == ["r5n.large", "g4dn.xlarge"] and est.coefficient.max() == 1.0
    assert est.estimate_one(1, 900) == pytest.approx(gpu.mean(900))  # its own profile, not yet corrected


async def test_an_instance_of_an_unprofiled_type_starts_from_a_prior_and_learns() -> None:
    core, _ = make_core([ok_after(1)], policy="round-robin")
    prior = prior_profile("rm2", "mystery", 350.0, core.max_batch)
    core.add_instance("m-0", "mystery", FakeInstance("m-0", ok_after(1)), profile=prior, prior=True)
    await asyncio.gather(*(core.infer(request(i)) for i in range(8)))
    est = core.dispatcher.estimator
    k = est.type_index("mystery")
    assert est.from_prior[k] and est.observations(k) == 4
    assert est.estimate_one(k, 500) < prior.mean(500) / 10  # learned from 1 ms answers at batch 10


async def test_draining_the_last_instance_fails_what_waits_with_no_healthy_instance() -> None:
    core, _ = make_core([ok_after(30)])
    tasks = [asyncio.ensure_future(core.infer(request(i))) for i in range(3)]
    await asyncio.sleep(0.005)
    core.drain_instance("r5n.large-0")
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert not isinstance(outcomes[0], BaseException)  # the one it held is answered
    assert all(isinstance(o, InferenceError) and o.status == 503 for o in outcomes[1:])
    assert not core.ready


async def test_unknown_instance_names_raise_key_error() -> None:
    core, _ = make_core([ok_after(1)])
    with pytest.raises(KeyError):
        core.drain_instance("nope")
    with pytest.raises(KeyError):
        core.remove_instance("nope")
    core.set_instance_health("nope", False)  # a late probe result: ignored


async def test_thousands_of_queries_while_instances_come_and_go_each_answered_once() -> None:
    """Queries flow while instances are added, drained and removed every few ms: each accepted
    query gets exactly one answer, from one call to one instance, and the pool ends consistent."""
    rng = np.random.default_rng(11)
    core, fakes = make_core(
        [ok_after(2), ok_after(3)], policy="kairos", max_pending=10_000, qos_ms=60_000, late_queries="serve"
    )
    all_fakes = list(fakes)
    serial = 0

    async def churn() -> None:
        nonlocal serial
        for _ in range(60):
            await asyncio.sleep(0.005)
            live = [i.name for i in core.dispatcher.instances if not i.draining]
            r = rng.random()
            if r < 0.5 or len(live) < 2:
                name = f"added-{serial}"
                serial += 1
                fake = FakeInstance(name, ok_after(float(rng.uniform(1, 4))))
                all_fakes.append(fake)
                core.add_instance(name, "r5n.large", fake)
            elif r < 0.75:
                core.drain_instance(live[int(rng.integers(len(live)))])
            else:
                core.remove_instance(live[int(rng.integers(len(live)))])

    n = 3000
    queries = [asyncio.ensure_future(core.infer(request(i))) for i in range(n)]
    await churn()
    outcomes = await asyncio.gather(*queries, return_exceptions=True)
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors[:3]  # late queries are served, and an instance is always in rotation
    assert sorted(r.reply.body for r in answered) == sorted(
        f"q{i}".encode() for i, o in enumerate(outcomes) if not isinstance(o, BaseException)
    )
    calls: Counter[str] = Counter()
    for f in all_fakes:
        calls.update(f.calls)
    assert all(v == 1 for v in calls.values())  # no query sent twice
    assert len({r.instance for r in answered}) > 3
    assert core.outstanding == 0 and not core.dispatcher.pending
    assert all(not i.in_flight for i in core.dispatcher.instances)
    assert set(core.clients) == {i.name for i in core.dispatcher.instances}


async def test_a_removed_instance_that_fails_its_last_query_leaves_no_series_behind() -> None:
    """Its failure is counted before its series end, not after (which made them again, for good)."""
    core, _ = make_core([failing("r5n.large-0", after_ms=30), ok_after(1)], policy="round-robin")
    first = asyncio.ensure_future(core.infer(request(0)))
    await asyncio.sleep(0.01)
    core.remove_instance("r5n.large-0")  # draining: it still holds q0, which then fails
    assert (await first).instance == "r5n.large-1"  # retried on the other one
    await asyncio.sleep(0)
    text = core.metrics.gateway.render().decode()
    assert 'instance="r5n.large-0"' not in text
    assert 'kairos_instance_failures_total{instance="r5n.large-1"' not in text  # nothing failed there
