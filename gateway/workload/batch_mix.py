"""Batch-size mixes. Each can draw seeded samples and give its exact probability mass function."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy import stats

from gateway.errors import ConfigError
from gateway.fields import shown

MAX_BATCH = 1000


class BatchMix(ABC):
    name: str

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` integer batch sizes in [1, MAX_BATCH]."""

    @abstractmethod
    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, probabilities): the exact distribution of ``sample``; probabilities sum to 1."""


@dataclass(frozen=True)
class ProductionMix(BatchMix):
    """The paper's mix, from the DeepRecSys production trace.

    8% uniform in [1, 99]; 22% uniform in [200, 599]; 5% uniform in [600, 999]; 65% log-normal
    (mu 5.1, sigma 0.2) truncated to an integer, with values outside [100, 200] replaced by a
    uniform draw in [190, 199].
    """

    name: str = "production"
    weights: tuple[float, float, float, float] = (0.08, 0.22, 0.05, 0.65)
    mu: float = 5.1
    sigma: float = 0.2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        part = rng.choice(4, size=n, p=np.asarray(self.weights))
        out = np.empty(n, dtype=np.int64)
        m = part == 0
        out[m] = rng.integers(1, 100, m.sum())
        m = part == 1
        out[m] = rng.integers(200, 600, m.sum())
        m = part == 2
        out[m] = rng.integers(600, 1000, m.sum())
        m = part == 3
        ln = rng.lognormal(self.mu, self.sigma, m.sum()).astype(np.int64)
        bad = (ln < 100) | (ln > 200)
        ln[bad] = rng.integers(190, 200, bad.sum())
        out[m] = ln
        return out

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.arange(1, MAX_BATCH + 1)
        p = np.zeros(MAX_BATCH)
        w = self.weights
        p[0:99] += w[0] / 99
        p[199:599] += w[1] / 400
        p[599:999] += w[2] / 400
        # int(lognormal) == k for k in [100, 200]: mass of [k, k+1).
        dist = stats.lognorm(s=self.sigma, scale=np.exp(self.mu))
        k = np.arange(100, 201)
        inside = dist.cdf(k + 1) - dist.cdf(k)
        p[99:200] += w[3] * inside
        p[189:199] += w[3] * (1.0 - inside.sum()) / 10
        return sizes, p / p.sum()


@dataclass(frozen=True)
class FixedMix(BatchMix):
    batch: int
    name: str = "fixed"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.batch, dtype=np.int64)

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.batch]), np.array([1.0])


@dataclass(frozen=True)
class UniformMix(BatchMix):
    low: int
    high: int  # inclusive
    name: str = "uniform"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, n)

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.arange(self.low, self.high + 1)
        return sizes, np.full(len(sizes), 1.0 / len(sizes))


@dataclass(frozen=True)
class TraceMix(BatchMix):
    """Batch sizes resampled (with replacement) from an observed trace."""

    sizes: tuple[int, ...]
    name: str = "trace"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.asarray(self.sizes, dtype=np.int64), size=n)

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        values, counts = np.unique(np.asarray(self.sizes), return_counts=True)
        return values, counts / counts.sum()


def parse_batch_mix(spec: str) -> BatchMix:
    """``production`` | ``fixed:N`` | ``uniform:LO-HI``."""
    try:
        if not spec.isascii():  # int() reads other scripts' digits
            raise ValueError
        if spec == "production":
            return ProductionMix()
        if spec.startswith("fixed:"):
            b = int(spec.split(":", 1)[1])
            if not 1 <= b <= MAX_BATCH:
                raise ValueError
            return FixedMix(b)
        if spec.startswith("uniform:"):
            lo, hi = (int(x) for x in spec.split(":", 1)[1].split("-"))
            if not 1 <= lo <= hi <= MAX_BATCH:
                raise ValueError
            return UniformMix(lo, hi)
    except ValueError:
        pass
    raise ConfigError(
        f"batch mix {shown(spec)}: expected 'production', 'fixed:N' or 'uniform:LO-HI' with sizes in 1..{MAX_BATCH}"
    )
