"""Workload models: seeded, with the distribution moments they promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.errors import ConfigError
from gateway.workload import (
    ConstantArrivals,
    FixedMix,
    IntegerPoissonArrivals,
    PiecewiseRateArrivals,
    PoissonArrivals,
    ProductionMix,
    TraceMix,
    UniformMix,
    load_trace_csv,
    make_workload,
    parse_batch_mix,
)
from gateway.workload.arrivals import parse_arrivals

N = 200_000


def _gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))


def test_poisson_gaps_are_exponential() -> None:
    gaps = _gaps(PoissonArrivals(200.0).times_ms(N, np.random.default_rng(1)))
    assert gaps.mean() == pytest.approx(5.0, rel=0.01)
    assert gaps.std() == pytest.approx(5.0, rel=0.02)  # exponential: sd equals the mean


def test_integer_poisson_gaps_are_integers_and_far_smoother() -> None:
    gaps = _gaps(IntegerPoissonArrivals(100.0).times_ms(N, np.random.default_rng(1)))
    assert np.all(gaps == np.round(gaps))
    assert gaps.mean() == pytest.approx(10.0, rel=0.01)
    assert gaps.var() == pytest.approx(10.0, rel=0.03)  # Poisson: variance equals the mean


def test_constant_arrivals() -> None:
    times = ConstantArrivals(50.0).times_ms(5, np.random.default_rng(0))
    assert times.tolist() == [20.0, 40.0, 60.0, 80.0, 100.0]


def test_piecewise_rate_follows_each_segment() -> None:
    process = PiecewiseRateArrivals(((10.0, 100.0), (10.0, 400.0)))
    times = process.times_ms(50_000, np.random.default_rng(3))
    assert process.mean_rate == 250.0
    cycle = times % 20_000.0
    first, second = np.count_nonzero(cycle < 10_000.0), np.count_nonzero(cycle >= 10_000.0)
    assert second / first == pytest.approx(4.0, rel=0.05)
    assert np.all(np.diff(times) >= 0)


def test_piecewise_with_an_idle_segment_puts_nothing_there() -> None:
    times = PiecewiseRateArrivals(((5.0, 0.0), (5.0, 200.0))).times_ms(5000, np.random.default_rng(0))
    assert np.all(times % 10_000.0 >= 5_000.0 - 1e-6)


def test_production_mix_matches_its_exact_pmf() -> None:
    mix = ProductionMix()
    sizes, p = mix.pmf()
    assert p.sum() == pytest.approx(1.0) and sizes.min() >= 1 and sizes.max() <= 1000
    batches = mix.sample(N, np.random.default_rng(5))
    assert batches.mean() == pytest.approx(float(sizes @ p), rel=0.01)
    assert batches.std() == pytest.approx(float(np.sqrt(((sizes - sizes @ p) ** 2) @ p)), rel=0.02)
    # The paper's parts: 8% below 100; 22% in [200, 600) plus the log-normal's share near 200.
    assert np.mean(batches < 100) == pytest.approx(0.08, abs=0.003)
    assert np.mean(batches >= 600) == pytest.approx(0.05, abs=0.003)
    for lo, hi in ((1, 100), (100, 200), (190, 200), (200, 600)):
        assert np.mean((batches >= lo) & (batches < hi)) == pytest.approx(
            p[(sizes >= lo) & (sizes < hi)].sum(), abs=0.004
        )


def test_simple_mixes() -> None:
    rng = np.random.default_rng(0)
    assert set(FixedMix(64).sample(100, rng)) == {64}
    u = UniformMix(10, 20).sample(N, rng)
    assert u.min() == 10 and u.max() == 20 and u.mean() == pytest.approx(15.0, rel=0.01)
    t = TraceMix((10, 10, 30)).sample(N, rng)
    assert np.mean(t == 10) == pytest.approx(2 / 3, abs=0.01)
    assert parse_batch_mix("fixed:7") == FixedMix(7)
    assert parse_batch_mix("uniform:1-99") == UniformMix(1, 99)


@pytest.mark.parametrize("spec", ["fixed:0", "fixed:1001", "uniform:50-10", "uniform:x", "lognormal", ""])
def test_bad_mix_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="batch mix"):
        parse_batch_mix(spec)


@pytest.mark.parametrize("rate", [0.0, -5.0])
def test_non_positive_rates_are_config_errors(rate: float) -> None:
    with pytest.raises(ConfigError, match="rate"):
        PoissonArrivals(rate)
    with pytest.raises(ConfigError):
        parse_arrivals("poisson", rate)


def test_unknown_arrival_kind() -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        parse_arrivals("bursty", 10.0)


def test_same_seed_same_queries_and_rate_keeps_batches() -> None:
    a = make_workload(PoissonArrivals(100.0), ProductionMix(), 1000, seed=7)
    b = make_workload(PoissonArrivals(100.0), ProductionMix(), 1000, seed=7)
    c = make_workload(PoissonArrivals(100.0), ProductionMix(), 1000, seed=8)
    d = make_workload(PoissonArrivals(300.0), ProductionMix(), 1000, seed=7)
    assert np.array_equal(a.arrival_ms, b.arrival_ms) and np.array_equal(a.batch, b.batch)
    assert not np.array_equal(a.batch, c.batch)
    assert np.array_equal(a.batch, d.batch)
    assert d.duration_ms < a.duration_ms


def test_trace_replay_sorts_and_rebases(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("timestamp_ms,batch\n1500,20\n1000,10\n2000,30\n")
    trace = load_trace_csv(path)
    assert trace.arrival_ms.tolist() == [0.0, 500.0, 1000.0]
    assert trace.batch.tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,batch\n1,2\n", "header"),
        ("timestamp_ms,batch\nabc,2\n", "expected a number"),
        ("timestamp_ms,batch\n1,0\n", "outside"),
        ("timestamp_ms,batch\n", "no rows"),
    ],
)
def test_bad_traces_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_trace_csv(path)


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such trace file"):
        load_trace_csv(tmp_path / "nope.csv")
