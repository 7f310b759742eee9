"""Probabilistic load forecasts for the control loop: the next few steps' load as quantiles.

Every forecaster maps a history of non-negative per-step rates (or counts), oldest first, to a
``(horizon, len(levels))`` array: for each of the next ``horizon`` steps the quantiles at
``levels``, non-negative and non-decreasing along the levels. The loop plans at a high quantile,
so the upper levels' coverage matters as much as the median.

- ``last``: the last value; the band from past naive h-step changes.
- ``moving-max``: the max of the last ``w`` values; the band from its past h-step errors.
- ``ets``: Holt's damped linear trend, parameters from a small grid on one-step squared error;
  the band from its past h-step errors.
- ``ets-seasonal``: ``ets`` on the series less a repeating pattern, when the history shows one
  (period detected per call from the autocorrelation of the short-term wiggles), the pattern
  added back ahead (Faro's jobs 0, 3 and 7 spike every 15 minutes), the band a tenth wider.
- ``gbm``: gradient-boosted quantile trees on scaled lags, one model per level, trained on the
  history seen so far (refitted every few new steps, cached), or pooled over series with ``fit``.

All but ``gbm`` share one scheme: a point path from each past origin in a recent window, the
errors it made h steps ahead, and the point forecast now plus the empirical quantiles of those
errors (with the finite-sample conformal correction). That needs no distributional assumption
(the trace's spikes are far from normal), and a constant or exactly trending history gives a
zero-width band. ``benchmarks.autoscale.forecast`` compares them; ``docs/forecast.md`` has the
numbers and why ``DEFAULT_FORECASTER`` is what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

LEVELS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


class Forecaster(Protocol):
    name: str

    def forecast(self, history: np.ndarray, horizon: int, levels: Sequence[float] = LEVELS) -> np.ndarray:
        """history: (t,) non-negative per-step rates (or counts), oldest first, t >= 1.
        Returns (horizon, len(levels)): for each of the next `horizon` steps, the quantiles at
        `levels`, non-negative and non-decreasing along levels."""
        ...


# --- input checks and the common finish ----------------------------------------------------------


def check_inputs(history: Any, horizon: int, levels: Sequence[float]) -> tuple[np.ndarray, int, np.ndarray]:
    """The validated history (float, 1-D), horizon and levels; ValueError naming what is wrong."""
    x = np.asarray(history, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"history must be 1-D (one value per step), got shape {x.shape}")
    if x.size == 0:
        raise ValueError("history is empty: at least one step is needed")
    if not np.all(np.isfinite(x)):
        raise ValueError("history has NaN or infinite values")
    if np.any(x < 0):
        raise ValueError(f"history has negative values (min {x.min():g}): rates and counts are >= 0")
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    q = np.asarray(levels, dtype=float)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"levels must be a non-empty sequence of numbers, got {levels!r}")
    if np.any(~np.isfinite(q)) or np.any(q <= 0) or np.any(q >= 1):
        raise ValueError(f"levels must lie strictly between 0 and 1, got {list(q)}")
    if np.any(np.diff(q) <= 0):
        raise ValueError(f"levels must be strictly increasing, got {list(q)}")
    return x, int(horizon), q


def _finish(q: np.ndarray) -> np.ndarray:
    # Sorting undoes any crossing (gbm's models are fitted apart); clipping keeps rates >= 0
    # and, being monotone, keeps the order.
    return np.clip(np.sort(q, axis=1), 0.0, None)


# --- the residual scheme (last, moving-max, ets) -------------------------------------------------


def error_quantiles(err: np.ndarray, levels: np.ndarray, widen: float = 1.0) -> np.ndarray:
    """Per level, the split-conformal order statistic of the past errors: for a level q >= 0.5
    the ceil((n + 1) q)-th smallest of n, below 0.5 the floor((n + 1) q)-th (the largest or the
    smallest where n is too few), so that the next error falls at or below the upper ones and
    above the lower ones with at least their probability when errors are exchangeable
    (interpolated sample quantiles fall about one order statistic short: 87% at q90 with n = 10).
    ``widen`` scales the spread around the median further."""
    n = err.size
    ordered = np.sort(err)
    upper = levels >= 0.5
    rank = np.where(upper, np.ceil((n + 1) * levels - 1e-9), np.floor((n + 1) * levels + 1e-9))
    q = ordered[np.clip(rank.astype(int), 1, n) - 1]
    if widen != 1.0:
        mid = np.quantile(err, 0.5)
        q = mid + (q - mid) * widen
    return q


def residual_band(x: np.ndarray, paths: np.ndarray, horizon: int, levels: np.ndarray, window: int,
                  widen: float = 1.0) -> np.ndarray:
    """Quantiles from ``paths`` ((t, horizon): row ``i`` is the point path made after seeing
    ``x[:i + 1]``): the newest row plus, per step, the quantiles of that step's errors over the
    last ``window`` origins whose outcome is known. A step with no known error yet borrows the
    nearest shorter step's, widened by sqrt(step ratio) as a random walk would; none at all
    (a single value) gives a zero-width band."""
    t = x.size
    out = np.repeat(paths[-1][:, None], levels.size, axis=1)
    known: tuple[int, np.ndarray] | None = None
    for k in range(horizon):
        # The path from row i predicts x[i + 1 + k] at step k; known while i + 1 + k < t.
        last_row = t - 2 - k
        if last_row >= 0:
            rows = np.arange(max(0, last_row - window + 1), last_row + 1)
            known = (k, error_quantiles(x[rows + 1 + k] - paths[rows, k], levels, widen))
            out[k] += known[1]
        elif known is not None:
            out[k] += known[1] * np.sqrt((k + 1) / (known[0] + 1))
    return out


def detect_period(x: np.ndarray, max_period: int = 60, min_cycles: int = 3, threshold: float = 0.4) -> int:
    """The lag (>= 2) at which the series' short-term wiggles repeat most, if their
    autocorrelation there, and at twice the lag, reaches ``threshold`` and the history holds
    ``min_cycles`` of it; else 0.
    The wiggles are the values less a centred median of 7 (so level shifts and trends don't count).
    At 0.3, Faro's trace showed spurious 36-minute periods in two jobs; at 0.4 only its real
    15-minute one (three jobs)."""
    if x.size < 7:
        return 0
    d = x[3:-3] - np.median(np.lib.stride_tricks.sliding_window_view(x, 7), axis=1)
    d = d - d.mean()
    top = min(max_period, d.size // min_cycles)
    energy = float(d @ d)
    if top < 2 or energy <= 0:
        return 0
    acf = np.array([d[:-lag] @ d[lag:] for lag in range(2, top + 1)]) / energy
    best = int(np.argmax(acf))
    period = best + 2
    if acf[best] < threshold:
        return 0
    # A pattern repeats: it must show two periods apart too (over the overlap), or two bursts one
    # "period" apart read as a season and half a burst is forecast at every cycle.
    twice = 2 * period
    again = (d[:-twice] @ d[twice:]) / energy * d.size / (d.size - twice)
    return period if again >= threshold else 0


def seasonal_profile(x: np.ndarray, period: int) -> np.ndarray:
    """(period,): the median wiggle at each phase ``i % period`` (the values less a centred median
    of 7), less its mean so the level stays with the base forecaster."""
    d = x[3:-3] - np.median(np.lib.stride_tricks.sliding_window_view(x, 7), axis=1)
    phase = (np.arange(d.size) + 3) % period
    prof = np.array([np.median(d[phase == p]) for p in range(period)])
    return prof - prof.mean()


@dataclass
class ResidualForecaster:
    """A point path from each recent origin and the empirical quantiles of its past errors.
    ``log``: work on log(1 + x) (errors relative to the level, for loads that change scale);
    ``widen``: scale the band around its median (1: as the errors say); ``season``: a repeating
    pattern's period in steps, "auto" to detect it in each history (``detect_period``), 0 for none:
    the point path runs on the series less the pattern, and the pattern is added back ahead."""

    name: str
    path_fn: Callable[[np.ndarray, int], np.ndarray]
    window: int = 60
    log: bool = False
    widen: float = 1.0
    season: int | str = 0
    # Only the recent past matters; bounding it keeps a call's cost flat as the history grows.
    keep: int = 240

    def _paths(self, x: np.ndarray, horizon: int) -> np.ndarray:
        period = detect_period(x) if self.season == "auto" else int(self.season)
        if period < 2 or x.size < 7 + period:
            return self.path_fn(x, horizon)
        prof = seasonal_profile(x, period)
        idx = np.arange(x.size)
        ahead = (idx[:, None] + 1 + np.arange(horizon)[None, :]) % period  # the phase each step lands on
        return self.path_fn(x - prof[idx % period], horizon) + prof[ahead]

    def forecast(self, history: np.ndarray, horizon: int, levels: Sequence[float] = LEVELS) -> np.ndarray:
        x, horizon, q = check_inputs(history, horizon, levels)
        x = x[-max(self.keep, self.window + horizon + 1):]
        if self.log:
            x = np.log1p(x)
        out = residual_band(x, self._paths(x, horizon), horizon, q, self.window, self.widen)
        return _finish(np.expm1(out) if self.log else out)


def last_paths(x: np.ndarray, horizon: int) -> np.ndarray:
    """The naive forecast: every step is the value last seen."""
    return np.repeat(x[:, None], horizon, axis=1)


def moving_max_paths(w: int) -> Callable[[np.ndarray, int], np.ndarray]:
    if w < 1:
        raise ValueError(f"moving-max: w must be >= 1, got {w}")

    def paths(x: np.ndarray, horizon: int) -> np.ndarray:
        """Every step is the max of the last ``w`` values (fewer at the start)."""
        padded = np.concatenate([np.full(w - 1, -np.inf), x])
        m = np.lib.stride_tricks.sliding_window_view(padded, w).max(axis=1)
        return np.repeat(m[:, None], horizon, axis=1)

    return paths


# --- ets: Holt's damped trend -------------------------------------------------------------------

ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
BETAS = (0.0, 0.02, 0.05, 0.1, 0.2)
PHIS = (0.8, 0.9, 0.95, 0.98, 1.0)


def _holt_init(x: np.ndarray) -> tuple[float, float]:
    # The level at the first value, the trend the mean slope of the first few (an exact trend
    # then has no error from the start).
    k = min(4, x.size - 1)
    return float(x[0]), float((x[k] - x[0]) / k) if k else 0.0


def holt_grid_sse(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """One-step squared error of every (alpha, beta, phi) on ``x``, all combinations at once."""
    level0, trend0 = _holt_init(x)
    level = np.full(alpha.shape, level0)
    trend = np.full(alpha.shape, trend0)
    sse = np.zeros(alpha.shape)
    for v in x[1:]:
        pred = level + phi * trend
        err = v - pred
        sse += err * err
        new_level = pred + alpha * err
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
        level = new_level
    return sse


def holt_states(x: np.ndarray, alpha: float, beta: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Level and trend after each value of ``x``."""
    level, trend = _holt_init(x)
    levels = np.empty(x.size)
    trends = np.empty(x.size)
    levels[0], trends[0] = level, trend
    for i in range(1, x.size):
        pred = level + phi * trend
        new_level = pred + alpha * (x[i] - pred)
        trend = beta * (new_level - level) + (1.0 - beta) * phi * trend
        level = new_level
        levels[i], trends[i] = level, trend
    return levels, trends


_GRID = tuple(np.array(a, dtype=float) for a in zip(*[(a, b, p) for a in ALPHAS for b in BETAS for p in PHIS],
                                                       strict=True))


@dataclass
class HoltFit:
    """The damped-trend paths, with the parameters the grid chose on the last ``fit_window`` values."""

    fit_window: int = 120
    chosen: tuple[float, float, float] = field(default=(1.0, 0.0, 1.0), init=False)

    def __call__(self, x: np.ndarray, horizon: int) -> np.ndarray:
        if x.size >= 3:
            sse = holt_grid_sse(x[-self.fit_window:], *_GRID)
            best = int(np.argmin(sse))  # ties: the first in grid order, so deterministic
            self.chosen = (float(_GRID[0][best]), float(_GRID[1][best]), float(_GRID[2][best]))
        else:
            self.chosen = (1.0, 0.0, 1.0)  # too short to fit: follow the last value and slope
        alpha, beta, phi = self.chosen
        levels, trends = holt_states(x, alpha, beta, phi)
        damp = np.cumsum(phi ** np.arange(1, horizon + 1))  # phi + phi^2 + ... + phi^h
        return levels[:, None] + trends[:, None] * damp[None, :]


# --- gbm: quantile trees on scaled lags ---------------------------------------------------------


def lag_features(x: np.ndarray, origins: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Features at each origin ``s`` from ``x[:s]`` only, and the scale they are divided by: the
    last ``lags`` values, their mean of 3, max and std, all over the mean of the last ``lags``
    (so series at different levels share trees), and log(1 + that mean) for the level itself."""
    win = np.lib.stride_tricks.sliding_window_view(x, lags)[origins - lags]  # x[s - lags:s]
    scale = win.mean(axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    rel = win / scale[:, None]
    feats = np.column_stack([rel, rel[:, -3:].mean(axis=1), rel.max(axis=1), rel.std(axis=1), np.log1p(scale)])
    return feats, scale


def training_rows(x: np.ndarray, horizon: int, lags: int, max_origins: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (features + step) and scaled targets for every origin whose whole ``horizon`` is known."""
    origins = np.arange(max(lags, x.size - horizon + 1 - max_origins), x.size - horizon + 1)
    if origins.size == 0:
        return np.empty((0, lags + 5)), np.empty(0)
    feats, scale = lag_features(x, origins, lags)
    rows, targets = [], []
    for k in range(horizon):
        rows.append(np.column_stack([feats, np.full(origins.size, k + 1.0)]))
        targets.append(x[origins + k] / scale)
    return np.vstack(rows), np.concatenate(targets)


@dataclass
class _Fitted:
    tail: np.ndarray  # the end of the history it was trained on, to recognise the series again
    horizon: int
    levels: np.ndarray
    models: list[Any]


@dataclass
class GBMForecaster:
    """Gradient-boosted quantile regression (scikit-learn's HistGradientBoostingRegressor, loss
    "quantile"), one model per level with the step ahead as a feature; the quantiles are the
    models' predictions times the recent mean, sorted per row so they never cross.

    Trained online on the history passed in (only the past, no peeking), refitted once
    ``refit_every`` new steps have arrived and cached per series (up to ``cache`` series,
    recognised by their recent values, so a growing or a sliding window both hit the cache).
    ``fit(series_list)`` trains one pooled model on several series instead; ``forecast`` then uses
    it for any series until the next ``fit``. Too short a history for either falls back to ``ets``.
    The first fit imports scikit-learn (about a second); a refit takes ~0.3 s with the defaults."""

    name: str = "gbm"
    lags: int = 8
    # Trained for at least this many steps ahead, so a shorter request reuses the same models.
    train_horizon: int = 5
    refit_every: int = 10
    max_origins: int = 300
    min_origins: int = 20
    # Small trees, few rounds, coarse bins: sklearn's quantile loss costs ~1.5 ms a round even on
    # a few hundred rows, and a refit trains one model per level.
    max_iter: int = 30
    learning_rate: float = 0.2
    max_leaf_nodes: int = 8
    max_bins: int = 32
    min_samples_leaf: int = 10
    cache: int = 64
    seed: int = 0
    _fitted: list[_Fitted] = field(default_factory=list, init=False, repr=False)
    _pooled: _Fitted | None = field(default=None, init=False, repr=False)
    _fallback: Forecaster = field(default_factory=lambda: _make_ets(), init=False, repr=False)

    def _train(self, rows: np.ndarray, y: np.ndarray, levels: np.ndarray) -> list[Any]:
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        # One thread: on a few thousand rows OpenMP's start-up costs more than it saves.
        with threadpool_limits(1):
            return [HistGradientBoostingRegressor(
                loss="quantile", quantile=float(q), max_iter=self.max_iter, learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes, max_bins=self.max_bins, min_samples_leaf=self.min_samples_leaf,
                early_stopping=False, random_state=self.seed).fit(rows, y) for q in levels]

    def fit(self, series_list: Sequence[np.ndarray], horizon: int = 5,
            levels: Sequence[float] = LEVELS) -> GBMForecaster:
        """One model pooled over ``series_list`` (each checked as a history); forecasts use it from now on."""
        parts = [training_rows(check_inputs(s, horizon, levels)[0], horizon, self.lags, self.max_origins)
                 for s in series_list]
        q = check_inputs([0.0], horizon, levels)[2]
        rows = np.vstack([p[0] for p in parts]) if parts else np.empty((0, self.lags + 5))
        if rows.shape[0] < self.min_origins * horizon:
            raise ValueError(f"gbm: too little to fit ({rows.shape[0]} rows; series need > {self.lags + horizon} steps)")
        y = np.concatenate([p[1] for p in parts])
        self._pooled = _Fitted(np.empty(0), horizon, q, self._train(rows, y, q))
        return self

    def _cached(self, x: np.ndarray, horizon: int, levels: np.ndarray) -> _Fitted | None:
        for entry in self._fitted:
            if entry.horizon < horizon or not np.array_equal(entry.levels, levels):
                continue
            m = entry.tail.size
            # The series it was trained on, 0..refit_every-1 steps ago.
            for d in range(self.refit_every):
                if x.size - d >= m and np.array_equal(x[x.size - d - m:x.size - d], entry.tail):
                    return entry
        return None

    def _model_for(self, x: np.ndarray, horizon: int, levels: np.ndarray) -> _Fitted | None:
        pooled = self._pooled
        if pooled is not None and pooled.horizon >= horizon and np.array_equal(pooled.levels, levels):
            return pooled
        entry = self._cached(x, horizon, levels)
        if entry is not None:
            return entry
        steps = max(horizon, self.train_horizon)
        rows, y = training_rows(x, steps, self.lags, self.max_origins)
        if rows.shape[0] < self.min_origins * steps:
            return None
        entry = _Fitted(x[-min(x.size, 2 * self.lags):].copy(), steps, levels, self._train(rows, y, levels))
        self._fitted = [entry, *self._fitted][: self.cache]
        return entry

    def forecast(self, history: np.ndarray, horizon: int, levels: Sequence[float] = LEVELS) -> np.ndarray:
        x, horizon, q = check_inputs(history, horizon, levels)
        x = x[-(self.max_origins + self.lags + max(horizon, self.train_horizon)):]
        fitted = self._model_for(x, horizon, q) if x.size > self.lags else None
        if fitted is None:
            return self._fallback.forecast(x, horizon, q.tolist())
        feats, scale = lag_features(x, np.array([x.size]), self.lags)
        rows = np.column_stack([np.repeat(feats, horizon, axis=0), np.arange(1.0, horizon + 1)])
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            pred = np.column_stack([m.predict(rows) for m in fitted.models]) * scale[0]
        return _finish(pred)


# --- the factory -------------------------------------------------------------------------------


def _residual(name: str, paths: Callable[[np.ndarray, int], np.ndarray], window: int, log: bool,
              widen: float, season: int | str) -> Forecaster:
    if window < 1:
        raise ValueError(f"{name}: window must be >= 1, got {window}")
    if not widen > 0:
        raise ValueError(f"{name}: widen must be > 0, got {widen}")
    if season != "auto" and not (isinstance(season, int) and season >= 0):
        raise ValueError(f"{name}: season must be 'auto' or a period >= 0 (0: none), got {season!r}")
    return ResidualForecaster(name, paths, window=window, log=log, widen=widen, season=season)


def _make_last(window: int = 60, log: bool = False, widen: float = 1.0, season: int | str = 0) -> Forecaster:
    return _residual("last", last_paths, window, log, widen, season)


def _make_moving_max(w: int = 5, window: int = 60, log: bool = False, widen: float = 1.0,
                     season: int | str = 0) -> Forecaster:
    return _residual("moving-max", moving_max_paths(w), window, log, widen, season)


def _make_ets(window: int = 60, log: bool = False, widen: float = 1.0, season: int | str = 0,
              fit_window: int = 120, name: str = "ets") -> Forecaster:
    if fit_window < 3:
        raise ValueError(f"{name}: fit_window must be >= 3, got {fit_window}")
    return _residual(name, HoltFit(fit_window), window, log, widen, season)


def _make_ets_seasonal(season: int | str = "auto", widen: float = 1.1, **params: Any) -> Forecaster:
    # widen 1.1: on Faro's trace the band as the errors say covers the 90% quantile 87.7% of the
    # time; a tenth wider reaches 89.4% at no cost in pinball loss (docs/forecast.md).
    return _make_ets(season=season, widen=widen, name="ets-seasonal", **params)


def _make_gbm(**params: Any) -> Forecaster:
    return GBMForecaster(**params)


_FACTORIES: dict[str, Callable[..., Forecaster]] = {
    "last": _make_last,
    "moving-max": _make_moving_max,
    "ets": _make_ets,
    "ets-seasonal": _make_ets_seasonal,
    "gbm": _make_gbm,
}
FORECASTERS: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_FORECASTER: str = "ets-seasonal"


def make_forecaster(name: str, **params: Any) -> Forecaster:
    """A new forecaster by name (``FORECASTERS``), with its parameters; ValueError for an unknown
    name or parameter."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown forecaster {name!r}; known: {', '.join(FORECASTERS)}")
    try:
        return _FACTORIES[name](**params)
    except TypeError as e:
        raise ValueError(f"{name}: bad parameters {sorted(params)}: {e}") from None
