"""find-max: the highest arrival rate at which a pool keeps >= ``target`` of queries within QoS.

Every step replays the same seeded workload (same batch sizes, same service-time draws; the
arrival gaps of a rate r are those of rate 1 scaled by 1/r, or drawn at r for arrivals whose gaps
do not scale, the paper's integer-ms Poisson gaps), so the steps differ only in the rate. A step passes when the measured queries (all but the first ``warmup`` fraction of
arrivals: the pool starts empty) *and* the last quarter of them each reach the target: a rate
above capacity makes the queue grow without bound, which the last quarter shows first. A step
stops as soon as it can no longer pass.

Search: from a first guess (the pool's capacity on the whole mix, or ``start_qps``), step up or
down by ``BRACKET_FACTOR`` until one rate passes and one fails, then bisect until the two are
within ``resolution`` (relative) of each other. ``max_qps`` is the highest rate that passed.
When the guess fails, a negligible load (``FLOOR_FRACTION`` of it) is tried first: if even that
fails, the policy cannot meet the target on this pool at any rate (for example, it sends queries
to instances whose service time alone exceeds the QoS) and ``max_qps`` is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ConfigError
from gateway.policies import Policy
from gateway.profiles import ProfileSet
from gateway.sim.engine import DEFAULT_WARMUP, default_profiles, simulate
from gateway.sim.pool import PoolSpec
from gateway.sim.result import SimResult
from gateway.variants import split_kind
from gateway.workload import BatchMix, ProductionMix, QueryTrace, make_workload
from gateway.workload.arrivals import parse_arrivals

DEFAULT_QUERIES = 20_000
DEFAULT_TARGET = 0.99
DEFAULT_RESOLUTION = 0.01  # relative width of the final bracket
BRACKET_FACTOR = 1.5
FLOOR_FRACTION = 1e-3  # a rate this far below the guess is a negligible load: if it fails, nothing passes
MAX_STEPS = 40


@dataclass(frozen=True, slots=True)
class Step:
    rate: float
    within_qos: float
    within_qos_last_quarter: float
    passed: bool
    stopped_early: bool
    wall_s: float
    completed: float = 1.0  # fraction of the run's queries completed (below 1 when stopped early)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 4),
            "within_qos": round(self.within_qos, 5),
            "within_qos_last_quarter": round(self.within_qos_last_quarter, 5),
            "passed": self.passed,
            "stopped_early": self.stopped_early,
            "completed": round(self.completed, 4),
            "wall_s": round(self.wall_s, 3),
        }


@dataclass(frozen=True)
class FindMaxResult:
    max_qps: float  # 0.0 when no rate tried passed
    policy: str
    model: str
    qos_ms: float
    pool: PoolSpec
    queries: int  # per step
    seed: int
    target: float
    arrivals: str
    batch_mix: str
    depth: int
    warmup: float
    resolution: float
    steps: tuple[Step, ...] = field(default_factory=tuple)
    at_max: SimResult | None = None  # the run at max_qps

    def to_json(self) -> dict[str, Any]:
        return {
            "max_qps": round(self.max_qps, 3),
            "policy": self.policy,
            "model": self.model,
            "qos_ms": self.qos_ms,
            "pool": {t: n for t, n in self.pool},
            "queries_per_step": self.queries,
            "seed": self.seed,
            "target": self.target,
            "arrivals": self.arrivals,
            "batch_mix": self.batch_mix,
            "depth": self.depth,
            "warmup_fraction": self.warmup,
            "resolution": self.resolution,
            "criterion": (
                f">= {self.target:g} of the measured queries (after a {self.warmup:g} warm-up fraction) "
                "and of their last quarter within QoS"
            ),
            "steps": [s.to_json() for s in self.steps],
            "at_max": self.at_max.summary() if self.at_max is not None else None,
        }


def capacity_guess(profiles: ProfileSet, model: str, pool: PoolSpec, mix: BatchMix) -> float:
    """Queries/s the pool would serve if every instance took the whole mix (a first guess only)."""
    sizes, probs = mix.pmf()
    total = 0.0
    for t, n in pool:
        if n > 0:
            mean_ms = float(probs @ profiles.get(*split_kind(model, t)).means_for(sizes))  # t may be variant/type
            total += n * 1000.0 / mean_ms
    return total


def _scaled(base: QueryTrace, base_rate: float, rate: float) -> QueryTrace:
    return QueryTrace(arrival_ms=base.arrival_ms * (base_rate / rate), batch=base.batch)


def find_max(
    *,
    model: str,
    qos_ms: float,
    pool: PoolSpec,
    policy: str | Callable[[], Policy] = "kairos",
    queries: int = DEFAULT_QUERIES,
    seed: int = 0,
    target: float = DEFAULT_TARGET,
    arrivals: str = "poisson",
    mix: BatchMix | None = None,
    trace: QueryTrace | None = None,
    depth: int = 1,
    resolution: float = DEFAULT_RESOLUTION,
    warmup: float = DEFAULT_WARMUP,
    start_qps: float | None = None,
    profiles: ProfileSet | None = None,
    progress: Callable[[Step], None] | None = None,
    transport_ms: float = 0.0,
    pipeline: bool = False,
    transport_p99_ms: float | None = None,
) -> FindMaxResult:
    """Search the highest rate meeting ``target``. ``policy``: a registered name or a factory of
    fresh Policy objects. ``trace``: replay its batches and arrival pattern, time-scaled to each
    rate (``arrivals`` and ``mix`` are then ignored; ``queries`` is the trace's length)."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target: expected a fraction in (0, 1], got {target}")
    if not 0.0 < resolution < 1.0:
        raise ConfigError(f"resolution: expected a relative width in (0, 1), got {resolution}")
    if queries < 100 and trace is None:
        raise ConfigError(f"queries per step: expected >= 100, got {queries}")
    profiles = profiles or default_profiles()
    mix = mix or ProductionMix()
    if trace is not None:
        base = trace
        base_rate = (len(trace) - 1) * 1000.0 / max(trace.duration_ms - float(trace.arrival_ms[0]), 1e-9)
        mix_name, arrivals_name = "trace", "trace"
    else:
        base_rate = 1.0
        base = make_workload(parse_arrivals(arrivals, base_rate), mix, queries, seed)
        mix_name, arrivals_name = _mix_name(mix), arrivals

    results: dict[float, SimResult] = {}
    steps: list[Step] = []

    redraw = trace is None and not parse_arrivals(arrivals, base_rate).scale_invariant

    def workload(rate: float) -> QueryTrace:
        """The step's queries: the base scaled in time, or drawn at the rate (the same batches) for
        arrivals whose gaps do not scale."""
        if redraw:
            return make_workload(parse_arrivals(arrivals, rate), mix, queries, seed)
        return _scaled(base, base_rate, rate)

    def run(rate: float) -> bool:
        pol = policy if isinstance(policy, str) else policy()
        res = simulate(
            workload(rate), model=model, qos_ms=qos_ms, pool=pool, policy=pol, seed=seed,
            depth=depth, profiles=profiles, warmup=warmup, stop_below=target,
            transport_ms=transport_ms, pipeline=pipeline, transport_p99_ms=transport_p99_ms,
        )
        ok = res.meets(target)
        step = Step(rate, res.attainment, res.tail_attainment, ok, res.stopped_early, res.wall_s, res.completed_fraction)
        steps.append(step)
        if progress is not None:
            progress(step)
        if ok:
            results[rate] = res
        return ok

    guess = start_qps or max(capacity_guess(profiles, model, pool, mix), 1e-3)
    lo: float | None = None
    hi: float | None = None
    rate = guess
    if run(rate):
        lo = rate
        while hi is None and len(steps) < MAX_STEPS:
            rate *= BRACKET_FACTOR
            if run(rate):
                lo = rate
            else:
                hi = rate
    elif run(guess * FLOOR_FRACTION):
        # The pool meets the target at a negligible load: step down from the guess to find it.
        hi = rate
        while lo is None and len(steps) < MAX_STEPS:
            rate /= BRACKET_FACTOR
            if run(rate):
                lo = rate
            else:
                hi = rate
    while lo is not None and hi is not None and hi - lo > resolution * lo and len(steps) < MAX_STEPS:
        mid = 0.5 * (lo + hi)
        if run(mid):
            lo = mid
        else:
            hi = mid
    name = policy if isinstance(policy, str) else (steps and results and next(iter(results.values())).policy) or "custom"
    return FindMaxResult(
        max_qps=lo or 0.0,
        policy=str(name),
        model=model,
        qos_ms=float(qos_ms),
        pool=tuple(pool),
        queries=len(base),
        seed=seed,
        target=target,
        arrivals=arrivals_name,
        batch_mix=mix_name,
        depth=depth,
        warmup=warmup,
        resolution=resolution,
        steps=tuple(steps),
        at_max=results.get(lo) if lo is not None else None,
    )


def _mix_name(mix: BatchMix) -> str:
    if mix.name == "fixed":
        return f"fixed:{getattr(mix, 'batch', '?')}"
    if mix.name == "uniform":
        return f"uniform:{getattr(mix, 'low', '?')}-{getattr(mix, 'high', '?')}"
    return mix.name



