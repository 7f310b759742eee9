"""Latency profile API: interpolate, sample, and read mean and tail of a service time.

A profile holds, for one (model, instance type), a batch-size grid and at each grid point the
mean service time and a table of quantiles. Between grid points everything is interpolated
linearly in batch size; below the first grid point the first point's values hold (a latency
floor, never extrapolated downwards); above the last point is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.errors import ProfileError

PROFILE_DIR = Path(__file__).parent / "data" / "profiles"
# Quantile levels a profile file keeps per batch size (the importer's and kairos-profile's).
QUANTILE_LEVELS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]
# The largest batch a profile or a config may name: an instance replays a table per batch size.
MAX_BATCH_SIZE = 1 << 20


def summarize_samples(by_batch: dict[int, np.ndarray]) -> dict[str, object]:
    """One instance type's entry of a profile file from service-time samples (ms) per batch."""
    batches = sorted(by_batch)
    samples = [np.asarray(by_batch[b], dtype=float) for b in batches]
    return {
        "batch": batches,
        "mean": [round(float(s.mean()), 4) for s in samples],
        "quantiles": [np.round(np.quantile(s, QUANTILE_LEVELS), 4).tolist() for s in samples],
    }


@dataclass(frozen=True, eq=False)
class LatencyProfile:
    model: str
    instance_type: str
    batches: np.ndarray  # (G,) increasing grid of batch sizes
    means: np.ndarray  # (G,) ms
    levels: np.ndarray  # (L,) quantile levels in [0, 1], increasing, first 0 and last 1
    quantiles: np.ndarray  # (G, L) ms
    unit: str = "ms"

    @property
    def max_batch(self) -> int:
        return int(self.batches[-1])

    def check_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise ProfileError(
                f"batch size {batch} is outside the profile of {self.model} on "
                f"{self.instance_type}: expected 1..{self.max_batch}"
            )

    def _check_many(self, batches: np.ndarray) -> None:
        if batches.size and (batches.min() < 1 or batches.max() > self.max_batch):
            bad = int(batches[(batches < 1) | (batches > self.max_batch)][0])
            self.check_batch(bad)

    def mean(self, batch: int) -> float:
        self.check_batch(batch)
        return float(np.interp(batch, self.batches, self.means))

    def means_for(self, batches: np.ndarray) -> np.ndarray:
        """Vectorised ``mean`` for an array of batch sizes."""
        batches = np.asarray(batches)
        self._check_many(batches)
        return np.interp(batches, self.batches, self.means)

    def quantile(self, batch: int, q: float) -> float:
        self.check_batch(batch)
        if not 0.0 <= q <= 1.0:
            raise ProfileError(f"quantile level {q} is outside [0, 1]")
        return float(self.quantiles_for(np.array([batch]), q)[0])

    def quantiles_for(self, batches: np.ndarray, q: float) -> np.ndarray:
        return self.quantile_table(batches, np.array([q]))[:, 0]

    def quantile_table(self, batches: np.ndarray, qs: np.ndarray) -> np.ndarray:
        """(len(batches), len(qs)): the quantile at each level in ``qs`` (within [0, 1]) of each batch."""
        batches = np.asarray(batches)
        self._check_many(batches)
        qs = np.asarray(qs, dtype=float)
        k = np.clip(np.searchsorted(self.levels, qs, side="right") - 1, 0, len(self.levels) - 2)
        f = (qs - self.levels[k]) / (self.levels[k + 1] - self.levels[k])
        at_levels = self.quantiles[:, k] + f * (self.quantiles[:, k + 1] - self.quantiles[:, k])  # (G, Q)
        out = np.empty((len(batches), len(qs)))
        for j in range(len(qs)):
            out[:, j] = np.interp(batches, self.batches, at_levels[:, j])
        return out

    def sample(self, batch: int, rng: np.random.Generator) -> float:
        """Draw one service time (ms) by inverse transform of the interpolated quantile table."""
        self.check_batch(batch)
        return float(self._inverse_cdf(np.array([batch]), rng.random(1))[0])

    def sample_many(self, batches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batches = np.asarray(batches)
        self._check_many(batches)
        return self._inverse_cdf(batches, rng.random(batches.shape))

    def _inverse_cdf(self, batches: np.ndarray, u: np.ndarray) -> np.ndarray:
        # Interpolate in batch between the two neighbouring grid rows, then in level.
        g = len(self.batches)
        hi = np.clip(np.searchsorted(self.batches, batches, side="left"), 0, g - 1)
        lo = np.clip(hi - 1, 0, g - 1)
        span = self.batches[hi] - self.batches[lo]
        w = np.where(span > 0, (batches - self.batches[lo]) / np.where(span > 0, span, 1), 0.0)
        w = np.clip(w, 0.0, 1.0)
        k = np.clip(np.searchsorted(self.levels, u, side="right") - 1, 0, len(self.levels) - 2)
        f = (u - self.levels[k]) / (self.levels[k + 1] - self.levels[k])

        def at(rows: np.ndarray) -> np.ndarray:
            a = self.quantiles[rows, k]
            b = self.quantiles[rows, k + 1]
            return a + f * (b - a)

        return (1.0 - w) * at(lo) + w * at(hi)

    def to_json(self) -> dict[str, object]:
        return {
            "batch": self.batches.astype(int).tolist(),
            "mean": np.round(self.means, 4).tolist(),
            "quantiles": np.round(self.quantiles, 4).tolist(),
        }


@dataclass(frozen=True)
class ProfileSet:
    """All profiles known to a process, keyed by (model, instance type)."""

    profiles: dict[tuple[str, str], LatencyProfile] = field(default_factory=dict)

    def get(self, model: str, instance_type: str) -> LatencyProfile:
        try:
            return self.profiles[(model, instance_type)]
        except KeyError:
            have = ", ".join(f"{m}/{t}" for m, t in sorted(self.profiles)) or "none"
            raise ProfileError(
                f"no latency profile for model {model!r} on instance type {instance_type!r}; "
                f"available: {have}"
            ) from None

    def has(self, model: str, instance_type: str) -> bool:
        return (model, instance_type) in self.profiles

    def merged(self, other: ProfileSet) -> ProfileSet:
        """These profiles with ``other``'s added; ``other``'s win where both have one."""
        return ProfileSet({**self.profiles, **other.profiles})

    def models(self) -> list[str]:
        return sorted({m for m, _ in self.profiles})

    def types(self, model: str) -> list[str]:
        return sorted(t for m, t in self.profiles if m == model)


MIN_SERVICE_MS = 0.001


def parse_profile_file(data: Any) -> list[LatencyProfile]:
    """The profiles of one profile file (format: docs/profiles.md); ProfileError naming what is
    wrong in a file that is not one."""
    if not isinstance(data, dict):
        raise ProfileError("expected a JSON object")
    model, types = data.get("model"), data.get("types")
    if not isinstance(model, str) or not model:
        raise ProfileError("model: expected a non-empty string")
    if not isinstance(types, dict) or not types:
        raise ProfileError("types: expected an object of instance type -> {batch, mean, quantiles}")
    if data.get("unit", "ms") != "ms":
        raise ProfileError(f"unit: expected \"ms\", got {data.get('unit')!r}")
    levels = _floats(data.get("quantile_levels"), "quantile_levels")
    if levels.ndim != 1 or len(levels) < 2 or levels[0] != 0.0 or levels[-1] != 1.0 or np.any(np.diff(levels) <= 0):
        raise ProfileError("quantile_levels: expected increasing levels from 0 to 1")
    out = []
    for type_name, body in types.items():
        where = f"types.{type_name}"
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: expected an object with batch, mean and quantiles")
        batches = _floats(body.get("batch"), f"{where}.batch")
        means = _floats(body.get("mean"), f"{where}.mean")
        quantiles = _floats(body.get("quantiles"), f"{where}.quantiles")
        if batches.ndim != 1 or not len(batches) or batches[0] < 1 or np.any(np.diff(batches) <= 0):
            raise ProfileError(f"{where}.batch: expected increasing batch sizes from 1 up")
        if batches[-1] > MAX_BATCH_SIZE or np.any(batches != np.round(batches)):
            raise ProfileError(f"{where}.batch: expected whole batch sizes of at most {MAX_BATCH_SIZE:,}")
        if means.shape != batches.shape or np.any(means < MIN_SERVICE_MS):
            # Below a microsecond a replica's capacity is beyond what the planner's solver tells
            # from none: a load of 10 q/s got a plan that served nothing.
            raise ProfileError(f"{where}.mean: expected one mean of at least {MIN_SERVICE_MS:g} ms per batch size")
        if quantiles.shape != (len(batches), len(levels)) or np.any(np.diff(quantiles, axis=1) < 0):
            raise ProfileError(
                f"{where}.quantiles: expected one non-decreasing row of {len(levels)} values per batch size"
            )
        if np.any(quantiles < 0):
            raise ProfileError(f"{where}.quantiles: expected service times >= 0 ms")
        # Levels 0 and 1 are the least and the greatest time seen: a mean lies between them.
        slack = 1e-6 * quantiles[:, -1] + 1e-9
        outside = np.flatnonzero((means < quantiles[:, 0] - slack) | (means > quantiles[:, -1] + slack))
        if outside.size:
            i = int(outside[0])
            raise ProfileError(
                f"{where}.mean: batch {batches[i]:g} has mean {means[i]:g} ms outside its quantiles' range "
                f"[{quantiles[i, 0]:g}, {quantiles[i, -1]:g}] ms"
            )
        out.append(LatencyProfile(model, str(type_name), batches, means, levels, quantiles))
    return out


def _floats(value: Any, where: str) -> np.ndarray:
    if not _numbers(value):  # numpy reads "1.5" and true as numbers
        raise ProfileError(f"{where}: expected numbers")
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: expected numbers") from None
    if not np.all(np.isfinite(array)):
        raise ProfileError(f"{where}: expected finite numbers")
    return array


def _numbers(value: Any) -> bool:
    """JSON numbers, or (nested) lists of them."""
    if isinstance(value, list):
        return all(_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_profile_file(path: Path) -> list[LatencyProfile]:
    try:
        return parse_profile_file(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not JSON: {exc}") from None
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def load_profiles(path: Path | None = None) -> ProfileSet:
    """The profiles in ``path``: one profile file, or every ``*.json`` in a directory
    (default: the shipped ones)."""
    path = path or PROFILE_DIR
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    if not files:
        raise ProfileError(f"no profile files (*.json) in {path}")
    profiles: dict[tuple[str, str], LatencyProfile] = {}
    for file in files:
        for p in load_profile_file(file):
            profiles[(p.model, p.instance_type)] = p
    return ProfileSet(profiles)
