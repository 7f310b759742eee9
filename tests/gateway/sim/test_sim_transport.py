"""The simulated round trip: a constant, or log-normal draws with a given mean and p99."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.errors import ConfigError
from gateway.sim import parse_pool, simulate
from gateway.sim.transport import MAX_P99_OVER_MEAN, Z99, fittable_p99, lognormal_params, round_trips
from gateway.workload import ConstantArrivals, FixedMix, PoissonArrivals, ProductionMix, make_workload


def test_without_a_p99_every_round_trip_is_the_mean() -> None:
    assert round_trips(4, 1.5, None, seed=0) == [1.5] * 4
    assert round_trips(3, 2.0, 2.0, seed=7) == [2.0] * 3
    assert round_trips(2, 0.0, None, seed=0) == [0.0, 0.0]


@pytest.mark.parametrize(("mean", "p99"), [(1.16, 3.0), (0.5, 0.6), (2.0, 20.0)])
def test_the_log_normal_has_the_given_mean_and_p99(mean: float, p99: float) -> None:
    mu, sigma = lognormal_params(mean, p99)
    assert math.exp(mu + sigma * sigma / 2) == pytest.approx(mean, rel=1e-12)
    assert math.exp(mu + Z99 * sigma) == pytest.approx(p99, rel=1e-12)
    draws = np.array(round_trips(400_000, mean, p99, seed=1))
    assert draws.min() > 0
    assert draws.mean() == pytest.approx(mean, rel=0.02)
    assert np.percentile(draws, 99) == pytest.approx(p99, rel=0.03)


def test_draws_are_seeded() -> None:
    a, b, c = (round_trips(1000, 1.0, 3.0, seed=s) for s in (4, 4, 5))
    assert a == b and a != c


@pytest.mark.parametrize(
    ("mean", "p99"),
    [(1.0, 0.5), (0.0, 3.0), (-1.0, 3.0), (1.0, math.inf), (1.0, math.nan), (1.0, MAX_P99_OVER_MEAN * 1.01)],
)
def test_impossible_parameters_are_refused(mean: float, p99: float) -> None:
    with pytest.raises(ConfigError):
        round_trips(10, mean, p99, seed=0)


def test_a_measured_tail_too_heavy_for_a_log_normal_is_moved_into_range() -> None:
    # 17.3 ms over a 1.11 ms mean, as a live Faro replay measured: beyond any log-normal's p99
    mean = 1.11
    p99 = fittable_p99(mean, 17.3)
    assert p99 is not None and p99 < 17.3
    lognormal_params(mean, p99)  # now fits
    assert fittable_p99(mean, 3.0) == 3.0
    assert fittable_p99(mean, 0.9) == mean  # a p99 under the mean (few samples) becomes the mean
    assert fittable_p99(mean, None) is None
    assert fittable_p99(0.0, 5.0) == 5.0


def test_each_query_pays_its_own_drawn_round_trip() -> None:
    """One instance, far apart arrivals: nothing queues, so latency = service + its draw."""
    pool = parse_pool("g4dn.xlarge=1")
    trace = make_workload(ConstantArrivals(1.0), FixedMix(10), 300, 0)
    ideal = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=3)
    jitter = simulate(trace, model="rm2", qos_ms=350, pool=pool, policy="fcfs", seed=3, transport_ms=1.0,
                      transport_p99_ms=4.0)
    drawn = np.array(round_trips(300, 1.0, 4.0, seed=3))
    np.testing.assert_allclose(jitter.latency_ms, ideal.latency_ms + drawn)
    np.testing.assert_allclose(jitter.start_ms, ideal.start_ms + drawn / 2)


def test_the_tail_of_the_round_trip_costs_a_tight_qos_more_than_its_mean() -> None:
    """Near the pool's limit, a round trip with the same mean and a longer tail misses more (the
    estimates carry its 75th percentile, so the tail beyond it lands on the deadline)."""
    pool = parse_pool("g4dn.xlarge=2,r5n.large=9")
    trace = make_workload(PoissonArrivals(560.0), ProductionMix(), 6000, 0)
    runs = [
        simulate(trace, model="dien", qos_ms=35, pool=pool, policy="kairos", transport_ms=1.2, pipeline=True,
                 transport_p99_ms=p99)
        for p99 in (None, 4.0, 4.0)
    ]
    constant, jitter, again = (r.attainment for r in runs)
    assert jitter == again  # deterministic
    assert jitter < constant - 0.001
