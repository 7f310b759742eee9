"""The simulator's engine: determinism, conservation, and analytic checks on tiny pools."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.sim import parse_pool, service_times, simulate
from gateway.sim.engine import default_profiles
from gateway.workload import (
    ConstantArrivals,
    FixedMix,
    PoissonArrivals,
    ProductionMix,
    QueryTrace,
    make_workload,
)

POOL = parse_pool("g4dn.xlarge=1,r5n.large=3")
POLICIES = ["kairos", "fcfs", "round-robin", "least-outstanding", "power-of-two"]


def _run(policy: str = "kairos", seed: int = 0, rate: float = 30.0, n: int = 800, depth: int = 1, **kw):
    trace = make_workload(PoissonArrivals(rate), ProductionMix(), n, seed)
    return simulate(trace, model="rm2", qos_ms=350, pool=POOL, policy=policy, seed=seed, depth=depth, **kw)


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_result_and_other_seed_differs(policy: str) -> None:
    a, b, c = _run(policy, seed=3), _run(policy, seed=3), _run(policy, seed=4)
    np.testing.assert_array_equal(a.end_ms, b.end_ms)
    np.testing.assert_array_equal(a.instance, b.instance)
    assert a.summary() | {"wall_s": 0} == b.summary() | {"wall_s": 0}
    assert not np.array_equal(a.latency_ms, c.latency_ms)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("depth", [1, 2])
def test_every_query_completes_exactly_once(policy: str, depth: int) -> None:
    r = _run(policy, rate=45.0, depth=depth)
    assert np.isfinite(r.end_ms).all() and (r.instance >= 0).all()
    assert (r.start_ms >= r.arrival_ms).all() and (r.end_ms > r.start_ms).all()
    served = np.bincount(r.instance, minlength=len(r.instance_names))
    assert served.sum() == r.n_queries
    assert r.share().sum() == pytest.approx(1.0)
    # An instance serves one query at a time, whatever the depth: its service intervals never
    # overlap, and a query waits there only behind the ones sent before it.
    for j in range(len(r.instance_names)):
        m = r.instance == j
        order = np.argsort(r.start_ms[m], kind="stable")
        s, e = r.start_ms[m][order], r.end_ms[m][order]
        assert (s[1:] >= e[:-1] - 1e-9).all()
    # Busy time per instance is the sum of its service times.
    np.testing.assert_allclose(r.busy_ms, np.bincount(r.instance, r.end_ms - r.start_ms, len(r.instance_names)))
    assert ((r.busy_fraction() >= 0) & (r.busy_fraction() <= 1.0 + 1e-9)).all()


def test_one_instance_below_capacity_latency_is_the_service_time() -> None:
    pool = parse_pool("g4dn.xlarge=1")
    mean = default_profiles().get("rm2", "g4dn.xlarge").mean(100)
    trace = make_workload(ConstantArrivals(0.5 * 1000 / mean), FixedMix(100), 300, 0)
    for policy in POLICIES:
        r = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy=policy, seed=5)
        svc = service_times(default_profiles(), "rm2", ["g4dn.xlarge"], trace.batch, 5)[0]
        assert svc.max() < 2 * mean  # every query is done before the next arrives
        np.testing.assert_allclose(r.latency_ms, svc)
        np.testing.assert_array_equal(r.start_ms, trace.arrival_ms)
        assert r.attainment == 1.0


def test_above_capacity_the_qos_fraction_collapses() -> None:
    pool = parse_pool("g4dn.xlarge=1")
    mean = default_profiles().get("rm2", "g4dn.xlarge").mean(100)
    trace = make_workload(ConstantArrivals(1.5 * 1000 / mean), FixedMix(100), 2000, 0)
    r = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs")
    assert r.attainment < 0.2
    assert r.achieved_qps == pytest.approx(1000 / mean, rel=0.05)  # the instance saturates
    assert r.busy_fraction()[0] > 0.95


def test_stop_below_stops_an_overloaded_run_early() -> None:
    full = _run("fcfs", rate=400.0, n=2000)
    early = _run("fcfs", rate=400.0, n=2000, stop_below=0.99)
    assert early.stopped_early and not full.stopped_early
    assert not early.meets(0.99) and not full.meets(0.99)
    assert early.completed_fraction < 1.0


def test_kairos_sends_large_queries_to_the_gpu() -> None:
    r = _run("kairos", rate=20.0, n=1500)
    mean_batch = r.type_mean_batch()
    assert mean_batch["g4dn.xlarge"] > mean_batch["r5n.large"]
    assert r.attainment > _run("fcfs", rate=20.0, n=1500).attainment


def test_transport_delays_the_start_and_the_answer_by_half_each() -> None:
    pool = parse_pool("g4dn.xlarge=1")
    mean = default_profiles().get("rm2", "g4dn.xlarge").mean(100)
    trace = make_workload(ConstantArrivals(0.3 * 1000 / mean), FixedMix(100), 200, 0)
    ideal = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=5)
    slow = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=5, transport_ms=4.0)
    np.testing.assert_allclose(slow.start_ms, ideal.start_ms + 2.0)
    np.testing.assert_allclose(slow.latency_ms, ideal.latency_ms + 4.0)


def test_pipelining_hides_the_transport_at_saturation() -> None:
    """Under a backlog, without pipelining an instance idles one round trip between queries; with
    it (once the estimator has learned the overhead), the next query is on its way before the
    instance is done. The gateway dates the next query's start at the answer's arrival (live, the
    answer's way is the short part of the round trip); the simulator's answer takes half the
    round trip, so about that much stays idle here at most."""
    pool = parse_pool("r5n.large=1")
    mean = default_profiles().get("rm2", "r5n.large").mean(50)
    trace = make_workload(ConstantArrivals(2.0 * 1000 / mean), FixedMix(50), 300, 0)
    gaps = {}
    for pipeline in (False, True):
        r = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=1, transport_ms=6.0,
                     pipeline=pipeline)
        order = np.argsort(r.start_ms)
        s, e = r.start_ms[order], r.end_ms[order] - 3.0  # service end: the answer travels 3 ms
        gaps[pipeline] = np.median(s[100:] - e[99:-1])
        assert (s[1:] >= e[:-1] - 1e-9).all()  # still one query at a time
    assert gaps[False] == pytest.approx(6.0)
    assert gaps[True] < 3.0


def test_the_gateways_overload_control_on_the_virtual_clock() -> None:
    """At 3x capacity: "shed" refuses or sheds what it cannot serve in time and serves the rest
    within QoS; "serve" serves all, late, with every wait bounded; both deterministic."""
    from gateway.dispatch import OverloadControl

    shed = _run(rate=100.0, n=3000, overload=OverloadControl.for_mode("shed", 350))
    again = _run(rate=100.0, n=3000, overload=OverloadControl.for_mode("shed", 350))
    np.testing.assert_array_equal(shed.end_ms, again.end_ms)
    np.testing.assert_array_equal(shed.refused, again.refused)
    assert shed.refused.sum() > 0.3 * shed.n_queries
    assert shed.accepted_attainment >= 0.99
    dropped = shed.refused | shed.shed
    assert np.isnan(shed.end_ms[dropped]).all() and np.isfinite(shed.end_ms[~dropped]).all()
    assert shed.summary()["refused"] == int(shed.refused.sum())

    served = _run(rate=100.0, n=3000, overload=OverloadControl.for_mode("serve", 350))
    assert np.isfinite(served.end_ms).all() and served.attainment < 0.5
    assert "refused" not in _run(n=200).summary()  # no overload control: the summary is unchanged


def test_a_bounded_queue_refuses_arrivals_that_find_it_full() -> None:
    """A burst onto one instance: the queue holds max_pending, the instance depth more; the rest are
    refused (never served), and everything accepted is served exactly once."""
    pool = parse_pool("g4dn.xlarge=1")
    trace = make_workload(ConstantArrivals(100_000.0), FixedMix(100), 40, 0)  # all within 0.4 ms
    r = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=0, depth=2, max_pending=5, warmup=0.0)
    accepted = ~r.refused
    assert accepted.sum() == 2 + 5  # the two the instance holds and the five queued: no query ends within the burst
    assert accepted[:7].all()  # first come, first in
    assert np.isnan(r.end_ms[r.refused]).all() and np.isfinite(r.end_ms[accepted]).all()
    unbounded = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=0, depth=2, warmup=0.0)
    assert np.isfinite(unbounded.end_ms).all()


def test_fluid_serves_a_query_it_holds_back_once_it_turns_urgent_with_no_other_event() -> None:
    """One batch-500 query that misses 100 ms everywhere: fluid keeps it off the last free
    instance of each type until it is 3 QoS late; nothing else happens, so only a timer serves it."""
    trace = QueryTrace(arrival_ms=np.array([0.0]), batch=np.array([500]))
    r = simulate(trace, model="rm2", qos_ms=100.0, pool=[("g4dn.xlarge", 1), ("r5n.large", 1)], policy="fluid",
                 warmup=0.0)  # fmt: skip
    assert r.start_ms[0] == pytest.approx(400.0, abs=0.01) and np.isfinite(r.end_ms[0])
