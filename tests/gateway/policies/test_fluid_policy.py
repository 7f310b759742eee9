"""The ``fluid`` policy on hand-built snapshots: the learned split, the deadline-aware plan, the
trunk reservation, lost and late queries, and the correctness contract."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.snapshots import snap

from gateway.policies import POLICY_NAMES, Snapshot, make_policy
from gateway.policies.fluid import FluidPolicy, plan
from gateway.policies.fluid_split import MixLearner, _lp_prices, _two_type_prices, forced_need, type_prices
from gateway.sim.engine import simulate
from gateway.sim.pool import parse_pool
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

GPU, CPU = 0, 1


def run(s: Snapshot, prices: tuple[float, float] = (2.0, 1.0), forced: tuple[float, float] = (0.0, 0.0)) -> list[tuple[int, int]]:
    return plan(s, np.flatnonzero(s.healthy), np.array(prices), np.array(forced), float(s.qos_ms.min()))


# One GPU (instance 0) and two CPUs; the GPU's capacity costs twice as much per ms.
POOL = [GPU, CPU, CPU]
SMALL = [5.0, 4.0]  # (GPU, CPU) ms: cheaper on a CPU
LARGE = [10.0, 30.0]  # cheaper on the GPU (2 x 10 < 30)


# -- the learned split ------------------------------------------------------------------------


def test_two_type_threshold_gives_large_batches_to_the_gpu() -> None:
    # Classes: small (equal speed), medium, large (the GPU 4x faster); one GPU, two CPUs.
    p = np.array([0.5, 0.3, 0.2])
    s = np.array([[4.0, 4.0], [5.0, 10.0], [8.0, 32.0]])
    y = _two_type_prices(p, s, np.ones_like(s, dtype=bool), np.array([1.0, 2.0]))
    cost = s * y
    assert cost[2, GPU] < cost[2, CPU] and cost[0, CPU] < cost[0, GPU]


def test_closed_form_prices_match_the_lp() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = rng.random(12)
        p /= p.sum()
        gpu = rng.uniform(1, 10, 12)
        s = np.stack([gpu, gpu * rng.uniform(0.5, 4, 12)], axis=1)
        n = rng.integers(1, 10, 2).astype(float)
        allowed = np.ones_like(s, dtype=bool)
        a, b = _two_type_prices(p, s, allowed, n), _lp_prices(p, s, allowed, n)
        assert a[0] / a[1] == pytest.approx(b[0] / b[1], rel=1e-6)


def test_lp_prices_handle_three_types_and_forbidden_pairs() -> None:
    p = np.array([0.6, 0.4])
    s = np.array([[2.0, 4.0, 3.0], [5.0, 200.0, 9.0]])
    y = type_prices(p, s, np.array([1, 4, 2]), qos_ms=100.0)
    assert y.shape == (3,) and np.isfinite(y).all() and (y >= 0).all()
    assert np.isinf(type_prices(p, s, np.array([1, 0, 2]), qos_ms=100.0)[1])  # no instances


def test_forced_need_is_the_largest_class_only_one_type_serves() -> None:
    est = np.array([[3.0, 4.0], [9.0, 60.0], [12.0, 80.0], [0.0, 0.0]])
    counts = np.array([5.0, 2.0, 1.0, 0.0])
    assert forced_need(counts, est, np.array([1, 3]), qos_ms=50.0).tolist() == [12.0, 0.0]


def test_mix_learner_decays_and_schedules_solves() -> None:
    mix = MixLearner(2)
    mix.observe(np.array([5, 15, 15]), np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 5.0]]))
    assert mix.counts.tolist() == [1.0, 2.0] and mix.est[1].tolist() == [3.0, 5.0]
    assert not mix.due()
    mix.observe(np.full(64, 5), np.ones((64, 2)))
    assert mix.due()
    mix.solved()
    assert mix.counts[0] == pytest.approx(65 * 0.75) and not mix.due()


# -- the plan -------------------------------------------------------------------------------


def test_small_goes_to_a_cpu_and_large_to_the_gpu() -> None:
    out = run(snap([100, 100], [SMALL, LARGE], POOL))
    assert sorted(out) == [(0, 1), (1, 0)]


def test_large_query_waits_for_the_busy_gpu_while_its_deadline_allows() -> None:
    assert run(snap([100], [LARGE], POOL, busy_left=[5, 0, 0], free=[0, 1, 1])) == []


def test_falls_back_to_a_cpu_when_waiting_would_miss() -> None:
    assert run(snap([100], [LARGE], POOL, busy_left=[95, 0, 0], free=[0, 1, 1])) == [(0, 1)]


def test_waits_for_a_cheaper_planned_instance_rather_than_a_dearer_free_one() -> None:
    # Both make 40 ms on the GPU (10 + 10 ms) or a CPU (30 ms): the second waits for the GPU.
    assert run(snap([40, 40], [LARGE, LARGE], [GPU, CPU])) == [(0, 0)]


def test_never_sent_where_it_would_miss_while_it_can_still_make_it() -> None:
    # 25 ms left: the free CPU (30 ms) would miss; the GPU, free in 10 ms, makes it: it waits.
    assert run(snap([25], [LARGE], [GPU, CPU], busy_left=[10, 0], free=[0, 1])) == []


def test_queries_only_one_type_serves_in_time_come_first() -> None:
    # Query 0 (earlier deadline) could also go to a CPU; query 1 only to the GPU: it gets it.
    out = run(snap([90, 20], [LARGE, [15.0, 60.0]], POOL, busy_left=[0, 5, 5], free=[1, 0, 0]))
    assert out == [(1, 0)]


def test_trunk_reservation_keeps_the_gpu_for_its_forced_queries() -> None:
    # A flexible 60 ms job would leave the GPU unable to take a 50 ms forced query in QoS 100.
    flexible = [60.0, 70.0]
    assert run(snap([100], [flexible], POOL), prices=(1.0, 1.0)) == [(0, 0)]
    assert run(snap([100], [flexible], POOL), prices=(1.0, 1.0), forced=(50.0, 0.0)) == [(0, 1)]


def test_lost_query_takes_only_spare_free_slots() -> None:
    lost = [200.0, 300.0]  # misses anywhere with 100 ms left
    assert run(snap([100], [lost], POOL)) == [(0, 1)]  # a CPU stays free
    assert run(snap([100], [lost], [GPU, GPU, CPU])) == [(0, 0)]  # a spare GPU, not the last CPU
    assert run(snap([100], [lost], [GPU, CPU], free=[1, 1])) == []  # each is the last of its type
    # An on-time query in the same window is served first.
    assert run(snap([100, 50], [lost, SMALL], [CPU], free=[1])) == [(1, 0)]


def test_a_very_late_query_is_never_starved() -> None:
    # Late by more than LATE_LIMIT x QoS: served first, even on the last free instance.
    out = run(snap([-400, 100], [SMALL, SMALL], [CPU], free=[1]))
    assert out == [(0, 0)]


# -- the contract ------------------------------------------------------------------------------


def test_respects_free_slots_health_and_positions() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        n, q = int(rng.integers(1, 8)), int(rng.integers(1, 20))
        types = rng.integers(0, 2, n).tolist()
        free = rng.integers(0, 3, n).tolist()
        healthy = (rng.random(n) > 0.2).tolist()
        est = rng.uniform(1, 150, (q, 2)).tolist()
        s = snap(rng.uniform(-500, 100, q).tolist(), est, types, busy_left=rng.uniform(0, 50, n).tolist(),
                 free=free, healthy=healthy, batch=rng.integers(1, 1000, q).tolist())
        pol = FluidPolicy()
        for _ in range(2):  # a fresh and a learned state
            out = pol.decide(s)
            pos = [i for i, _ in out]
            assert len(pos) == len(set(pos)) and all(0 <= i < q for i in pos)
            per = np.bincount([j for _, j in out], minlength=n)
            assert (per <= s.free_slots).all()
            assert all(s.healthy[j] for _, j in out)


def test_no_healthy_instance_or_no_query_gives_nothing() -> None:
    pol = FluidPolicy()
    assert pol.decide(snap([100], [SMALL], POOL, healthy=[False] * 3)) == []
    empty = snap([100], [SMALL], POOL).replace(batch=np.zeros(0, dtype=np.int64), time_left_ms=np.zeros(0),
                    est_ms=np.zeros((0, 2)))
    assert pol.decide(empty) == []


def test_learns_the_split_from_what_it_dispatches() -> None:
    """Fed a mix of small and large queries, it prices the GPU up and routes by size."""
    pol = FluidPolicy()
    for k in range(400):
        big = k % 4 == 0
        pol.decide(snap([100], [LARGE if big else SMALL], POOL, batch=[800 if big else 50]))
    assert pol._prices[GPU] > pol._prices[CPU]
    out = pol.decide(snap([100, 100], [SMALL, LARGE], POOL, batch=[50, 800]))
    assert sorted(out) == [(0, 1), (1, 0)]


def test_registered_and_deterministic_in_the_simulator() -> None:
    assert "fluid" in POLICY_NAMES and make_policy("fluid").name == "fluid"
    trace = make_workload(parse_arrivals("poisson", 500.0), ProductionMix(), 1500, 0)
    pool = parse_pool("g4dn.xlarge=2,r5n.large=9")
    a = simulate(trace, model="dien", qos_ms=35.0, pool=pool, policy="fluid")
    b = simulate(trace, model="dien", qos_ms=35.0, pool=pool, policy="fluid")
    assert np.array_equal(a.instance, b.instance) and a.attainment > 0.99
