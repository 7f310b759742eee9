"""Latency estimator: profile means per (instance type, batch), corrected online.

The correction is a per (type, batch bucket) ratio of observed to profiled service time,
smoothed with an exponentially weighted mean, so a pool whose real latencies differ from its
profile still routes well. Lookups are table reads: the estimator is on the dispatch hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gateway.profiles import LatencyProfile, ProfileSet
from gateway.variants import split_kind

BUCKET_WIDTH = 100  # batch sizes per correction bucket
OVERHEAD_WINDOW = 512  # round trips the transport-overhead percentiles are taken over
OVERHEAD_REFRESH = 64  # recompute them every this many observations once the window is full
OVERHEAD_PERCENTILE = 75.0  # of the round trip, in every estimate
LOOKAHEAD_PERCENTILE = 99.0  # of the round trip, how early a pipelining instance opens


class LatencyEstimator:
    def __init__(
        self,
        profiles: ProfileSet,
        model: str,
        type_names: Sequence[str],
        learning_rate: float = 0.05,
        prior_types: Sequence[str] = (),
    ) -> None:
        """``prior_types``: types whose profile is a prior (``gateway.profiles.prior``), not a
        measurement: a batch bucket never observed on them takes the correction of the nearest
        observed one, so the first answers teach every batch size."""
        self.model = model
        self.type_names = list(type_names)
        self.from_prior = [t in prior_types for t in self.type_names]
        # A kind of instance (``gateway.variants``): a type, or a variant on a type.
        profs = [profiles.get(*split_kind(model, t)) for t in self.type_names]
        self.max_batch = min(p.max_batch for p in profs)
        # (T, max_batch + 1): profile mean per type and batch size.
        self._profile_ms = np.stack([self._profile_row(p) for p in profs])
        n_buckets = self.max_batch // BUCKET_WIDTH + 1
        # Per (type, bucket) learning state as Python lists: ``observe`` runs once per query, and
        # numpy scalar arithmetic costs several times Python's.
        self._profile_rows: list[list[float]] = self._profile_ms.tolist()
        self._correction: list[list[float]] = [[1.0] * n_buckets for _ in profs]
        self._observations: list[list[int]] = [[0] * n_buckets for _ in profs]
        # Per (type, bucket): the buckets (first, last) its correction sets. Each its own; on a
        # prior type, each observed bucket also sets the unobserved ones nearest to it.
        self._regions: list[list[tuple[int, int]]] = [[(b, b) for b in range(n_buckets)] for _ in profs]
        self.learning_rate = learning_rate
        # (max_batch + 1, T): profile mean times correction, kept up to date by ``observe`` so
        # that ``estimate`` is a single gather of contiguous rows.
        self._by_batch = np.array(self._profile_ms.T, order="C")  # a copy: with one type, .T is contiguous and would be a view
        # Transport and scheduling time around each service (live only; 0 in the ideal simulator),
        # learned from round trip minus the instance's own service time. Its 75th percentile is
        # in every estimate, its 99th (``overhead_p99_ms``) opens pipelining instances; why these
        # two: docs/decisions.md, D2.
        self.overhead_ms = 0.0
        self.overhead_p99_ms = 0.0
        self._overheads = np.zeros(OVERHEAD_WINDOW)
        self._overhead_observations = 0
        # Heterogeneity coefficient: reference (fastest at the largest batch) over each type.
        self._set_coefficient()

    def _set_coefficient(self) -> None:
        at_max = self._profile_ms[:, self.max_batch]
        self.coefficient = at_max.min() / at_max
        self.coefficient.flags.writeable = False  # policies read it from every snapshot

    def _profile_row(self, profile: LatencyProfile) -> np.ndarray:
        """The profile's mean at each batch 0..max_batch (batch 0 as batch 1; past the
        profile's largest batch, its value there)."""
        sizes = np.clip(np.arange(self.max_batch + 1), 1, profile.max_batch)
        return profile.means_for(sizes)

    def add_type(self, profile: LatencyProfile, prior: bool = False, name: str | None = None) -> int:
        """A type (or kind, ``name``) that joined the pool at run time; returns its index (its
        own if known)."""
        name = name or profile.instance_type
        if name in self.type_names:
            return self.type_index(name)
        row = self._profile_row(profile)
        n_buckets = len(self._correction[0]) if self._correction else self.max_batch // BUCKET_WIDTH + 1
        self.type_names.append(name)
        self.from_prior.append(prior)
        self._profile_ms = np.vstack([self._profile_ms, row[None, :]])
        self._profile_rows.append(row.tolist())
        self._correction.append([1.0] * n_buckets)
        self._observations.append([0] * n_buckets)
        self._regions.append([(b, b) for b in range(n_buckets)])
        self._by_batch = np.ascontiguousarray(np.hstack([self._by_batch, row[:, None]]))
        self._set_coefficient()
        return len(self.type_names) - 1

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    def type_index(self, name: str) -> int:
        return self.type_names.index(name)

    def estimate(self, batches: np.ndarray) -> np.ndarray:
        """(Q, T) estimated mean service time (ms) of each batch on each type."""
        # Row 0 always equals row 1 (batch 0 is never served and shares batch 1's bucket), so
        # clipping the indices to [0, max_batch] clamps the batches to [1, max_batch]: one call
        # instead of three. take: ~4x faster than [b] here.
        b = np.asarray(batches, dtype=np.int64)
        return self._by_batch.take(b, axis=0, mode="clip") + self.overhead_ms

    def estimate_one(self, type_index: int, batch: int) -> float:
        b = min(max(int(batch), 1), self.max_batch)
        return float(self._by_batch[b, type_index]) + self.overhead_ms

    def observe(self, type_index: int, batch: int, service_ms: float) -> None:
        """Learn from one observed service time (ms) of ``batch`` on a type."""
        b = min(max(int(batch), 1), self.max_batch)
        if service_ms <= 0 or not math.isfinite(service_ms):
            return
        bucket = b // BUCKET_WIDTH
        ratio = service_ms / self._profile_rows[type_index][b]
        counts = self._observations[type_index]
        counts[bucket] += 1
        # A plain mean until there is enough data, then exponential smoothing to track drift.
        rate = max(1.0 / counts[bucket], self.learning_rate)
        row = self._correction[type_index]
        current = row[bucket]
        corrected = current + rate * (ratio - current)
        if counts[bucket] == 1 and self.from_prior[type_index]:
            self._regions[type_index] = nearest_regions(counts)
        first, last = self._regions[type_index][bucket]
        row[first : last + 1] = [corrected] * (last - first + 1)
        lo, hi = first * BUCKET_WIDTH, min((last + 1) * BUCKET_WIDTH, self.max_batch + 1)
        self._by_batch[lo:hi, type_index] = self._profile_ms[type_index, lo:hi] * corrected

    def observations(self, type_index: int) -> int:
        """Service times learned from on a type."""
        return sum(self._observations[type_index])

    def observe_overhead(self, overhead_ms: float) -> None:
        """Learn from one round trip's time beyond the instance's own service time (ms): the
        percentiles are those of the last ``OVERHEAD_WINDOW`` observations."""
        if not math.isfinite(overhead_ms):
            return
        n = self._overhead_observations
        self._overheads[n % OVERHEAD_WINDOW] = max(overhead_ms, 0.0)
        self._overhead_observations = n + 1
        if n < OVERHEAD_WINDOW or n % OVERHEAD_REFRESH == 0:
            seen = self._overheads[: min(n + 1, OVERHEAD_WINDOW)]
            typical, tail = np.percentile(seen, (OVERHEAD_PERCENTILE, LOOKAHEAD_PERCENTILE))
            self.overhead_ms, self.overhead_p99_ms = float(typical), float(tail)

    @property
    def overhead_mean_ms(self) -> float:
        """Mean of the overhead observations in the window (0 before any): what a simulation
        of this pool's transport takes as its round trip (``kairos-sim --transport-ms``)."""
        n = min(self._overhead_observations, OVERHEAD_WINDOW)
        return float(self._overheads[:n].mean()) if n else 0.0

    def correction(self, type_index: int, batch: int) -> float:
        return self._correction[type_index][min(batch, self.max_batch) // BUCKET_WIDTH]


def nearest_regions(counts: Sequence[int]) -> list[tuple[int, int]]:
    """Per bucket, the contiguous buckets (first, last) whose nearest observed bucket it is
    (a tie goes to the lower one); an unobserved bucket sets only itself."""
    seen = [i for i, n in enumerate(counts) if n]
    regions = [(b, b) for b in range(len(counts))]
    for k, b in enumerate(seen):
        first = 0 if k == 0 else (seen[k - 1] + b) // 2 + 1
        last = len(counts) - 1 if k == len(seen) - 1 else (b + seen[k + 1]) // 2
        regions[b] = (first, last)
    return regions
