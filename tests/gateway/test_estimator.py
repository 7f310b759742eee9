"""The latency estimator: profile means, online correction per type and batch bucket, and the
learned transport overhead."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.estimator import BUCKET_WIDTH, OVERHEAD_WINDOW, LatencyEstimator
from gateway.profiles import load_profiles

TYPES = ["g4dn.xlarge", "r5n.large"]


@pytest.fixture
def est() -> LatencyEstimator:
    return LatencyEstimator(load_profiles(), "rm2", TYPES)


def test_starts_from_the_profile_means(est: LatencyEstimator) -> None:
    profiles = load_profiles()
    batches = np.array([1, 10, 155, 1000])
    table = est.estimate(batches)
    assert table.shape == (4, 2)
    for j, t in enumerate(TYPES):
        assert table[:, j] == pytest.approx(profiles.get("rm2", t).means_for(batches))
    assert est.estimate_one(1, 155) == pytest.approx(table[2, 1])


def test_batches_outside_the_profile_are_clamped_to_it_before_and_after_learning(est: LatencyEstimator) -> None:
    odd = np.array([-3, 0, 1, est.max_batch, est.max_batch + 1, 10 * est.max_batch])
    clamped = np.array([1, 1, 1, est.max_batch, est.max_batch, est.max_batch])
    for _ in range(2):
        assert np.array_equal(est.estimate(odd), est.estimate(clamped))
        assert [est.estimate_one(1, int(b)) for b in odd] == [est.estimate_one(1, int(b)) for b in clamped]
        est.observe(1, 1, 3.0 * est.estimate_one(1, 1))  # learning moves batch 1's bucket
        est.observe(1, est.max_batch, 0.5 * est.estimate_one(1, est.max_batch))


def test_heterogeneity_coefficient_is_one_for_the_fastest_at_the_largest_batch(est: LatencyEstimator) -> None:
    at_max = est.estimate(np.array([1000]))[0]
    assert est.coefficient[int(np.argmin(at_max))] == 1.0
    assert est.coefficient == pytest.approx(at_max.min() / at_max)


def test_learns_a_slower_type_in_that_bucket_only(est: LatencyEstimator) -> None:
    before = est.estimate(np.array([250, 650]))
    for _ in range(200):
        est.observe(1, 250, 1.5 * before[0, 1])
    after = est.estimate(np.array([250, 650]))
    assert after[0, 1] == pytest.approx(1.5 * before[0, 1], rel=0.01)
    assert after[0, 0] == pytest.approx(before[0, 0])  # the other type is unchanged
    assert after[1, 1] == pytest.approx(before[1, 1])  # and so is another bucket
    assert est.correction(1, 250) == pytest.approx(1.5, rel=0.01)
    assert 250 // BUCKET_WIDTH != 650 // BUCKET_WIDTH


def test_tracks_drift_and_ignores_nonsense(est: LatencyEstimator) -> None:
    base = est.estimate_one(0, 500)
    for _ in range(300):
        est.observe(0, 500, 2.0 * base)
    for _ in range(300):
        est.observe(0, 500, 1.0 * base)
    assert est.estimate_one(0, 500) == pytest.approx(base, rel=0.02)
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        est.observe(0, 500, bad)
    assert est.estimate_one(0, 500) == pytest.approx(base, rel=0.02)


def test_estimates_carry_the_75th_percentile_of_recent_round_trips_and_pipelining_the_99th(
    est: LatencyEstimator,
) -> None:
    base = est.estimate_one(1, 100)
    assert est.overhead_ms == est.overhead_p99_ms == est.overhead_mean_ms == 0.0  # the ideal simulator has none
    rng = np.random.default_rng(0)
    samples = rng.exponential(1.0, OVERHEAD_WINDOW)
    for x in samples:
        est.observe_overhead(float(x))
    assert est.overhead_ms == pytest.approx(float(np.percentile(samples, 75)))
    assert est.overhead_p99_ms == pytest.approx(float(np.percentile(samples, 99)))
    assert est.overhead_ms < est.overhead_p99_ms
    assert est.overhead_mean_ms == pytest.approx(float(samples.mean()))
    assert est.estimate_one(1, 100) == pytest.approx(base + est.overhead_ms)
    assert est.estimate(np.array([100]))[0, 1] == pytest.approx(base + est.overhead_ms)
    est.observe_overhead(-5.0)  # clock noise never lowers it below zero
    est.observe_overhead(float("nan"))
    assert est.overhead_ms > 0


def test_a_single_type_pool_learns_without_drifting() -> None:
    """With one type the profile's transpose is already contiguous: the learned table must still
    be a copy, or every observation rescales the profile itself and the estimate decays to 0."""
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    profiled = est.estimate_one(0, 10)
    for _ in range(2000):
        est.observe(0, 10, profiled / 2)
    assert est.estimate_one(0, 10) == pytest.approx(profiled / 2, rel=0.01)


def test_a_type_without_a_profile_learns_every_batch_size_from_its_first_answers() -> None:
    from gateway.profiles import ProfileSet
    from gateway.profiles.prior import prior_profile

    prior = prior_profile("iris", "local-cpu", qos_ms=100.0, max_batch=1000)
    est = LatencyEstimator(ProfileSet({("iris", "local-cpu"): prior}), "iris", ["local-cpu"], prior_types=["local-cpu"])
    assert est.from_prior == [True] and est.observations(0) == 0
    assert est.estimate_one(0, 1) == pytest.approx(25.0)  # a quarter of the QoS at batch 1
    assert est.estimate_one(0, 1000) == pytest.approx(50.0)  # half of it at the largest batch
    est.observe(0, 10, 2.5)  # the real model is ten times faster
    assert est.estimate_one(0, 10) == pytest.approx(2.5, rel=0.01)
    # Buckets never observed took the nearest observed one's correction.
    assert est.estimate_one(0, 900) == pytest.approx(prior.mean(900) * 0.1, rel=0.01)
    est.observe(0, 950, 10.0)  # until they are observed themselves
    assert est.estimate_one(0, 950) == pytest.approx(10.0, rel=0.01)
    assert est.estimate_one(0, 10) == pytest.approx(2.5, rel=0.01)
    assert est.observations(0) == 2


def test_the_prior_of_a_model_that_does_not_batch_admits_batch_1_only() -> None:
    from gateway.profiles import ProfileSet
    from gateway.profiles.prior import prior_profile

    prior = prior_profile("iris", "local-cpu", qos_ms=100.0, max_batch=1)
    assert prior.max_batch == 1 and prior.mean(1) == pytest.approx(25.0)
    est = LatencyEstimator(ProfileSet({("iris", "local-cpu"): prior}), "iris", ["local-cpu"], prior_types=["local-cpu"])
    assert est.max_batch == 1  # the config's max_batch: 1 holds (the prior used to raise it to 2)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        prior_profile("iris", "local-cpu", qos_ms=100.0, max_batch=0)


def test_a_measured_profile_is_not_spread_from_one_bucket_to_the_others() -> None:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    before = est.estimate_one(0, 900)
    est.observe(0, 10, est.estimate_one(0, 10) * 3)
    assert est.estimate_one(0, 900) == before
