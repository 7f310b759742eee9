"""Allocator speed: ``python -m benchmarks.allocator_speed [--out results/allocator_speed.json]``.

1. The paper's 4-type search space under 2.5 $/hour (the full product space is ~12,000 pools): the
   whole vectorised ranking (enumerate, bound, sort) against the same bound computed pool by pool
   in plain Python, as a ratio (target: the ranking under 0.2 s).
2. All 16 catalogue types (12 with scaled profiles) under 10 $/hour: the MILP's best pool by
   fluid limit (target: under 2 s).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from allocator.bound import paper_bound_scalar
from allocator.problem import build_problem
from allocator.search import best_by_milp, enumerate_pools
from allocator.space import catalogue_space, load_search_space
from gateway.profiles import load_catalogue, load_profiles


def _best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.allocator_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/allocator_speed.json"))
    ap.add_argument("--model", default="rm2")
    ap.add_argument("--repeat", type=int, default=5, help="best of N timings")
    args = ap.parse_args(argv)
    catalogue, profiles = load_catalogue(), load_profiles()

    space = load_search_space(catalogue)
    budget = 2.5
    problem = build_problem(args.model, space, profiles, catalogue)

    def vectorised() -> tuple[np.ndarray, np.ndarray]:
        counts = enumerate_pools(space, budget)
        bounds = problem.bound(counts)
        order = np.lexsort((counts @ space.price_array, -bounds))
        return counts[order], bounds[order]

    def vectorised_full_product() -> tuple[np.ndarray, np.ndarray]:
        # The same, without first capping each type at what the budget pays: all ~12,000 pools.
        grids = np.meshgrid(*[np.arange(m + 1) for m in space.max_count], indexing="ij")
        counts = np.stack([g.ravel() for g in grids], axis=1)
        cost = counts @ space.price_array
        counts = counts[(cost <= budget + 1e-9) & (counts.sum(axis=1) > 0)]
        bounds = problem.bound(counts)
        order = np.lexsort((counts @ space.price_array, -bounds))
        return counts[order], bounds[order]

    def plain_python() -> list[tuple[float, float, tuple[int, ...]]]:
        prices = space.prices
        out = []
        for counts in itertools.product(*(range(m + 1) for m in space.max_count)):
            cost = sum(p * n for p, n in zip(prices, counts, strict=True))
            if cost > budget + 1e-9 or not any(counts):
                continue
            b = paper_bound_scalar(problem.summaries, dict(zip(space.types, counts, strict=True)))
            out.append((-b, cost, counts))
        out.sort()
        return out

    t_vec, vec = _best_of(vectorised, args.repeat)
    t_full, _ = _best_of(vectorised_full_product, args.repeat)
    t_py, py = _best_of(plain_python, max(1, args.repeat // 2))
    assert isinstance(vec, tuple) and isinstance(py, list)
    same_top = tuple(int(x) for x in vec[0][0]) == py[0][2]
    product = space.product_size()

    big = catalogue_space(catalogue, 10.0)
    big_problem = build_problem(args.model, big, profiles, catalogue)
    t_milp, best = _best_of(lambda: best_by_milp(big_problem, 10.0, top=1), args.repeat)
    assert isinstance(best, list) and best
    pick = best[0]

    results = {
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "model": args.model,
        "paper_space": {
            "budget": budget,
            "product_space_pools": product,
            "within_budget_pools": len(vec[0]),
            "vectorised_ranking_s": t_vec,
            "vectorised_full_product_s": t_full,
            "plain_python_ranking_s": t_py,
            "speedup": t_py / t_vec,
            "speedup_full_product": t_py / t_full,
            "same_top_pool": same_top,
            "top_pool": dict(zip(space.types, (int(x) for x in vec[0][0]), strict=True)),
            "top_bound": float(vec[1][0]),
            "target_s": 0.2,
        },
        "catalogue_milp": {
            "budget": 10.0,
            "types": len(big.types),
            "scaled_types": [s.instance_type for s in big_problem.scaled],
            "milp_best_s": t_milp,
            "best_pool": pick.pool.as_dict(),
            "cost": pick.cost,
            "fluid_limit": pick.fluid_limit,
            "paper_bound": pick.paper_bound,
            "target_s": 2.0,
        },
    }
    print(f"{'benchmark':<44} {'time (s)':>10}  note")
    print(f"{'paper space, vectorised ranking':<44} {t_vec:>10.4f}  {product} pools in product, {len(vec[0])} within budget")
    print(f"{'paper space, vectorised, whole product':<44} {t_full:>10.4f}  no budget capping; speedup x{t_py / t_full:.0f}")
    print(f"{'paper space, plain Python pool by pool':<44} {t_py:>10.4f}  speedup x{t_py / t_vec:.0f}, same top: {same_top}")
    print(f"{'16 types, MILP best pool (10 $/h)':<44} {t_milp:>10.4f}  {pick.pool.label()}, fluid {pick.fluid_limit:.1f} QPS")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
