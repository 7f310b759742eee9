"""Check the planner's capacity model against the simulator, which runs the gateway's own dispatcher.

    python -m benchmarks.planner.check [--requests 20] [--seed 0] [--queries 20000] [--json PATH]

Draws plan requests over the shipped models (rm2, wnd, mtwnd, dien, ncf on the paper's four types),
the shipped variant set (digits: three variants on dev-2vcpu), one or two service classes and loads
from light to heavy; plans each at the least cost (the variant set: accuracy against cost), then
simulates every model of the plan at its planned load (Poisson arrivals, the policy ``kairos``,
each query's class drawn by the class's share of the load). A plan *meets* its targets when every
class's share within target in simulation reaches its attainment. *Unused capacity*: 1 - load /
the highest load the same pool carries at the targets (the loads scaled together, bisection to 2%).
Prints one row per request and the two summary numbers; progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from allocator.planner.plan import Plan, make_plan
from allocator.planner.request import PlanRequest, parse_plan_request
from gateway.config import ServiceClass
from gateway.profiles import ProfileSet, load_catalogue, load_profiles
from gateway.profiles.variants import load_variant_set
from gateway.sim.engine import simulate
from gateway.variants import kind_of
from gateway.workload import FixedMix, UniformMix, make_workload, parse_batch_mix
from gateway.workload.arrivals import PoissonArrivals

PAPER_TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")
QOS = {"ncf": 5.0, "rm2": 350.0, "wnd": 25.0, "mtwnd": 25.0, "dien": 35.0}
# Loads (queries/s) of one r5n.large-sized share per model: the draws scale these.
REFERENCE_QPS = {"ncf": 60.0, "rm2": 10.0, "wnd": 40.0, "mtwnd": 30.0, "dien": 35.0}
DEV_TYPE_PRICE = 0.0832  # dev-2vcpu, priced as a 2-vCPU general-purpose instance
SEARCH_STEPS = 6


@dataclass(frozen=True)
class Case:
    name: str
    raw: dict[str, Any]


def draw_cases(n: int, seed: int) -> list[Case]:
    rng = np.random.default_rng([seed, 19])
    catalogue = load_catalogue()
    paper = [{"name": t, "price_per_hour": catalogue.type(t).price_per_hour, "accelerator": catalogue.type(t).accelerator}
             for t in PAPER_TYPES]
    cases = []
    for i in range(n):
        kind = i % 4
        if kind == 3:  # the variant set: accuracy against cost
            load = float(np.round(rng.uniform(50, 600), 1))
            target = float(rng.choice([30.0, 80.0, 150.0]))
            raw = {
                "types": [{"name": "dev-2vcpu", "price_per_hour": DEV_TYPE_PRICE}],
                "models": [{"name": "digits", "batch_mix": "uniform:1-16",
                            "variants": [{"name": f"digits-rf{t}", "accuracy": a} for t, a in
                                         ((8, 0.9389), (64, 0.9685), (512, 0.9759))],
                            "classes": [{"name": "default", "target_ms": target}], "load": load}],
                "objective": {"kind": "accuracy", "cost_weight": float(rng.choice([0.002, 0.01, 0.05]))},
            }
            cases.append(Case(f"digits@{load:g}qps/{target:g}ms", raw))
            continue
        model = str(rng.choice(list(QOS)))
        scale = float(rng.choice([1.0, 3.0, 8.0, 20.0, 40.0]))
        load = float(np.round(REFERENCE_QPS[model] * scale * rng.uniform(0.8, 1.2), 1))
        if kind == 2:  # two classes sharing the pool, the tighter one first
            classes = [{"name": "premium", "target_ms": QOS[model], "priority": 1},
                       {"name": "batch", "target_ms": 2 * QOS[model], "attainment": 0.95}]
            share = float(np.round(rng.uniform(0.2, 0.5), 2))
            loads = {"premium": round(load * share, 2), "batch": round(load * (1 - share), 2)}
        else:
            classes = [{"name": "default", "target_ms": QOS[model]}]
            loads = {"default": load}
        raw = {"types": paper, "models": [{"name": model, "classes": classes, "load": loads}], "objective": {"kind": "min_cost"}}
        cases.append(Case(f"{model}@{load:g}qps" + ("/2 classes" if kind == 2 else ""), raw))
    return cases


def _profiles() -> ProfileSet:
    return load_profiles().merged(load_variant_set("digits").profiles)


def simulate_plan(req: PlanRequest, plan: Plan, scale: float, queries: int, seed: int, profiles: ProfileSet) -> dict[str, float]:
    """Per (model/class): the share within target when the plan's pool takes ``scale`` x its load."""
    out = {}
    for mi, m in enumerate(req.models):
        pool = tuple((kind_of(m.name, a.variant if a.variant != m.name else None, a.type), a.count)
                     for a in plan.allocations if a.model == m.name)
        rates = np.array([m.load[c.name].at(req.objective.load_quantile) if c.name in m.load else 0.0 for c in m.classes])
        total = float(rates.sum()) * scale
        if total <= 0:
            continue
        trace = make_workload(PoissonArrivals(total), parse_batch_mix(_mix_name(req, mi)), queries, seed)
        query_class = np.random.default_rng([seed, 7]).choice(len(rates), size=queries, p=rates / rates.sum())
        classes = tuple(ServiceClass(c.name, c.target_ms, c.attainment, c.priority) for c in m.classes)
        accuracy = {v.name: v.accuracy for v in m.variants if v.accuracy is not None and v.name != m.name}
        res = simulate(trace, model=m.name, qos_ms=m.classes[0].target_ms, pool=pool, policy="kairos", seed=seed,
                       profiles=profiles, classes=classes, query_class=query_class, accuracy=accuracy)
        summary = res.class_summary()
        for c in m.classes:
            out[f"{m.name}/{c.name}"] = float(summary[c.name]["within_target"]) if c.name in summary else 1.0
    return out


