"""The round trip a simulated query pays around its service: a constant, or drawn per query.

A live pool's round trip (gateway to instance and back, minus the instance's own service
time) is not constant: on a shared 2-core machine its mean is about 1 ms and its 99th
percentile about 3 ms. A QoS-tight policy feels the tail, not the mean, so the simulator can
draw each query's round trip from a log-normal distribution with a given mean and 99th
percentile (the two figures the gateway exports as ``kairos_transport_overhead_*_seconds``).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from gateway.errors import ConfigError

Z99 = 2.3263478740408408  # standard normal 99th percentile
# A log-normal's p99 / mean is at most exp(Z99**2 / 2), reached as its sigma goes to Z99.
MAX_P99_OVER_MEAN = math.exp(Z99 * Z99 / 2.0)


def lognormal_params(mean_ms: float, p99_ms: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal with this mean and 99th percentile (the smaller sigma of the
    two that fit). ConfigError when no log-normal has them."""
    if not (0 < mean_ms <= p99_ms and math.isfinite(p99_ms)):
        raise ConfigError(f"transport p99 {p99_ms:g} ms: expected a finite value >= the mean ({mean_ms:g} ms) > 0")
    if p99_ms / mean_ms >= MAX_P99_OVER_MEAN:
        raise ConfigError(
            f"transport p99 {p99_ms:g} ms is {p99_ms / mean_ms:.1f}x the mean {mean_ms:g} ms: a log-normal "
            f"allows less than {MAX_P99_OVER_MEAN:.1f}x"
        )
    # ln p99 - ln mean = Z99 * sigma - sigma**2 / 2
    sigma = Z99 - math.sqrt(Z99 * Z99 - 2.0 * math.log(p99_ms / mean_ms))
    return math.log(mean_ms) - sigma * sigma / 2.0, sigma


def fittable_p99(mean_ms: float, p99_ms: float | None) -> float | None:
    """A measured p99 moved into what a log-normal with this mean can have: a live tail can be
    heavier than any log-normal's (a few slow round trips in a quiet minute)."""
    if p99_ms is None or not mean_ms > 0:
        return p99_ms
    return min(max(p99_ms, mean_ms), 0.99 * MAX_P99_OVER_MEAN * mean_ms)


def round_trips(n: int, mean_ms: float, p99_ms: float | None, seed: int) -> list[float]:
    """Each of ``n`` queries' round trip (ms): ``mean_ms`` for all when ``p99_ms`` is None or
    equal to it, else seeded log-normal draws with that mean and p99."""
    if not (mean_ms >= 0 and math.isfinite(mean_ms)):
        raise ConfigError(f"transport {mean_ms:g} ms: expected a finite number of ms >= 0")
    if p99_ms is None or p99_ms == mean_ms:
        return [mean_ms] * n
    mu, sigma = lognormal_params(mean_ms, p99_ms)
    rng = np.random.default_rng([seed, 3, zlib.crc32(b"transport")])
    draws: list[float] = rng.lognormal(mu, sigma, n).tolist()
    return draws
