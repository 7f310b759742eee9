"""Latency profile API: interpolate, sample, and read mean and tail of a service time.

A profile holds, for one (model, instance type), a batch-size grid and at each grid point the
mean service time and a table of quantiles. Between grid points everything is interpolated
linearly in batch size; below the first grid point the first point's values hold (a latency
floor, never extrapolated downwards); above the last point is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from gateway.errors import ProfileError

PROFILE_DIR = Path(__file__).parent / "data" / "profiles"


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
        batches = np.asarray(batches)
        self._check_many(batches)
        at_level = np.array([np.interp(q, self.levels, row) for row in self.quantiles])
        return np.interp(batches, self.batches, at_level)

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

    def models(self) -> list[str]:
        return sorted({m for m, _ in self.profiles})

    def types(self, model: str) -> list[str]:
        return sorted(t for m, t in self.profiles if m == model)


def parse_profile_file(data: dict[str, object]) -> list[LatencyProfile]:
    model = str(data["model"])
    levels = np.asarray(data["quantile_levels"], dtype=float)
    types = data["types"]
    assert isinstance(types, dict)
    out = []
    for type_name, body in types.items():
        out.append(
            LatencyProfile(
                model=model,
                instance_type=type_name,
                batches=np.asarray(body["batch"], dtype=float),
                means=np.asarray(body["mean"], dtype=float),
                levels=levels,
                quantiles=np.asarray(body["quantiles"], dtype=float),
                unit=str(data.get("unit", "ms")),
            )
        )
    return out


def load_profiles(directory: Path | None = None) -> ProfileSet:
    """Load every ``<model>.json`` profile file in ``directory`` (default: the shipped ones)."""
    directory = directory or PROFILE_DIR
    profiles: dict[tuple[str, str], LatencyProfile] = {}
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ProfileError(f"no profile files (*.json) in {directory}")
    for path in files:
        for p in parse_profile_file(orjson.loads(path.read_bytes())):
            profiles[(p.model, p.instance_type)] = p
    return ProfileSet(profiles)
