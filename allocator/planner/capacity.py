"""What n replicas carry at a latency percentile: an M/G/n approximation of the gateway's queue.

The gateway holds one queue per model and sends a query to an instance when one is free, so a
group of n like replicas behaves as an M/G/n queue (Poisson arrivals, the default of the load
generator and of real traffic). Its waiting time W has the tail
    P(W > w) ~ C(n, a) * exp(-theta * w),  theta = 2 * (n - a) / (E[S] * (1 + cs2))
with a = rate * E[S] the offered load (busy replicas), C the Erlang-C probability of waiting and
cs2 the squared coefficient of variation of the service time S. For exponential service (cs2 = 1)
this is the exact M/M/n tail; the (1 + cs2) / 2 factor is the Allen-Cunneen correction of the
mean wait. A query misses its target T when W + S > T, so
    P(miss) = E_S[ 1 if S > T else C * exp(-theta * (T - S)) ].
``max_load`` finds, per n, the largest a whose miss probability stays within 1 - attainment.

That capacity C(n) grows faster than n (pooling: n - beta * sqrt(n) in the square-root staffing
regime), so it is convex and the planner cannot use it directly in a linear program. Any line
below its convex minorant is a valid, conservative capacity for every n, and the line touching it
at n0 is exact there: ``CapacityCurve.line_at`` gives that line (successive linearisation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc, gammaln

# Replica counts at which C(n) is computed: every n to 24, then geometric to 8192.
N_GRID = np.unique(np.concatenate([np.arange(1, 25), np.round(np.geomspace(24, 8192, 32))])).astype(np.int64)
_BISECTIONS = 18  # the load found is below the largest one by at most n * 2^-18 (conservative)


@dataclass(frozen=True)
class ServiceDist:
    """A service-time distribution as weighted points (seconds)."""

    values_s: np.ndarray  # (K,)
    weights: np.ndarray  # (K,), summing to 1

    @property
    def mean_s(self) -> float:
        return float(self.values_s @ self.weights)

    @property
    def scv(self) -> float:
        """Squared coefficient of variation Var[S] / E[S]^2."""
        m = self.mean_s
        return float(((self.values_s - m) ** 2) @ self.weights / (m * m)) if m > 0 else 0.0

    @classmethod
    def compressed(cls, values_s: np.ndarray, weights: np.ndarray, points: int = 48) -> ServiceDist:
        """The same distribution on at most ``points`` points: each point the mean of an equal-mass
        slice, except that the top 2% keeps finer slices (the tail decides misses)."""
        order = np.argsort(values_s, kind="stable")
        v, w = np.asarray(values_s, float)[order], np.asarray(weights, float)[order]
        w = w / w.sum()
        if len(v) <= points:
            return cls(v, w)
        edges = np.concatenate([np.linspace(0.0, 0.98, points - 12, endpoint=False), np.linspace(0.98, 1.0, 13)])
        cdf = np.cumsum(w)
        slot = np.clip(np.searchsorted(edges, cdf - w / 2, side="right") - 1, 0, len(edges) - 2)
        mass = np.bincount(slot, weights=w, minlength=len(edges) - 1)
        total = np.bincount(slot, weights=w * v, minlength=len(edges) - 1)
        keep = mass > 0
        return cls(total[keep] / mass[keep], mass[keep] / mass[keep].sum())


def erlang_c(n: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """Probability that an arrival waits in M/M/n at offered load ``offered`` (< n), vectorised."""
    n = np.asarray(n, dtype=float)
    a = np.asarray(offered, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_pmf = n * np.log(np.maximum(a, 1e-300)) - a - gammaln(n + 1)
        cdf = gammaincc(n + 1, a)  # P(Poisson(a) <= n)
        erlang_b = np.exp(log_pmf) / cdf
        c = n * erlang_b / (n - a * (1.0 - erlang_b))
    c = np.where(a <= 0, 0.0, c)
    return np.clip(np.nan_to_num(c, nan=1.0), 0.0, 1.0)


def miss_probability(dist: ServiceDist, n: np.ndarray, offered: np.ndarray, target_s: float) -> np.ndarray:
    """P(wait + service > target) for n replicas at offered load ``offered`` (broadcast)."""
    n = np.asarray(n, dtype=float)
    a = np.asarray(offered, dtype=float)
    n, a = np.broadcast_arrays(n, a)
    stable = a < n
    c = erlang_c(n, np.where(stable, a, 0.0))
    theta = 2.0 * (n - a) / (dist.mean_s * (1.0 + dist.scv))
    slack = target_s - dist.values_s  # (K,)
    over = slack < 0
    wait = c[..., None] * np.exp(-theta[..., None] * np.maximum(slack, 0.0))
    miss = (np.where(over, 1.0, np.minimum(wait, 1.0)) * dist.weights).sum(axis=-1)
    return np.where(stable, miss, 1.0)


def max_load(dist: ServiceDist, target_s: float, attainment: float, ns: np.ndarray = N_GRID) -> np.ndarray:
    """(len(ns),) the largest offered load (busy replicas) per n with P(miss) <= 1 - attainment;
    0 where even an idle replica misses too often."""
    return max_loads([dist], np.array([target_s]), np.array([attainment]), ns)[0]


def max_loads(
    dists: list[ServiceDist],
    targets_s: np.ndarray,
    attainments: np.ndarray,
    ns: np.ndarray = N_GRID,
    behind: list[tuple[ServiceDist, np.ndarray] | None] | None = None,
) -> np.ndarray:
    """``max_load`` for many (distribution, target, attainment) at once: (len(dists), len(ns)).

    ``behind[i]``, for a class served ahead of others (non-preemptive priority): the distribution
    of all the work in service and, per n, the most load the group holds in all. A query of the
    class then waits whenever every replica is busy with any work (Erlang C at that total load, a
    floor), and its wait drains at the pace of that work; only its own class's load (and higher)
    queues ahead of it.
    """
    k = max(len(d.values_s) for d in dists)
    values = np.zeros((len(dists), 1, k))
    weights = np.zeros((len(dists), 1, k))
    for i, d in enumerate(dists):
        values[i, 0, : len(d.values_s)] = d.values_s
        weights[i, 0, : len(d.weights)] = d.weights
    pace = [d if b is None else b[0] for d, b in zip(dists, behind or [None] * len(dists), strict=True)]
    mean = np.array([d.mean_s for d in pace])[:, None]
    spread = (1.0 + np.array([d.scv for d in pace]))[:, None]
    n = np.asarray(ns, dtype=float)[None, :]
    floor = np.zeros((len(dists), len(ns)))
    for i, b in enumerate(behind or []):
        if b is not None:
            floor[i] = erlang_c(n[0], np.minimum(b[1], n[0] * (1 - 1e-9)))
    slack = np.asarray(targets_s, float)[:, None, None] - values  # (D, 1, K)
    over = ((slack < 0) * weights).sum(axis=-1)  # (D, 1): missed even when idle
    budget = (1.0 - np.asarray(attainments, float))[:, None]
    lo, hi = np.zeros((len(dists), len(ns))), np.broadcast_to(n, (len(dists), len(ns))).copy()
    head = np.where(slack >= 0, weights, 0.0)  # (D, 1, K)
    rest = np.maximum(slack, 0.0)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        c = np.maximum(erlang_c(np.broadcast_to(n, mid.shape), mid), floor)
        theta = 2.0 * (n - mid) / (mean * spread)
        miss = over + c * (head * np.exp(-theta[..., None] * rest)).sum(axis=-1)
        ok = miss <= budget
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return np.where(over > budget, 0.0, lo)


@dataclass(frozen=True)
class CapacityCurve:
    """C(n) at the grid points, and its convex minorant for linear, conservative capacities."""

    ns: np.ndarray  # (P,) replica counts
    loads: np.ndarray  # (P,) C(n): offered load carried at the target

    @classmethod
    def build(cls, dist: ServiceDist, target_s: float, attainment: float) -> CapacityCurve:
        return cls.from_loads(max_load(dist, target_s, attainment))

    @classmethod
    def from_loads(cls, loads: np.ndarray) -> CapacityCurve:
        return cls(N_GRID, loads)

    @functools.cached_property
    def hull(self) -> np.ndarray:
        """Indices into ns of the minorant's vertices (on first use: most curves never need it)."""
        return _lower_hull(self.ns.astype(float), self.loads)

    @property
    def usable(self) -> bool:
        return bool(self.loads[-1] > 0)

    def at(self, n: float | np.ndarray) -> np.ndarray:
        """C(n), interpolated between grid points, extended linearly past the last one."""
        n = np.asarray(n, dtype=float)
        slope = (self.loads[-1] - self.loads[-2]) / (self.ns[-1] - self.ns[-2])
        inside = np.interp(n, self.ns, self.loads)
        return np.where(n > self.ns[-1], self.loads[-1] + slope * (n - self.ns[-1]), np.where(n < 1, 0.0, inside))

    def line_at(self, n0: float) -> tuple[float, float]:
        """(slope, intercept) of the minorant's segment at n0 (the next one at a vertex): a line
        below C(n) for every n >= 1, equal to it at the segment's ends."""
        hx, hy = self.ns[self.hull].astype(float), self.loads[self.hull]
        k = int(np.clip(np.searchsorted(hx, n0, side="right") - 1, 0, len(hx) - 2))
        slope = (hy[k + 1] - hy[k]) / (hx[k + 1] - hx[k])
        return float(slope), float(hy[k] - slope * hx[k])


def _lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull)
