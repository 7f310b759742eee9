"""Value objects: a pool (instance counts by type) and a ranked candidate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Pool:
    """Instance counts by type; zero counts are dropped so equal pools compare equal."""

    counts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> Pool:
        return cls(tuple((t, int(n)) for t, n in counts.items() if n > 0))

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def count(self, type_name: str) -> int:
        return self.as_dict().get(type_name, 0)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.counts)

    def cost(self, prices: Mapping[str, float]) -> float:
        return sum(prices[t] * n for t, n in self.counts)

    def label(self) -> str:
        return " + ".join(f"{n} x {t}" for t, n in self.counts) or "(empty)"

    def spec(self) -> str:
        """``TYPE=N,TYPE=N``: the form ``kairos-sim --pool`` takes."""
        return ",".join(f"{t}={n}" for t, n in self.counts)


@dataclass(frozen=True, slots=True)
class Candidate:
    pool: Pool
    cost: float  # $/hour
    paper_bound: float  # QPS, the paper's estimate of the most the pool carries (allocator/bound.py)
    fluid_limit: float | None = None  # QPS, the LP limit (None: not computed)
    simulated_max_qps: float | None = None  # QPS, from kairos-sim --find-max (None: not validated)
    validation_error: str | None = None

    def with_fluid(self, limit: float) -> Candidate:
        return replace(self, fluid_limit=limit)

    def with_simulation(self, max_qps: float | None, error: str | None = None) -> Candidate:
        return replace(self, simulated_max_qps=max_qps, validation_error=error)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "counts": self.pool.as_dict(),
            "cost": round(self.cost, 4),
            "paper_bound": round(self.paper_bound, 3),
            "fluid_limit": None if self.fluid_limit is None else round(self.fluid_limit, 3),
        }
        if self.simulated_max_qps is not None or self.validation_error is not None:
            out["simulated_max_qps"] = (
                None if self.simulated_max_qps is None else round(self.simulated_max_qps, 3)
            )
        if self.validation_error is not None:
            out["validation_error"] = self.validation_error
        return out
