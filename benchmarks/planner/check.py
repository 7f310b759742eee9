"""Check the planner's capacity model against the simulator, which runs the gateway's own dispatcher.

    python -m benchmarks.planner.check [--requests 20] [--seed 0] [--queries 20000] [--json PATH]

Draws plan requests over the shipped models (rm2, wnd, mtwnd, dien, ncf on the paper's four types),
the shipped variant set (digits: three variants on dev-2vcpu), one or two service classes and loads
from light to heavy; plans each at the least cost (the variant set: accuracy against cost) and
refines the plan in the simulator (``refine``, with its own seed), then simulates the plan at its
planned load (Poisson arrivals, the policy ``kairos``, each query's class drawn by the class's
share of the load). A plan *meets* its targets when every class's share within target in
simulation reaches its attainment. *Unused capacity*: 1 - load / the highest load the same pool
carries at the targets (the loads scaled together, bisection to 2%). The *least pool*: the
cheapest mix of the request's types that meets the same targets in the same simulation (an
oracle by enumeration, ``least_pool``); its unused capacity is the step of one instance that no
plan can avoid.
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

from allocator.fluid import fluid_limit
from allocator.planner.plan import Plan, make_plan, refined
from allocator.planner.refine import class_rates, fluid_models, simulate_model, simulation_profiles
from allocator.planner.request import PlanRequest, RefineOptions, parse_plan_request
from gateway.profiles import ProfileSet, load_catalogue, load_profiles
from gateway.profiles.variants import load_variant_set

PAPER_TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")
QOS = {"ncf": 5.0, "rm2": 350.0, "wnd": 25.0, "mtwnd": 25.0, "dien": 35.0}
# Loads (queries/s) of one r5n.large-sized share per model: the draws scale these.
REFERENCE_QPS = {"ncf": 60.0, "rm2": 10.0, "wnd": 40.0, "mtwnd": 30.0, "dien": 35.0}
DEV_TYPE_PRICE = 0.0832  # dev-2vcpu, priced as a 2-vCPU general-purpose instance
SEARCH_STEPS = 6
ORACLE_SIMULATIONS = 60
ORACLE_MAX_POOLS = 5_000_000


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


Counts = dict[tuple[str, str], int]


def _counts(plan: Plan, model: str) -> Counts:
    return {(a.variant, a.type): a.count for a in plan.allocations if a.model == model}


def _label(counts: Counts, model: str) -> str:
    return " + ".join(f"{n}x{t}" + (f"[{v}]" if v != model else "") for (v, t), n in counts.items() if n > 0) or "-"


def _cost(req: PlanRequest, counts: Counts) -> float:
    return sum(req.type(t).price_per_hour * n for (_v, t), n in counts.items())


def _meets(req: PlanRequest, counts: Counts, queries: int, seed: int, profiles: ProfileSet, scale: float = 1.0) -> bool:
    run = simulate_model(req, 0, counts, queries=queries, seed=seed, scale=scale, profiles=profiles)
    return all(run.within[c.name] >= c.attainment for c in req.models[0].classes)


def unused_capacity(req: PlanRequest, counts: Counts, queries: int, seed: int, profiles: ProfileSet) -> float:
    """1 - load / the highest load (all classes scaled together) the pool carries at the targets."""
    lo, hi = 1.0, 2.0
    while _meets(req, counts, queries, seed, profiles, hi) and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if _meets(req, counts, queries, seed, profiles, mid):
            lo = mid
        else:
            hi = mid
    return 1.0 - 1.0 / lo


def removable(req: PlanRequest, counts: Counts, queries: int, seed: int, profiles: ProfileSet) -> str | None:
    """An instance the pool could do without (the targets still met in simulation), if any."""
    for key, n in counts.items():
        fewer = {**counts, key: n - 1}
        if sum(fewer.values()) > 0 and _meets(req, fewer, queries, seed, profiles):
            return key[1] + (f"[{key[0]}]" if key[0] != req.models[0].name else "")
    return None


def least_pool(req: PlanRequest, plan: Plan, queries: int, seed: int,
               profiles: ProfileSet) -> tuple[Counts, int, bool]:
    """The cheapest pool that meets every target in simulation, over every mix of the request's types
    (the plan's variant when it runs one) costing less than the plan: in order of cost, pools that
    can carry the load in the fluid limit are simulated until one meets. Returns it (the plan's own
    when none cheaper meets), the number of simulations (at most ``ORACLE_SIMULATIONS``), and
    whether the search was complete: False when it was cut short (the simulations' cap, too many
    pools, several variants), so that the plan's own pool is no verdict."""
    m = req.models[0]
    plan_counts = _counts(plan, m.name)
    variants = {v for v, _t in plan_counts}
    if len(variants) != 1:
        return plan_counts, 0, False
    (variant,) = variants
    fluid = fluid_models(req, 0, profiles)[variant]
    types = fluid.types  # the variant's types, in the order its fluid model takes counts
    prices = np.array([req.type(t).price_per_hour for t in types])
    budget = _cost(req, plan_counts) - 1e-9
    sizes_per_type = [int(budget // p) + 1 for p in prices]
    if float(np.prod(sizes_per_type, dtype=float)) > ORACLE_MAX_POOLS:
        return plan_counts, 0, False  # too many pools to enumerate
    grids = np.meshgrid(*[np.arange(n) for n in sizes_per_type], indexing="ij")
    pools = np.stack([g.ravel() for g in grids], axis=1)
    cost = pools @ prices
    keep = (cost < budget) & (pools.sum(axis=1) > 0)
    pools, cost = pools[keep], cost[keep]
    load = float(class_rates(req, 0).sum())
    sims = 0
    for i in np.argsort(cost, kind="stable"):
        if fluid_limit(fluid, pools[i]).rate < load:
            continue
        if sims >= ORACLE_SIMULATIONS:
            return plan_counts, sims, False
        counts = {(variant, t): int(n) for t, n in zip(types, pools[i], strict=True) if n > 0}
        sims += 1
        if _meets(req, counts, queries, seed, profiles):
            return counts, sims, True
    return plan_counts, sims, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.planner.check", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=20000, help="simulated queries per model and run")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    shipped = _profiles()
    rows: list[dict[str, Any]] = []
    print(f"{'request':<26} {'as solved':<26} {'refined':<26} {'$/h':>5}  {'pred.':>6}  {'sim.':>6}  meets  "
          f"{'unused':>6}  {'least pool':<26} {'$/h':>5}  {'unused':>6}  one too many")
    for i, case in enumerate(draw_cases(args.requests, args.seed), 1):
        started = time.perf_counter()
        req = parse_plan_request(case.raw, shipped)
        profiles = simulation_profiles(req, 0)
        name = req.models[0].name
        solved = make_plan(req)
        # the refinement's own seed: its trials must not be the runs that judge it
        plan = refined(replace(req, refine=RefineOptions(seed=args.seed + 1)), solved)
        counts = _counts(plan, name)
        run = simulate_model(req, 0, counts, queries=args.queries, seed=args.seed, profiles=profiles)
        meets = all(run.within[c.name] >= c.attainment for c in req.models[0].classes)
        unused = unused_capacity(req, counts, args.queries, args.seed, profiles) if meets else float("nan")
        spare = removable(req, counts, args.queries, args.seed, profiles) if meets else None
        least, sims, complete = least_pool(req, plan, args.queries, args.seed, profiles)
        least_unused = unused if least == counts else unused_capacity(req, least, args.queries, args.seed, profiles)
        predicted = min(c.within_target for c in solved.classes)
        simulated = min(run.within.values())
        row: dict[str, Any] = {"request": case.name, "solved": _label(_counts(solved, name), name), "pool": _label(counts, name),
               "solved_cost_per_hour": solved.cost_per_hour, "cost_per_hour": plan.cost_per_hour,
               "predicted": predicted, "simulated": run.within, "meets": meets, "unused": unused,
               "removable": spare, "instances": sum(counts.values()), "least_pool": _label(least, name),
               "least_cost_per_hour": _cost(req, least), "least_unused": least_unused, "oracle_simulations": sims,
               "oracle_complete": complete,
               "refine_s": plan.refinement.time_s if plan.refinement else 0.0,
               "moves": list(plan.refinement.moves) if plan.refinement else []}
        rows.append(row)
        print(f"{case.name:<26} {row['solved'][:26]:<26} {row['pool'][:26]:<26} {plan.cost_per_hour:>5.2f}  "
              f"{predicted:>6.2%}  {simulated:>6.2%}  {'yes' if meets else 'NO':>5}  {unused:>6.1%}  "
              f"{row['least_pool'][:26]:<26} {row['least_cost_per_hour']:>5.2f}  {least_unused:>6.1%}  {spare or '-'}",
              flush=True)
        print(f"[{i}/{args.requests}] {case.name}: {time.perf_counter() - started:.0f} s "
              f"(refinement {row['refine_s']:.1f} s: {'; '.join(row['moves']) or 'no moves'})", file=sys.stderr, flush=True)
    summarise(rows)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


def summarise(rows: list[dict[str, Any]]) -> None:
    met = [r for r in rows if r["meets"]]
    print(f"\nplans meeting every class's target in simulation: {len(met)}/{len(rows)} ({len(met) / len(rows):.0%})")
    if not met:
        return
    mean = float(np.mean([r["unused"] for r in met]))
    floor = float(np.mean([r["least_unused"] for r in met]))
    print(f"unused capacity, mean over those: {mean:.1%} (median {np.median([r['unused'] for r in met]):.1%}); "
          f"the least pool that meets the same targets leaves {floor:.1%} unused on average (one instance's step)")
    print(f"capacity beyond the least pool: {mean - floor:+.1%} on average; cost "
          f"{sum(r['cost_per_hour'] for r in met) / sum(r['least_cost_per_hour'] for r in met) - 1:+.1%} over the least pools "
          f"({sum(r['cost_per_hour'] > r['least_cost_per_hour'] + 1e-9 for r in met)} plans dearer than theirs); "
          f"as solved, before the refinement: {sum(r['solved_cost_per_hour'] for r in met) / sum(r['least_cost_per_hour'] for r in met) - 1:+.1%}")
    cut = [r["request"] for r in met if not r.get("oracle_complete", True)]
    if cut:
        print(f"  the least-pool search was cut short for {len(cut)} ({', '.join(cut)}): its pool is the plan's own, "
              "so the figures above flatter the plan there")
    big = [r for r in met if r["instances"] >= 5]
    if big:
        print(f"  over the {len(big)} plans of 5 instances or more: {np.mean([r['unused'] for r in big]):.1%} unused")
    print(f"plans that could lose an instance and still meet every target: "
          f"{sum(r['removable'] is not None for r in met)}/{len(met)}")


if __name__ == "__main__":
    sys.exit(main())
