"""How long the planner takes as the problem grows: models x variants x types x classes.

    python -m benchmarks.planner.speed [--repeats 3]

The largest case is the issue's target: 10 models x 3 variants x 6 types x 3 classes in under
1 s. Requests are synthetic but drawn from the shipped profiles: models cycle over the five
paper models; a variant is its model's profile scaled (x0.7, x1, x1.4 in latency, with lower to
higher accuracy); the two extra types are the paper's CPU types scaled (x0.85, x1.2). Each
(model, class) gets a load of a third of what 8 instances of its fastest CPU type carry.
Reports the wall time of the whole solve (capacity curves, MILP rounds), median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

from allocator.planner.groups import _CURVES
from allocator.planner.plan import make_plan
from allocator.planner.request import parse_plan_request
from gateway.profiles import LatencyProfile, ProfileSet, load_profiles
from gateway.profiles.catalogue import load_catalogue

MODELS = ("rm2", "wnd", "mtwnd", "dien", "ncf")
BASE_TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")
EXTRA_TYPES = {"c5.2xlarge": ("c5n.2xlarge", 1.2), "m5.xlarge": ("r5n.large", 0.85)}
VARIANT_SCALES = ((0.7, 0.90), (1.0, 0.93), (1.4, 0.95))
CLASSES = ((0.8, 0.99, 2), (1.0, 0.99, 1), (3.0, 0.95, 0))  # target x model QoS, attainment, priority
QOS = {"ncf": 5.0, "rm2": 350.0, "wnd": 25.0, "mtwnd": 25.0, "dien": 35.0}


def _scaled(p: LatencyProfile, factor: float, type_name: str) -> dict[str, Any]:
    del type_name
    return {"batch": p.batches.astype(int).tolist(), "mean": (p.means * factor).tolist(),
            "quantiles": (p.quantiles * factor).tolist()}


def synthetic_request(n_models: int, n_variants: int, n_types: int, n_classes: int, shipped: ProfileSet) -> dict[str, Any]:
    catalogue = load_catalogue()
    type_names = [*BASE_TYPES, *EXTRA_TYPES][:n_types]
    types = [{"name": t, "price_per_hour": catalogue.type(t).price_per_hour, "accelerator": catalogue.type(t).accelerator}
             for t in type_names]
    models = []
    for i in range(n_models):
        base = MODELS[i % len(MODELS)]
        variants = []
        for j, (scale, acc) in enumerate(VARIANT_SCALES[:n_variants]):
            body = {}
            for t in type_names:
                src, f = EXTRA_TYPES.get(t, (t, 1.0))
                body[t] = _scaled(shipped.get(base, src), scale * f, t)
            levels = shipped.get(base, BASE_TYPES[0]).levels.tolist()
            variants.append({"name": f"{base}{i}-v{j}", "accuracy": acc,
                             "profiles": {"quantile_levels": levels, "types": body}})
        classes = [{"name": f"c{k}", "target_ms": QOS[base] * mult, "attainment": att, "priority": prio}
                   for k, (mult, att, prio) in enumerate(CLASSES[:n_classes])]
        cpu_mean_s = float(np.mean(shipped.get(base, "r5n.large").means[:5])) / 1000
        load = round(8 / cpu_mean_s / 3 / n_classes, 1)
        models.append({"name": f"{base}{i}", "variants": variants, "classes": classes,
                       "load": {c["name"]: load for c in classes}})
    return {"types": types, "models": models, "objective": {"kind": "min_cost"}}


def time_case(shape: tuple[int, int, int, int], shipped: ProfileSet, repeats: int) -> tuple[float, float, str]:
    raw = synthetic_request(*shape, shipped)
    cold, warm = [], []
    status = ""
    for _ in range(repeats):
        _CURVES.clear()
        req = parse_plan_request(raw, shipped)
        t = time.perf_counter()
        plan = make_plan(req)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        make_plan(req)  # capacity curves cached: the MILP alone
        warm.append(time.perf_counter() - t)
        status = f"{plan.solver_status}, {plan.solver_rounds} rounds, {plan.cost_per_hour:.2f} $/h"
    return statistics.median(cold), statistics.median(warm), status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.planner.speed", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    shipped = load_profiles()
    shapes = [(1, 1, 4, 1), (5, 1, 4, 1), (5, 3, 6, 3), (10, 3, 6, 3), (20, 3, 6, 3)]
    print(f"{'models x variants x types x classes':>36}  {'solve s':>8}  {'MILP only s':>11}  result")
    for shape in shapes:
        cold, warm, status = time_case(shape, shipped, args.repeats)
        label = " x ".join(map(str, shape))
        print(f"{label:>36}  {cold:>8.3f}  {warm:>11.3f}  {status}", flush=True)
    print("(median of", args.repeats, "repeats; target: 10 x 3 x 6 x 3 under 1 s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