def _mix_name(req: PlanRequest, mi: int) -> str:
    mix = req.models[mi].mix
    if isinstance(mix, UniformMix):
        return f"uniform:{mix.low}-{mix.high}"
    if isinstance(mix, FixedMix):
        return f"fixed:{mix.batch}"
    return "production"


def _meets(req: PlanRequest, within: dict[str, float]) -> bool:
    return all(within.get(f"{m.name}/{c.name}", 1.0) >= c.attainment for m in req.models for c in m.classes)


def unused_capacity(req: PlanRequest, plan: Plan, queries: int, seed: int, profiles: ProfileSet) -> float:
    lo, hi = 1.0, 2.0
    while _meets(req, simulate_plan(req, plan, hi, queries, seed, profiles)) and hi < 16:
        lo, hi = hi, hi * 2
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if _meets(req, simulate_plan(req, plan, mid, queries, seed, profiles)):
            lo = mid
        else:
            hi = mid
    return 1.0 - 1.0 / lo


def removable(req: PlanRequest, plan: Plan, queries: int, seed: int, profiles: ProfileSet) -> str | None:
    """An instance the plan could do without (the targets still met in simulation), if any."""
    for a in plan.allocations:
        fewer = tuple(replace(b, count=b.count - 1) if b is a else b for b in plan.allocations)
        smaller = replace(plan, allocations=tuple(b for b in fewer if b.count > 0))
        if not any(b.model == a.model for b in smaller.allocations):
            continue
        if _meets(req, simulate_plan(req, smaller, 1.0, queries, seed, profiles)):
            return f"{a.type}" + (f"[{a.variant}]" if a.variant != a.model else "")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=20000, help="simulated queries per model and run")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    profiles = _profiles()
    rows: list[dict[str, Any]] = []
    print(f"{'request':<28} {'pool':<44} {'$/h':>6}  {'predicted':>9}  {'simulated':>9}  {'meets':>5}  {'unused':>6}  "
          "one too many")
    for i, case in enumerate(draw_cases(args.requests, args.seed), 1):
        started = time.perf_counter()
        req = parse_plan_request(case.raw, profiles)
        plan = make_plan(req)
        within = simulate_plan(req, plan, 1.0, args.queries, args.seed, profiles)
        meets = _meets(req, within)
        unused = unused_capacity(req, plan, args.queries, args.seed, profiles) if meets else float("nan")
        spare = removable(req, plan, args.queries, args.seed, profiles) if meets else None
        pool = " + ".join(f"{a.count}x{a.type}" + (f"[{a.variant}]" if a.variant != a.model else "") for a in plan.allocations)
        predicted = min(c.within_target for c in plan.classes)
        simulated = min(within.values())
        rows.append({"request": case.name, "pool": pool, "cost_per_hour": plan.cost_per_hour, "predicted": predicted,
                     "simulated": within, "meets": meets, "unused": unused, "removable": spare,
                     "instances": sum(a.count for a in plan.allocations)})
        print(f"{case.name:<28} {pool[:44]:<44} {plan.cost_per_hour:>6.2f}  {predicted:>9.2%}  {simulated:>9.2%}  "
              f"{'yes' if meets else 'NO':>5}  {unused:>6.1%}  {spare or '-'}", flush=True)
        print(f"[{i}/{args.requests}] {case.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    met = [r for r in rows if r["meets"]]
    print(f"\nplans meeting every class's target in simulation: {len(met)}/{len(rows)} ({len(met) / len(rows):.0%})")
    if met:
        print(f"unused capacity, mean over those: {np.mean([r['unused'] for r in met]):.1%} "
              f"(median {np.median([r['unused'] for r in met]):.1%})")
        big = [r for r in met if r["instances"] >= 5]
        if big:
            print(f"  over the {len(big)} plans of 5 instances or more: {np.mean([r['unused'] for r in big]):.1%}")
        print(f"plans that could lose an instance and still meet every target: "
              f"{sum(r['removable'] is not None for r in met)}/{len(met)}")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
