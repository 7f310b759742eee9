"""What one simulated run produced: per-query outcomes and the summaries users read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.config import ServiceClass
from gateway.variants import split_kind

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
TAIL_FRACTION = 0.25  # the stability check looks at the last quarter of the measured queries


@dataclass(frozen=True, eq=False)
class SimResult:
    """One run of the simulator.

    Per-query arrays are indexed by query id (arrival order). A query that had not completed when
    the run stopped early has ``end_ms`` = NaN and ``instance`` = -1. Summaries are computed over the
    *measured* queries: those after the warm-up (the first ``warmup`` fraction of arrivals, when
    the pool starts empty and flatters the result). Unfinished measured queries count as misses.
    """

    policy: str
    model: str
    qos_ms: float
    pool: tuple[tuple[str, int], ...]
    seed: int
    depth: int
    warmup: float
    arrival_ms: np.ndarray  # (n,)
    batch: np.ndarray  # (n,)
    start_ms: np.ndarray  # (n,) when dispatched (NaN if never)
    end_ms: np.ndarray  # (n,) when completed (NaN if never)
    instance: np.ndarray  # (n,) index of the instance that served the query, -1 if none
    instance_names: tuple[str, ...]
    instance_types: tuple[str, ...]
    busy_ms: np.ndarray  # (N,) summed service time per instance
    decisions: int  # policy calls
    stopped_early: bool  # the run stopped once the target could no longer be met
    wall_s: float
    # (n,) refused at admission, and shed while queued (``OverloadControl``); empty: none were.
    refused: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    shed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # Service classes: each query's class index and target; empty: every query has ``qos_ms``.
    classes: tuple[ServiceClass, ...] = ()
    query_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    qos_per_query: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Variants: the accuracy of each variant in the pool (by name); empty: none given.
    accuracy: dict[str, float] = field(default_factory=dict)

    # -- per query ------------------------------------------------------------------------------

    @property
    def n_queries(self) -> int:
        return len(self.arrival_ms)

    @property
    def latency_ms(self) -> np.ndarray:
        """End-to-end latency (completion - arrival), NaN for queries that never completed."""
        return self.end_ms - self.arrival_ms

    @property
    def first_measured(self) -> int:
        return min(int(np.ceil(self.warmup * self.n_queries)), self.n_queries - 1)

    @property
    def measured(self) -> slice:
        return slice(self.first_measured, self.n_queries)

    def within_qos(self) -> np.ndarray:
        """(n,) bool: completed with latency <= its QoS (its class's target)."""
        lat = self.latency_ms
        qos = self.qos_per_query if self.qos_per_query.size else self.qos_ms
        return np.isfinite(lat) & (lat <= qos)

    def accuracy_of_queries(self) -> np.ndarray:
        """(n,) accuracy of the variant that served each query; NaN where none did (or none given)."""
        out = np.full(self.n_queries, np.nan)
        if not self.accuracy:
            return out
        variants = [split_kind(self.model, t)[0] for t in self.instance_types]
        per_instance = np.array([self.accuracy.get(v, np.nan) for v in variants])
        served = self.instance >= 0
        out[served] = per_instance[self.instance[served]]
        return out

    def accuracy_served(self, mask: np.ndarray | None = None) -> float:
        """Query-weighted accuracy over the measured queries served (``mask``: of those, which)."""
        acc = self.accuracy_of_queries()[self.measured]
        if mask is not None:
            acc = acc[mask]
        acc = acc[np.isfinite(acc)]
        return float(acc.mean()) if acc.size else float("nan")

    def class_summary(self) -> dict[str, dict[str, float]]:
        """Per class, over its measured queries: how many, the fraction refused or shed, within
        target of all and of those accepted (not refused: a shed query was accepted, and missed,
        as ``accepted_attainment`` counts it)."""
        out: dict[str, dict[str, float]] = {}
        m = self.measured
        ok = self.within_qos()[m]
        dropped = (self.refused | self.shed)[m] if self.refused.size else np.zeros_like(ok)
        for k, c in enumerate(self.classes):
            mine = self.query_class[m] == k
            n = int(mine.sum())
            accepted = mine & ~self.refused[m] if self.refused.size else mine
            out[c.name] = {
                "queries": n,
                "target_ms": c.qos_ms,
                "priority": c.priority,
                "refused_or_shed": float(dropped[mine].mean()) if n else float("nan"),
                "within_target": float(ok[mine].mean()) if n else float("nan"),
                "within_target_of_accepted": float(ok[accepted].mean()) if accepted.any() else float("nan"),
                **({"accuracy_served": self.accuracy_served(mine)} if self.accuracy else {}),
            }
        return out

    # -- summaries ------------------------------------------------------------------------------

    @property
    def attainment(self) -> float:
        """Fraction of measured queries within QoS."""
        return float(self.within_qos()[self.measured].mean())

    @property
    def accepted_attainment(self) -> float:
        """Fraction of the measured queries admitted (not refused) that were within QoS: what the
        gateway promises under overload control."""
        ok = self.within_qos()[self.measured]
        if not self.refused.size:
            return float(ok.mean())
        accepted = ~self.refused[self.measured]
        return float(ok[accepted].mean()) if accepted.any() else float("nan")

    @property
    def tail_attainment(self) -> float:
        """Fraction within QoS over the last quarter of the measured queries: a queue that grows
        without bound (a rate above capacity) shows there first."""
        ok = self.within_qos()[self.measured]
        return float(ok[len(ok) - max(int(len(ok) * TAIL_FRACTION), 1) :].mean())

    def meets(self, target: float) -> bool:
        """The find-max criterion: the whole measured window and its last quarter both reach ``target``."""
        return not self.stopped_early and self.attainment >= target and self.tail_attainment >= target

    def percentiles(self) -> dict[str, float]:
        """Latency percentiles of the measured queries (of those served, when some were refused
        or shed: those have no latency)."""
        lat = self.latency_ms[self.measured]
        if self.refused.size:
            lat = lat[~(self.refused | self.shed)[self.measured]]
            if not lat.size:
                return {**{f"p{p:g}": float("nan") for p in PERCENTILES}, "max": float("nan"), "mean": float("nan")}
        lat = np.where(np.isfinite(lat), lat, np.inf)  # an unfinished query is slower than any finished one
        # interpolating between two unfinished (inf) queries gives NaN: those percentiles are inf
        with np.errstate(invalid="ignore"):
            out = {f"p{p:g}": float(np.nan_to_num(np.percentile(lat, p), nan=np.inf)) for p in PERCENTILES}
        out["max"] = float(lat.max())
        out["mean"] = float(lat.mean())
        return out

    @property
    def completed_fraction(self) -> float:
        return float(np.isfinite(self.end_ms).mean())

    @property
    def makespan_ms(self) -> float:
        """From the first arrival to the last completion."""
        done = self.end_ms[np.isfinite(self.end_ms)]
        if not done.size:
            return 0.0
        return float(done.max() - self.arrival_ms[0])

    @property
    def offered_qps(self) -> float:
        span = float(self.arrival_ms[-1] - self.arrival_ms[0])
        return (self.n_queries - 1) * 1000.0 / span if span > 0 else float("inf")

    @property
    def achieved_qps(self) -> float:
        """Completed queries per second over the makespan."""
        span = self.makespan_ms
        done = int(np.isfinite(self.end_ms).sum())
        return done * 1000.0 / span if span > 0 else float("inf")

    def share(self) -> np.ndarray:
        """(N,) fraction of the completed queries each instance served."""
        served = np.bincount(self.instance[self.instance >= 0], minlength=len(self.instance_names))
        return served / max(int(served.sum()), 1)

    def busy_fraction(self) -> np.ndarray:
        """(N,) fraction of the makespan each instance spent serving."""
        span = self.makespan_ms
        return self.busy_ms / span if span > 0 else np.zeros_like(self.busy_ms)

    def type_share(self) -> dict[str, float]:
        share = self.share()
        out: dict[str, float] = {}
        for t, s in zip(self.instance_types, share, strict=True):
            out[t] = out.get(t, 0.0) + float(s)
        return out

    def type_mean_batch(self) -> dict[str, float]:
        """Mean batch size of the queries each type served (where large queries went)."""
        types = np.asarray(self.instance_types)
        done = self.instance >= 0
        out = {}
        for t in dict.fromkeys(self.instance_types):
            m = done & np.isin(self.instance, np.flatnonzero(types == t))
            out[t] = float(self.batch[m].mean()) if m.any() else 0.0
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no per-query arrays)."""
        share, busy = self.share(), self.busy_fraction()
        return {
            "policy": self.policy,
            "model": self.model,
            "qos_ms": self.qos_ms,
            "pool": {t: n for t, n in self.pool},
            "seed": self.seed,
            "depth": self.depth,
            "queries": self.n_queries,
            "warmup_fraction": self.warmup,
            "measured_queries": self.n_queries - self.first_measured,
            "offered_qps": round(self.offered_qps, 3),
            "achieved_qps": round(self.achieved_qps, 3),
            "within_qos": round(self.attainment, 5),
            "within_qos_last_quarter": round(self.tail_attainment, 5),
            "latency_ms": {k: round(v, 3) for k, v in self.percentiles().items()},
            "stopped_early": self.stopped_early,
            **(
                {
                    "refused": int(self.refused.sum()),
                    "shed": int(self.shed.sum()),
                    "within_qos_of_accepted": round(self.accepted_attainment, 5),
                }
                if self.refused.size
                else {}
            ),
            **({"classes": self.class_summary()} if self.classes else {}),
            **({"accuracy_served": round(self.accuracy_served(), 5)} if self.accuracy else {}),
            "type_share": {k: round(v, 4) for k, v in self.type_share().items()},
            "type_mean_batch": {k: round(v, 1) for k, v in self.type_mean_batch().items()},
            "instances": [
                {"name": n, "type": t, "share": round(float(s), 4), "busy": round(float(b), 4)}
                for n, t, s, b in zip(self.instance_names, self.instance_types, share, busy, strict=True)
            ],
            "decisions": self.decisions,
            "wall_s": round(self.wall_s, 3),
        }
