"""Accuracy against cost on the shipped variant set (digits: random forests of 8, 64 and 512 trees,
accuracy and latency measured on this machine's type, dev-2vcpu).

For each load and cost weight the planner's plan (served accuracy, cost) is set against the best
single variant: *at equal cost* (the most accurate variant whose pool, at no more than the plan's
cost, carries the load) and *at equal accuracy* (the cheapest single-variant pool whose accuracy is
at least the plan's). Single-variant pools are sized with the planner's capacity model; every pool is
simulated (policy kairos, which prefers the accurate variant where a deadline allows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from allocator.planner.plan import make_plan
from allocator.planner.request import parse_plan_request
from benchmarks.planner.min_cost import carries
from gateway.config import ServiceClass
from gateway.profiles import ProfileSet
from gateway.profiles.variants import load_variant_set
from gateway.sim.engine import simulate
from gateway.variants import kind_of
from gateway.workload import make_workload, parse_batch_mix
from gateway.workload.arrivals import PoissonArrivals

TYPE = "dev-2vcpu"
PRICE = 0.0832
TARGET_MS = 100.0
MIX = "uniform:1-8"
LOADS = (50.0, 150.0, 400.0)
WEIGHTS = (0.002, 0.01, 0.05)  # accuracy points given up per $/hour


@dataclass(frozen=True)
class VariantRow:
    load: float
    weight: float
    plan: dict[str, int]  # variant -> instances
    cost: float
    accuracy: float  # simulated, served
    within: float  # simulated share within target
    equal_cost: tuple[str, float] | None  # best single variant at the plan's cost: (variant, accuracy)
    equal_accuracy: tuple[str, float] | None  # cheapest single variant at the plan's accuracy: (variant, cost)


def request(load: float, weight: float, variants: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    vs = load_variant_set("digits")
    chosen = variants or [(v.model, v.accuracy) for v in vs.variants]
    return {"types": [{"name": TYPE, "price_per_hour": PRICE}],
            "models": [{"name": "digits", "batch_mix": MIX,
                        "variants": [{"name": v, "accuracy": a} for v, a in chosen],
                        "classes": [{"name": "default", "target_ms": TARGET_MS}], "load": load}],
            "objective": {"kind": "accuracy", "cost_weight": weight}}


def single_variant_pools(load: float, profiles: ProfileSet) -> dict[str, tuple[int, float]]:
    """Per variant: the fewest instances that carry the load alone, and their accuracy."""
    out = {}
    for v in load_variant_set("digits").variants:
        req = parse_plan_request(request(load, 0.0, [(v.model, v.accuracy)]), profiles)
        n = next((k for k in range(1, 400) if carries(req, {TYPE: k})), None)
        if n is not None:
            out[v.model] = (n, v.accuracy)
    return out


def simulate_pool(load: float, pool: dict[str, int], seed: int, queries: int, profiles: ProfileSet) -> tuple[float, float]:
    """(accuracy served, share within target)."""
    accuracy = {v.model: v.accuracy for v in load_variant_set("digits").variants}
    trace = make_workload(PoissonArrivals(load), parse_batch_mix(MIX), queries, seed)
    res = simulate(trace, model="digits", qos_ms=TARGET_MS, pool=tuple((kind_of("digits", v, TYPE), n) for v, n in pool.items() if n),
                   policy="kairos", seed=seed, profiles=profiles, accuracy=accuracy,
                   classes=(ServiceClass("default", TARGET_MS),), query_class=np.zeros(queries, dtype=np.int64))
    return res.accuracy_served(), res.attainment


def run(seed: int = 0, queries: int = 10000, progress: Callable[[str], None] | None = None) -> list[VariantRow]:
    profiles = load_variant_set("digits").profiles
    rows = []
    for load in LOADS:
        singles = single_variant_pools(load, profiles)
        for weight in WEIGHTS:
            plan = make_plan(parse_plan_request(request(load, weight), profiles))
            pool = {a.variant: a.count for a in plan.allocations}
            accuracy, within = simulate_pool(load, pool, seed, queries, profiles)
            at_cost = [(v, acc) for v, (n, acc) in singles.items() if n * PRICE <= plan.cost_per_hour + 1e-9]
            at_acc = [(v, n * PRICE) for v, (n, acc) in singles.items() if acc >= accuracy - 1e-9]
            rows.append(VariantRow(load, weight, pool, plan.cost_per_hour, accuracy, within,
                                   max(at_cost, key=lambda x: x[1]) if at_cost else None,
                                   min(at_acc, key=lambda x: x[1]) if at_acc else None))
            if progress:
                progress(f"variants @ {load:g} qps, weight {weight:g}: {pool}")
    return rows
