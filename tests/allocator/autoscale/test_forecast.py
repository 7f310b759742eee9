"""The load forecasters: known answers (constant, trend, iid noise), shape and order, bad input,
determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocator.autoscale.forecast import (
    DEFAULT_FORECASTER,
    FORECASTERS,
    LEVELS,
    GBMForecaster,
    detect_period,
    make_forecaster,
)

LO, MID, HI = (LEVELS.index(v) for v in (0.1, 0.5, 0.9))


def test_names() -> None:
    assert set(FORECASTERS) >= {"last", "moving-max", "ets", "ets-seasonal", "gbm"}
    assert DEFAULT_FORECASTER in FORECASTERS
    for name in FORECASTERS:
        assert make_forecaster(name).name == name


@pytest.mark.parametrize("name", FORECASTERS)
@pytest.mark.parametrize("value", [0.0, 7.0, 1234.5])
def test_constant_series_gives_the_constant(name: str, value: float) -> None:
    out = make_forecaster(name).forecast(np.full(60, value), 4)
    assert out.shape == (4, len(LEVELS))
    np.testing.assert_allclose(out, value, atol=1e-6 * max(value, 1.0))


@pytest.mark.parametrize("name", FORECASTERS)
def test_single_value_gives_it_back(name: str) -> None:
    np.testing.assert_allclose(make_forecaster(name).forecast(np.array([42.0]), 3), 42.0)


@pytest.mark.parametrize("length", [2, 5, 80])
def test_ets_continues_a_linear_trend(length: int) -> None:
    slope, x = 2.5, 10.0 + 2.5 * np.arange(length)
    out = make_forecaster("ets").forecast(x, 6)
    expected = x[-1] + slope * np.arange(1, 7)
    np.testing.assert_allclose(out[:, MID], expected, rtol=1e-6)
    np.testing.assert_allclose(out[:, HI] - out[:, LO], 0.0, atol=1e-6)


def test_ets_follows_a_noisy_trend() -> None:
    rng = np.random.default_rng(3)
    x = 200.0 + 3.0 * np.arange(150) + rng.normal(0, 5, 150)
    out = make_forecaster("ets").forecast(x, 5)
    expected = 200.0 + 3.0 * np.arange(150, 155)
    np.testing.assert_allclose(out[:, MID], expected, rtol=0.03)
    assert np.all(out[:, LO] < expected) and np.all(expected < out[:, HI])


@pytest.mark.parametrize("name", FORECASTERS)
def test_iid_noise_is_covered(name: str) -> None:
    """Poisson counts around 100: held-out rolling origin, the 10-90 band covers about 80%."""
    x = np.random.default_rng(7).poisson(100, 260).astype(float)
    f = make_forecaster(name)
    inside, medians = [], []
    for t in range(200, 257):  # 57 origins, 3 steps each
        out = f.forecast(x[:t], 3)
        inside.extend((out[:, LO] <= x[t:t + 3]) & (x[t:t + 3] <= out[:, HI]))
        medians.extend(out[:, MID])
    assert 0.65 <= np.mean(inside) <= 0.95
    assert abs(np.mean(medians) - 100.0) < 5.0


def spiky_every(period: int, n: int, seed: int = 4) -> np.ndarray:
    """Poisson(200) with a +300 spike at every multiple of ``period``."""
    x = np.random.default_rng(seed).poisson(200, n).astype(float)
    x[::period] += 300.0
    return x


def test_detect_period() -> None:
    assert detect_period(spiky_every(15, 120)) == 15
    assert detect_period(spiky_every(7, 60)) == 7
    assert detect_period(spiky_every(15, 40)) == 0  # fewer than three cycles
    assert detect_period(np.random.default_rng(9).poisson(200, 240).astype(float)) == 0
    assert detect_period(np.full(100, 3.0)) == 0
    # Two bursts are no season: forecasting half a burst every 20 steps after 40 quiet ones was.
    two = np.zeros(100)
    two[[40, 60]] = 100.0
    assert detect_period(two) == 0
    assert make_forecaster("ets-seasonal").forecast(two, 1)[0, MID] < 1.0
    three = np.zeros(100)
    three[[20, 40, 60, 80]] = 100.0  # a pattern seen four times is one
    assert detect_period(three) == 20


def test_ets_seasonal_forecasts_the_next_spike() -> None:
    x = spiky_every(15, 118)  # spikes at 0, 15, ..., 105; the next at 120, row 2 (rows: 118..122)
    out = make_forecaster("ets-seasonal").forecast(x, 5)
    assert 420 < out[2, MID] < 580
    for k in (0, 1, 3, 4):
        assert 170 < out[k, MID] < 230
    assert out[2, MID] > make_forecaster("ets").forecast(x, 5)[2, HI] + 150  # plain ets can't see it coming


def test_ets_seasonal_without_a_pattern_is_ets() -> None:
    x = np.random.default_rng(9).poisson(200, 240).astype(float)
    np.testing.assert_array_equal(make_forecaster("ets-seasonal").forecast(x, 5),
                                  make_forecaster("ets", widen=1.1).forecast(x, 5))


HISTORIES = {
    "one": np.array([5.0]),
    "one zero": np.array([0.0]),
    "zeros then load": np.array([0.0] * 30 + [3.0, 0.0, 8.0, 1.0] * 6),
    "spiky": np.random.default_rng(1).poisson(3, 45).astype(float) * (np.arange(45) % 9 == 0) * 50,
    "trace-like": np.random.default_rng(2).poisson(np.linspace(800, 300, 70)).astype(float),
}


@pytest.mark.parametrize("name", FORECASTERS)
@pytest.mark.parametrize("history", list(HISTORIES))
@pytest.mark.parametrize(("horizon", "levels"), [(1, LEVELS), (4, LEVELS), (2, (0.2, 0.8))])
def test_shape_and_order(name: str, history: str, horizon: int, levels: tuple[float, ...]) -> None:
    out = make_forecaster(name).forecast(HISTORIES[history], horizon, levels)
    assert out.shape == (horizon, len(levels))
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    assert np.all(np.diff(out, axis=1) >= 0)


@pytest.mark.parametrize("name", FORECASTERS)
def test_first_step_does_not_depend_on_the_horizon(name: str) -> None:
    x = HISTORIES["trace-like"]
    np.testing.assert_allclose(make_forecaster(name).forecast(x, 1)[0], make_forecaster(name).forecast(x, 5)[0])


@pytest.mark.parametrize("name", FORECASTERS)
def test_deterministic(name: str) -> None:
    x = HISTORIES["trace-like"]
    first = make_forecaster(name).forecast(x, 5)
    np.testing.assert_array_equal(first, make_forecaster(name).forecast(x, 5))
    f = make_forecaster(name)
    np.testing.assert_array_equal(f.forecast(x, 5), f.forecast(x, 5))


@pytest.mark.parametrize(
    ("history", "horizon", "levels", "message"),
    [
        ([], 3, LEVELS, "empty"),
        ([1.0, 2.0], -1, LEVELS, "horizon"),
        ([1.0, 2.0], 0, LEVELS, "horizon"),
        ([1.0, 2.0], 2.5, LEVELS, "horizon"),
        ([1.0, -2.0], 3, LEVELS, "negative"),
        ([1.0, np.nan], 3, LEVELS, "NaN"),
        ([[1.0, 2.0]], 3, LEVELS, "1-D"),
        ([1.0, 2.0], 3, (0.0, 0.5), "between 0 and 1"),
        ([1.0, 2.0], 3, (0.5, 1.2), "between 0 and 1"),
        ([1.0, 2.0], 3, (0.9, 0.5), "increasing"),
        ([1.0, 2.0], 3, (0.5, 0.5), "increasing"),
        ([1.0, 2.0], 3, (), "non-empty"),
    ],
)
@pytest.mark.parametrize("name", FORECASTERS)
def test_bad_input(name: str, history: list[float], horizon: int, levels: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_forecaster(name).forecast(np.array(history), horizon, levels)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown forecaster 'prophet'.*last.*ets.*gbm"):
        make_forecaster("prophet")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="bad parameters"):
        make_forecaster("last", span=3)
    with pytest.raises(ValueError, match="w must be"):
        make_forecaster("moving-max", w=0)
    with pytest.raises(ValueError, match="window"):
        make_forecaster("ets", window=0)
    with pytest.raises(ValueError, match="season"):
        make_forecaster("ets", season="weekly")
    with pytest.raises(ValueError, match="widen"):
        make_forecaster("last", widen=0.0)


def test_gbm_pooled_fit() -> None:
    rng = np.random.default_rng(5)
    series = [rng.poisson(lam, 80).astype(float) for lam in (50, 200, 800)]
    f = GBMForecaster().fit(series, horizon=3)
    out = f.forecast(rng.poisson(400, 40).astype(float), 3)
    assert out.shape == (3, len(LEVELS))
    assert np.all(np.diff(out, axis=1) >= 0)
    assert 300 < out[0, MID] < 500  # scaled features carry a level the pooled model never saw
    with pytest.raises(ValueError, match="too little"):
        GBMForecaster().fit([np.ones(10)])


def test_gbm_refits_every_few_steps_per_series() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.poisson(100, 120).astype(float), rng.poisson(30, 120).astype(float)
    f = GBMForecaster(refit_every=5)
    for t in range(60, 70):  # two series interleaved: each refitted at 60 and 65
        f.forecast(a[:t], 2)
        f.forecast(b[t - 50:t], 2)  # a sliding window hits the cache too
    assert len(f._fitted) == 4


@pytest.mark.parametrize("n", [5, 10, 60])
def test_error_quantiles_are_the_conformal_order_statistics(n: int) -> None:
    """The ceil((n + 1) q)-th smallest of n errors for q >= 0.5 (the floor for q < 0.5): the next
    exchangeable error falls at or below it with probability >= q (interpolated sample quantiles
    fall about one order statistic short)."""
    from allocator.autoscale.forecast import error_quantiles

    err = np.random.default_rng(n).normal(size=n)
    ordered = np.sort(err)
    levels = np.array([0.05, 0.1, 0.5, 0.9, 0.95])
    got = error_quantiles(err, levels)
    for q, value in zip(levels, got, strict=True):
        k = math.ceil((n + 1) * q - 1e-9) if q >= 0.5 else math.floor((n + 1) * q + 1e-9)
        assert value == ordered[min(max(k, 1), n) - 1]
    # Coverage of a fresh error, over many seeded draws: k / (n + 1), at least the level where n
    # errors allow it (n = 5 cannot: its largest covers 5/6).
    rng = np.random.default_rng(1)
    trials = rng.normal(size=(20_000, n + 1))
    below = [trials[i, n] <= error_quantiles(trials[i, :n], np.array([0.9]))[0] for i in range(len(trials))]
    exact = min(math.ceil((n + 1) * 0.9 - 1e-9), n) / (n + 1)
    assert abs(np.mean(below) - exact) < 4 * np.sqrt(exact * (1 - exact) / len(trials))
    assert exact >= 0.9 or n < 9
