"""Faro's setting: ten jobs share a capped cluster of 1-CPU replicas; plan every minute of the real
6-hour trace for its (known) next-minute load, then serve that minute in the simulator.

Policies: the planner's three utility objectives (total: fewest requests over target; fair: the
worst job's share; mix: half each), and two splits of the cap: FairShare (cap // 10 replicas per
job, as Faro's configs) and a proportional split (the cap split by each job's known next-minute
load: an oracle's split, not Oneshot, which reacts to what it measured).
Each simulated minute serves exactly the minute's requests (exponential gaps) on the job's
replicas, in one of two ways: ``gateway``, the gateway's dispatcher as it runs (policy kairos,
one queue per job, an instance takes a query when free, late queries shed at once); or
``faro-queue``, Faro's serving as its simulator models it (first come first served, a replica
holds up to 4 requests, a job's queue holds 50 and refuses past it, late requests served late).
A request refused, shed or answered after 720 ms is over target. Minutes are simulated apart (no queue carries over), every
``stride``-th one. Service time: Faro's simulator's shifted log-normal (79.3 ms + lognormal with
scale 68.6 ms, shape 0.422; mean 154 ms), read from its repository.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from allocator.planner.plan import make_plan
from allocator.planner.request import parse_plan_request
from benchmarks.faro_trace import load_trace
from gateway.dispatch import OverloadControl
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.sim.engine import simulate
from gateway.workload import QueryTrace

SLO_MS = 720.0
TYPE = "cpu-1"
SHIFT_MS, SCALE_MS, SHAPE = 79.30158, 68.58079, 0.42247119
LEVELS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0]
OBJECTIVES = {"total": 0.0, "mix": 0.5, "fair": 1.0}


def service_quantiles() -> list[float]:
    z = stats.norm.ppf(np.clip(LEVELS, 1e-5, 1 - 1e-5))
    return (SHIFT_MS + SCALE_MS * np.exp(SHAPE * z)).tolist()


def service_mean_ms() -> float:
    return SHIFT_MS + SCALE_MS * math.exp(SHAPE * SHAPE / 2)


def profiles(jobs: Sequence[str]) -> ProfileSet:
    q = np.array([service_quantiles()])
    return ProfileSet({(j, TYPE): LatencyProfile(j, TYPE, np.array([1.0]), np.array([service_mean_ms()]),
                                                  np.array(LEVELS), q) for j in jobs})


def plan_request(jobs: Sequence[str], rates: np.ndarray, cap: int, fairness: float) -> dict[str, Any]:
    body = {"batch": [1], "mean": [service_mean_ms()], "quantiles": [service_quantiles()]}
    return {
        "types": [{"name": TYPE, "price_per_hour": 0.04, "available": cap}],
        "models": [{"name": j, "batch_mix": "fixed:1",
                    "profiles": {"quantile_levels": LEVELS, "types": {TYPE: body}},
                    "classes": [{"name": "slo", "target_ms": SLO_MS}], "load": float(r)}
                   for j, r in zip(jobs, rates, strict=True)],
        "objective": {"kind": "utility", "fairness": fairness},
        "max_utilisation": 1.0,
    }


def planner_split(fairness: float) -> Callable[[Sequence[str], np.ndarray, int], np.ndarray]:
    def split(jobs: Sequence[str], rates: np.ndarray, cap: int) -> np.ndarray:
        plan = make_plan(parse_plan_request(plan_request(jobs, rates, cap, fairness), ProfileSet()))
        return np.array([plan.count(j, TYPE) for j in jobs])
    return split


def fair_share(jobs: Sequence[str], rates: np.ndarray, cap: int) -> np.ndarray:
    return np.full(len(jobs), cap // len(jobs))


def proportional(jobs: Sequence[str], rates: np.ndarray, cap: int) -> np.ndarray:
    """The cap split by load (largest remainders), at least one replica each."""
    share = cap * rates / max(rates.sum(), 1e-9)
    n = np.maximum(np.floor(share).astype(int), 1)
    order = np.argsort(-(share - np.floor(share)))
    for j in order:
        if n.sum() >= cap:
            break
        n[j] += 1
    while n.sum() > cap:
        n[np.argmax(n)] -= 1
    return n


POLICIES: dict[str, Callable[[Sequence[str], np.ndarray, int], np.ndarray]] = {
    **{f"planner-{name}": planner_split(f) for name, f in OBJECTIVES.items()},
    "fairshare": fair_share,
    "proportional": proportional,
}


@dataclass(frozen=True)
class MinuteResult:
    minute: int
    replicas: np.ndarray  # (jobs,)
    requests: np.ndarray  # (jobs,)
    over: np.ndarray  # (jobs,) requests over target (drops included)


SERVING = ("gateway", "faro-queue")


def serve_minute(jobs: Sequence[str], counts: np.ndarray, replicas: np.ndarray, minute: int, seed: int,
                 profile_set: ProfileSet, serving: str = "gateway") -> np.ndarray:
    over = np.zeros(len(jobs), dtype=np.int64)
    for j, (job, c, n) in enumerate(zip(jobs, counts, replicas, strict=True)):
        if c == 0:
            continue
        if n == 0:
            over[j] = c
            continue
        rng = np.random.default_rng([seed, minute, j])
        trace = QueryTrace(np.sort(rng.uniform(0.0, 60_000.0, int(c))), np.ones(int(c), dtype=np.int64))
        if serving == "gateway":
            res = simulate(trace, model=job, qos_ms=SLO_MS, pool=((TYPE, int(n)),), policy="kairos", seed=seed + minute,
                           profiles=profile_set, warmup=0.0, overload=OverloadControl.for_mode("shed", SLO_MS))
        else:
            res = simulate(trace, model=job, qos_ms=SLO_MS, pool=((TYPE, int(n)),), policy="fcfs", seed=seed + minute,
                           profiles=profile_set, warmup=0.0, depth=4, max_pending=50)
        over[j] = int(c) - int(res.within_qos().sum())
    return over


def run_policy(policy: str, cap: int, stride: int, seed: int, minutes: int | None = None,
               progress: Callable[[str], None] | None = None, serving: str = "gateway") -> list[MinuteResult]:
    jobs, counts = load_trace()
    profile_set = profiles(jobs)
    split = POLICIES[policy]
    out = []
    last = counts.shape[0] if minutes is None else min(minutes, counts.shape[0])
    for t in range(0, last, stride):
        replicas = split(jobs, counts[t] / 60.0, cap)
        assert replicas.sum() <= cap, (policy, replicas)
        over = serve_minute(jobs, counts[t], replicas, t, seed, profile_set, serving)
        out.append(MinuteResult(t, replicas, counts[t].copy(), over))
        if progress and len(out) % 10 == 0:
            progress(f"faro {policy} cap {cap} ({serving}): minute {t + 1}/{last}")
    return out


def summarise(results: list[MinuteResult]) -> dict[str, float]:
    requests = np.array([r.requests for r in results], dtype=float)
    over = np.array([r.over for r in results], dtype=float)
    per_minute_job = np.where(requests > 0, over / np.maximum(requests, 1), 0.0)
    return {
        "over_target": float(over.sum() / requests.sum()),  # request-weighted
        "over_target_job_minute_mean": float(per_minute_job.mean()),  # the other averaging (Faro reports the first)
        "worst_job": float((over.sum(axis=0) / requests.sum(axis=0)).max()),
        "minutes": float(len(results)),
    }
