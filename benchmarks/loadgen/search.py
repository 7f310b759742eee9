"""``find_max``: the highest rate at which >= ``target`` of the queries are answered within QoS.

Each step is one open-loop run at a fixed rate with the same seed (common random numbers: every
step sends the same batch sizes in the same order, only the gaps scale), ``step_queries`` queries
(or ``step_duration_s`` worth at that rate, at least ``min_step_queries``). A step passes when
within_qos / sent >= target, errors counting as misses. A step stops early once it has more
misses than the target allows (its verdict cannot change) and in-flight queries are cancelled.
Between steps the search pauses ``pause_s`` so the system's queues drain.

Search: bracket from ``start_qps`` (doubling up while steps pass, halving down while they fail),
then bisect until (hi - lo) / hi <= ``resolution``. ``max_qps`` is the highest passing rate
(0 if none passed down to ``min_qps``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.loadgen.config import LoadConfig
from benchmarks.loadgen.report import SCHEMA, LoadReport
from benchmarks.loadgen.runner import run_load
from gateway.errors import ConfigError


@dataclass(frozen=True)
class FindMaxStep:
    rate_qps: float
    passed: bool
    report: LoadReport

    def to_json(self) -> dict[str, Any]:
        r = self.report
        lat = r.latency_ms or {}
        lag = r.send_lag_ms or {}
        return {
            "rate_qps": round(self.rate_qps, 3),
            "passed": self.passed,
            "queries": r.scheduled,
            "sent": r.sent,
            "within_qos_pct": round(r.within_qos_pct, 4),
            "p99_ms": None if "p99" not in lat else round(lat["p99"], 3),
            "achieved_qps": round(r.achieved_qps, 3),
            "errors": r.error_count,
            "aborted": r.aborted,
            "max_send_lag_ms": None if "max" not in lag else round(lag["max"], 3),
        }


@dataclass(frozen=True)
class FindMaxResult:
    max_qps: float
    target: float
    step_queries: int | None
    step_duration_s: float | None
    resolution: float
    pause_s: float
    steps: tuple[FindMaxStep, ...]

    @property
    def best(self) -> FindMaxStep | None:
        passing = [s for s in self.steps if s.passed and s.rate_qps == self.max_qps]
        return passing[-1] if passing else None

    def step_rule(self) -> str:
        if self.step_duration_s is not None:
            return f"{self.step_duration_s:g} s of arrivals per step"
        return f"{self.step_queries} queries per step"

    def to_json(self, config: LoadConfig | None = None) -> dict[str, Any]:
        best = self.best
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "mode": "find_max",
            "max_qps": round(self.max_qps, 3),
            "target_pct": round(100.0 * self.target, 4),
            "criterion": f">= {100 * self.target:g}% of sent queries answered within QoS (errors count as misses)",
            "step_queries": self.step_queries,
            "step_duration_s": self.step_duration_s,
            "resolution": self.resolution,
            "pause_s": self.pause_s,
            "steps": [s.to_json() for s in self.steps],
            "best": None if best is None else best.report.to_json(),
        }
        if config is not None:
            out["model"] = config.model
            out["qos_ms"] = config.qos_ms
            out["url"] = config.url
            out["arrivals"] = config.arrivals
        return out


async def search_rates(
    step: Callable[[float], Awaitable[bool]],
    first: float,
    *,
    resolution: float,
    min_qps: float,
    max_qps: float,
    max_steps: int,
) -> float:
    """The search of ``find_max`` over any step (``step(rate)``: did that rate pass?): the
    highest passing rate, 0 if none passed. The live check runs the simulator through it on the
    same rates and queries as a live search."""
    taken = 0

    async def run(rate: float) -> bool:
        nonlocal taken
        taken += 1
        return await step(rate)

    lo, hi = 0.0, math.inf
    rate = first
    if await run(rate):
        lo = rate
        while taken < max_steps and rate * 2 <= max_qps:
            rate *= 2
            if not await run(rate):
                hi = rate
                break
            lo = rate
    else:
        hi = rate
        while taken < max_steps and rate / 2 >= min_qps:
            rate /= 2
            if await run(rate):
                lo = rate
                break
            hi = rate
    if lo > 0 and math.isfinite(hi):
        while taken < max_steps and (hi - lo) / hi > resolution:
            mid = (lo + hi) / 2
            if await run(mid):
                lo = mid
            else:
                hi = mid
    return lo


async def find_max(
    config: LoadConfig,
    *,
    target: float = 0.99,
    start_qps: float | None = None,
    step_queries: int = 2000,
    step_duration_s: float | None = None,
    min_step_queries: int = 500,
    resolution: float = 0.05,
    pause_s: float = 1.0,
    min_qps: float = 1.0,
    max_qps: float = 1e6,
    max_steps: int = 24,
    early_stop: bool = True,
    on_step: Callable[[FindMaxStep], None] | None = None,
) -> FindMaxResult:
    """Search for the highest rate meeting ``target`` (module docstring). ``config`` supplies the
    URL, model, QoS, seed, arrival kind and batch mix; its rate (or ``start_qps``) is the first
    guess; its duration/queries/ramp/trace are not used."""
    if not 0 < target <= 1:
        raise ConfigError(f"--target {target:g}: expected a fraction in (0, 1], e.g. 0.99")
    if not 0 < resolution < 1:
        raise ConfigError(f"--resolution {resolution:g}: expected a fraction in (0, 1), e.g. 0.05")
    if not (math.isfinite(min_qps) and min_qps > 0):
        raise ConfigError(f"--min-rate {min_qps:g}: expected a positive rate")
    if step_queries < 1 or (step_duration_s is not None and not step_duration_s > 0):
        raise ConfigError("--step-queries / --step-duration: expected positive values")
    if config.ramp is not None or config.trace is not None:
        raise ConfigError("--find-max searches over constant-rate steps; it takes no --ramp or --trace")
    first = start_qps if start_qps is not None else config.rate if config.rate is not None else 100.0
    if not first > 0:
        raise ConfigError(f"--rate {first:g}: expected a positive starting rate for the search")
    base = replace(config, duration_s=None, queries=step_queries, rate=first).validate()
    steps: list[FindMaxStep] = []

    async def step(rate: float) -> bool:
        if steps and pause_s > 0:
            await asyncio.sleep(pause_s)
        n = step_queries
        if step_duration_s is not None:
            n = max(min_step_queries, math.ceil(rate * step_duration_s))
        allowed = math.floor((1.0 - target) * n + 1e-9)
        report = await run_load(
            replace(base, rate=rate, queries=n),
            abort_after_violations=allowed if early_stop else None,
        )
        passed = not report.aborted and report.sent == n and report.within_qos >= math.ceil(target * n - 1e-9)
        s = FindMaxStep(rate, passed, report)
        steps.append(s)
        if on_step is not None:
            on_step(s)
        return passed

    lo = await search_rates(
        step, first, resolution=resolution, min_qps=min_qps, max_qps=max_qps, max_steps=max_steps
    )
    return FindMaxResult(
        max_qps=lo,
        target=target,
        step_queries=None if step_duration_s is not None else step_queries,
        step_duration_s=step_duration_s,
        resolution=resolution,
        pause_s=pause_s,
        steps=tuple(steps),
    )
