"""Arrival processes. Each yields ``n`` arrival times in ms from 0, seeded by the caller's rng."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gateway.errors import ConfigError


class ArrivalProcess(ABC):
    name: str
    # The gaps at rate r are those at rate 1 scaled by 1/r: a search may draw once and scale.
    scale_invariant: ClassVar[bool] = True

    @abstractmethod
    def times_ms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Non-decreasing arrival times (ms) of ``n`` queries, the first gap included."""

    @property
    @abstractmethod
    def mean_rate(self) -> float:
        """Long-run queries per second."""


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ConfigError(f"arrival rate: expected a positive number of queries/s, got {rate!r}")


@dataclass(frozen=True)
class SteadyArrivals(ArrivalProcess):
    """A process with one fixed rate (queries/s); subclasses say how the gaps are drawn."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    @property
    def mean_rate(self) -> float:
        return self.rate


@dataclass(frozen=True)
class PoissonArrivals(SteadyArrivals):
    """A Poisson process: exponential gaps (the default; closest to real traffic)."""

    name: str = "poisson"

    def times_ms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.exponential(1000.0 / self.rate, n))


@dataclass(frozen=True)
class IntegerPoissonArrivals(SteadyArrivals):
    """The paper harness's gaps: integer ms drawn from Poisson(mean gap). Much smoother than a
    Poisson process."""

    name: str = "integer-poisson"
    scale_invariant: ClassVar[bool] = False  # whole-ms gaps: at 1 q/s nearly constant, at 500 q/s not

    def times_ms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.poisson(1000.0 / self.rate, n).astype(float))


@dataclass(frozen=True)
class ConstantArrivals(SteadyArrivals):
    name: str = "constant"

    def times_ms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(1, n + 1) * (1000.0 / self.rate)


@dataclass(frozen=True)
class PiecewiseRateArrivals(ArrivalProcess):
    """A Poisson process whose rate changes by segment, e.g. a diurnal ramp.

    ``segments`` are (duration_s, rate) pairs, repeated cyclically until ``n`` queries exist.
    """

    segments: tuple[tuple[float, float], ...]
    name: str = "piecewise"

    def __post_init__(self) -> None:
        if not self.segments:
            raise ConfigError("piecewise arrivals: expected at least one (duration_s, rate) segment")
        for duration, rate in self.segments:
            if duration <= 0 or rate < 0:
                raise ConfigError(
                    f"piecewise arrivals: expected duration > 0 and rate >= 0, got ({duration}, {rate})"
                )
        if all(rate == 0 for _, rate in self.segments):
            raise ConfigError("piecewise arrivals: every segment has rate 0")

    @property
    def mean_rate(self) -> float:
        total = sum(d for d, _ in self.segments)
        return sum(d * r for d, r in self.segments) / total

    def times_ms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        # Inverse of the cumulative intensity: unit-rate exponential gaps mapped through Lambda^-1.
        unit = np.cumsum(rng.exponential(1.0, n))
        durations = np.array([d for d, _ in self.segments]) * 1000.0
        rates = np.array([r for _, r in self.segments]) / 1000.0
        mass = durations * rates
        cycle_mass, cycle_ms = mass.sum(), durations.sum()
        cycles, rest = np.divmod(unit, cycle_mass)
        edges = np.concatenate([[0.0], np.cumsum(mass)])
        seg = np.clip(np.searchsorted(edges, rest, side="right") - 1, 0, len(mass) - 1)
        # Skip zero-rate segments: a point never lands inside one.
        start_ms = np.concatenate([[0.0], np.cumsum(durations)])[seg]
        within = np.where(rates[seg] > 0, (rest - edges[seg]) / np.where(rates[seg] > 0, rates[seg], 1), 0)
        return cycles * cycle_ms + start_ms + within


def parse_arrivals(kind: str, rate: float) -> ArrivalProcess:
    kinds: dict[str, type[SteadyArrivals]] = {
        "poisson": PoissonArrivals,
        "integer-poisson": IntegerPoissonArrivals,
        "constant": ConstantArrivals,
    }
    if kind not in kinds:
        raise ConfigError(f"arrivals {kind!r}: expected one of {', '.join(kinds)}")
    return kinds[kind](rate)
