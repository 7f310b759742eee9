"""The capacity model against closed forms (Erlang C, the M/M/c sojourn tail) and the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocator.planner.capacity import (
    N_GRID,
    CapacityCurve,
    ServiceDist,
    erlang_c,
    max_load,
    max_loads,
    miss_probability,
)
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.sim.engine import simulate
from gateway.workload import FixedMix, make_workload
from gateway.workload.arrivals import PoissonArrivals


def _erlang_c_recursive(n: int, a: float) -> float:
    b = 1.0
    for k in range(1, n + 1):
        b = a * b / (k + a * b)
    return n * b / (n - a * (1 - b))


def _exponential(mean_s: float, points: int = 20000) -> ServiceDist:
    u = (np.arange(points) + 0.5) / points
    return ServiceDist(-mean_s * np.log1p(-u), np.full(points, 1.0 / points))


def _mmc_sojourn_tail(n: int, lam: float, mu: float, t: float) -> float:
    """P(W + S > t) in M/M/n: W has an atom at 0 and an exponential tail of rate n mu - lam."""
    c = _erlang_c_recursive(n, lam / mu)
    delta = n * mu - lam
    return math.exp(-mu * t) + c * mu * (math.exp(-mu * t) - math.exp(-delta * t)) / (delta - mu)


@pytest.mark.parametrize(("n", "a"), [(1, 0.5), (2, 1.5), (5, 4.0), (10, 7.5), (40, 36.0), (200, 190.0)])
def test_erlang_c_matches_the_recursion(n: int, a: float) -> None:
    assert erlang_c(np.array(float(n)), np.array(a)) == pytest.approx(_erlang_c_recursive(n, a), rel=1e-9)


def test_erlang_c_is_zero_at_no_load_and_one_at_saturation() -> None:
    assert erlang_c(np.array(4.0), np.array(0.0)) == 0.0
    assert erlang_c(np.array(4.0), np.array(3.99999)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("n", "rho", "t"), [(1, 0.5, 5.0), (3, 0.7, 4.0), (8, 0.85, 3.0), (20, 0.9, 2.5)])
def test_miss_probability_is_the_exact_mmc_tail_for_exponential_service(n: int, rho: float, t: float) -> None:
    dist = _exponential(1.0)
    assert dist.scv == pytest.approx(1.0, rel=2e-3)
    got = float(miss_probability(dist, np.array(float(n)), np.array(rho * n), t))
    assert got == pytest.approx(_mmc_sojourn_tail(n, rho * n, 1.0, t), rel=0.02)


def test_miss_probability_counts_services_over_the_target_and_an_unstable_queue() -> None:
    dist = ServiceDist(np.array([0.1, 0.3]), np.array([0.9, 0.1]))
    assert float(miss_probability(dist, np.array(4.0), np.array(0.0), 0.2)) == pytest.approx(0.1)
    assert float(miss_probability(dist, np.array(4.0), np.array(4.0), 0.2)) == 1.0


def test_max_load_sits_at_the_miss_budget_and_grows_faster_than_n() -> None:
    dist = _exponential(1.0, 4000)
    loads = max_load(dist, 8.0, 0.99)
    for n, a in zip(N_GRID[:30], loads[:30], strict=True):
        miss = float(miss_probability(dist, np.array(float(n)), np.array(a), 8.0))
        assert 0.01 - 5e-5 <= miss <= 0.01 + 1e-12  # at the budget, never over it
    per_replica = loads / N_GRID
    assert np.all(np.diff(per_replica) > -1e-9)  # pooling: each replica carries more in a larger group
    assert per_replica[-1] < 1.0


def test_max_load_is_zero_when_an_idle_replica_misses_too_often() -> None:
    dist = ServiceDist(np.array([0.1, 0.3]), np.array([0.95, 0.05]))
    assert not max_load(dist, 0.2, 0.99).any()
    assert max_load(dist, 0.2, 0.9).all()


def test_max_loads_matches_one_at_a_time() -> None:
    dists = [_exponential(1.0, 500), ServiceDist(np.array([0.05, 0.2]), np.array([0.7, 0.3]))]
    together = max_loads(dists, np.array([6.0, 0.5]), np.array([0.99, 0.95]))
    assert together[0] == pytest.approx(max_load(dists[0], 6.0, 0.99))
    assert together[1] == pytest.approx(max_load(dists[1], 0.5, 0.95))


def test_tangent_lines_stay_below_the_curve_and_touch_it() -> None:
    curve = CapacityCurve.build(_exponential(1.0, 2000), 6.0, 0.99)
    ns = np.arange(1, 300)
    exact = curve.at(ns)
    for n0 in (1, 2, 5, 17, 60, 250):
        slope, intercept = curve.line_at(n0)
        assert np.all(slope * ns + intercept <= exact + 1e-9)
        assert slope * n0 + intercept == pytest.approx(float(curve.at(n0)), rel=1e-6)


def _lognormal_profile(model: str, type_name: str, mean_ms: float, sigma: float) -> LatencyProfile:
    levels = np.array([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0])
    from scipy import stats

    dist = stats.lognorm(s=sigma, scale=mean_ms * math.exp(-sigma * sigma / 2))
    q = dist.ppf(np.clip(levels, 1e-4, 1 - 1e-4))
    return LatencyProfile(model, type_name, np.array([1.0]), np.array([mean_ms]), levels, q[None, :])


@pytest.mark.parametrize("n", [1, 3, 8])
def test_capacity_holds_in_the_simulator(n: int) -> None:
    """n replicas at the planned load meet the target when the gateway's dispatcher runs them."""
    prof = _lognormal_profile("lg", "cpu", 150.0, 0.25)
    profiles = ProfileSet({("lg", "cpu"): prof})
    levels = prof.levels
    values = np.interp((np.arange(400) + 0.5) / 400, levels, prof.quantiles[0]) / 1000.0
    curve = CapacityCurve.build(ServiceDist(values, np.full(400, 1 / 400)), 0.6, 0.99)
    rate = float(curve.at(n)) / 0.150
    trace = make_workload(PoissonArrivals(rate), FixedMix(1), 30000, seed=3)
    res = simulate(trace, model="lg", qos_ms=600.0, pool=(("cpu", n),), policy="kairos", seed=3, profiles=profiles)
    assert res.attainment >= 0.985
    # ... and the model is not far off: 40% more load breaks the target.
    heavier = make_workload(PoissonArrivals(rate * 1.4), FixedMix(1), 30000, seed=3)
    over = simulate(heavier, model="lg", qos_ms=600.0, pool=(("cpu", n),), policy="kairos", seed=3, profiles=profiles)
    assert over.attainment < 0.99
