"""Faro's setting for the control loop: ten jobs of 1-CPU replicas under a 32 or 36 CPU cap, each
minute's count of the 6-hour trace replayed as that many arrivals at uniform random times (Poisson
given the count, as Faro's simulator), 720 ms target, 35 s start-up, a removed replica's CPU held
30 s, Faro's shifted log-normal service time (``benchmarks.planner.faro``).

Two ways of serving a job's queue: ``faro-queue`` (Faro's: first come first served, up to 4
requests held per replica, a queue of 50 that refuses past it, late requests served late) and
``gateway`` (ours: the kairos dispatcher, one query per instance, late queries shed at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from allocator.autoscale.actuator import GroupKey
from allocator.autoscale.forecast import DEFAULT_FORECASTER, make_forecaster
from allocator.autoscale.planned import PlannedPolicy, RequestTemplate
from allocator.autoscale.policies import FairShare, ScalingPolicy, StaticPolicy, aiad, oneshot, ray_serve
from allocator.autoscale.simloop import GATEWAY, Serving, SimModel, SimSetting
from benchmarks.faro_trace import load_trace, spread_over_minutes
from benchmarks.planner.faro import LEVELS as SERVICE_LEVELS
from benchmarks.planner.faro import SLO_MS, TYPE, profiles, proportional, service_mean_ms, service_quantiles
from gateway.workload import QueryTrace

STARTUP_S = 35.0
RELEASE_S = 30.0
PRICE_PER_HOUR = 0.04  # one CPU's: only for reports, costs are not what this setting compares
SERVINGS = {"faro-queue": Serving(policy="fcfs", depth=4, max_pending=50, shed_late=False), "gateway": GATEWAY}
POLICIES = ("static-peak", "fairshare", "oneshot", "aiad", "ray-serve", "planned")


def minute_arrivals(counts: np.ndarray, seed: int, job: int) -> QueryTrace:
    """Each minute's count at uniform random times in that minute (seeded per job)."""
    arrival = spread_over_minutes(counts, np.random.default_rng([seed, 7, job]))
    return QueryTrace(arrival, np.ones(len(arrival), dtype=np.int64))


def faro_setting(cap: int, serving: str, seed: int, minutes: int | None = None) -> SimSetting:
    jobs, counts = load_trace()
    if minutes is not None:
        counts = counts[:minutes]
    models = tuple(SimModel(j, minute_arrivals(counts[:, k], seed, k), SLO_MS, (TYPE,)) for k, j in enumerate(jobs))
    return SimSetting(models, profiles(jobs), SERVINGS[serving], cap, {TYPE: STARTUP_S}, RELEASE_S, {TYPE: PRICE_PER_HOUR})


def profile_body() -> dict[str, Any]:
    """One type's profile of a job, as plan requests and config profile files hold it: batch 1 only."""
    return {"batch": [1], "mean": [service_mean_ms()], "quantiles": [service_quantiles()]}


def plan_template(jobs: Sequence[str], cap: int, fairness: float = 0.0, quantile: float = 0.9) -> RequestTemplate:
    body = profile_body()

    def template(loads: dict[str, Any], current: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "types": [{"name": TYPE, "price_per_hour": PRICE_PER_HOUR, "available": cap}],
            "models": [{"name": j, "batch_mix": "fixed:1",
                        "profiles": {"quantile_levels": SERVICE_LEVELS, "types": {TYPE: body}},
                        "classes": [{"name": "slo", "target_ms": SLO_MS}], "load": {"slo": loads[j]}}
                       for j in jobs],
            "objective": {"kind": "utility", "fairness": fairness, "load_quantile": quantile},
            "max_utilisation": 1.0,
            "current": current,
        }
    return template


def peak_split(cap: int) -> dict[GroupKey, int]:
    """The cap split by each job's peak minute (largest remainders), at least one each."""
    jobs, counts = load_trace()
    n = proportional(jobs, counts.max(axis=0).astype(float), cap)
    return {GroupKey(j, j, TYPE): int(c) for j, c in zip(jobs, n, strict=True)}


def make_policy(name: str, cap: int, forecaster: str = DEFAULT_FORECASTER, **params: Any) -> ScalingPolicy:
    jobs, _ = load_trace()
    if name == "static-peak":
        return StaticPolicy(peak_split(cap), "static-peak")
    if name == "fairshare":
        return FairShare()
    if name == "oneshot":
        return oneshot()
    if name == "aiad":
        return aiad()
    if name == "ray-serve":
        return ray_serve()
    if name == "planned":
        service = {GroupKey(j, j, TYPE): service_mean_ms() / 1000.0 for j in jobs}
        return PlannedPolicy(plan_template(jobs, cap), make_forecaster(forecaster), service, **params)
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
