"""The paper's bound (vectorised vs plain Python, the rm2 ranking) and the fluid limit by hand."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.bound import paper_bound_scalar
from allocator.fluid import build_fluid_model, fluid_limit
from allocator.problem import Problem, build_problem
from allocator.search import best_by_milp, enumerate_pools, rank_by_budget, size_for_load
from allocator.space import SearchSpace
from allocator.summary import MixOnGrid
from gateway.profiles import Catalogue, ProfileSet
from gateway.workload import ProductionMix


def test_vectorised_bound_equals_scalar(rm2: Problem) -> None:
    counts = enumerate_pools(rm2.space, 2.5)
    fast = rm2.bound(counts)
    slow = [paper_bound_scalar(rm2.summaries, dict(zip(rm2.space.types, map(int, row), strict=True))) for row in counts]
    assert np.allclose(fast, slow)


def test_rm2_ranking_under_2_5(rm2: Problem) -> None:
    ranking = rank_by_budget(rm2, 2.5, top=3)
    best = ranking.candidates[0]
    assert best.pool.as_dict() == {"g4dn.xlarge": 1, "r5n.large": 13}
    assert best.paper_bound == pytest.approx(144.0, rel=0.01)
    assert best.cost == pytest.approx(2.463)
    assert all(c.cost <= 2.5 for c in ranking.candidates)
    bounds = [c.paper_bound for c in ranking.candidates]
    assert bounds == sorted(bounds, reverse=True)
    assert best.fluid_limit is not None and best.fluid_limit > 0


def test_milp_best_agrees_on_paper_space(rm2: Problem) -> None:
    best = best_by_milp(rm2, 2.5, top=1)[0]
    assert best.pool.as_dict() == {"g4dn.xlarge": 1, "r5n.large": 13}


# Toy (see conftest): small queries 10 ms on A, 40 ms on B; large 20 ms on A, not allowed on B.
def test_fluid_limit_by_hand(toy: Problem) -> None:
    # A alone: 1 / (0.5 * 0.010 + 0.5 * 0.020) = 66.67 QPS.
    assert fluid_limit(toy.fluid, [1, 0]).rate == pytest.approx(200 / 3)
    # B alone cannot serve the large half at all.
    assert fluid_limit(toy.fluid, [0, 4]).rate == 0.0
    # 1 A + 1 B: B takes 25 small/s (saturated), A the rest: 0.01 r + 0.01 (0.5 r - 25) = 1 -> r = 250/3.
    res = fluid_limit(toy.fluid, [1, 1])
    assert res.rate == pytest.approx(250 / 3)
    assert res.utilisation == pytest.approx({"A": 1.0, "B": 1.0})
    # 1 A + 2 B: B takes all 50 small/s; A is saturated by the large half at r = 100.
    assert fluid_limit(toy.fluid, [1, 2]).rate == pytest.approx(100.0)


def test_milp_matches_exhaustive_fluid_search(toy: Problem) -> None:
    budget = 2.0
    counts = enumerate_pools(toy.space, budget)
    limits = np.array([fluid_limit(toy.fluid, row).rate for row in counts])
    best = best_by_milp(toy, budget, top=1)[0]
    assert best.fluid_limit == pytest.approx(limits.max())
    assert best.cost <= budget + 1e-9


def test_load_mode_picks_cheapest_carrying_pool(toy: Problem) -> None:
    load, headroom = 80.0, 0.2  # needs 96 QPS
    ranking = size_for_load(toy, load, headroom, top=2)
    pick = ranking.candidates[0]
    assert ranking.target_qps == pytest.approx(96.0)
    assert pick.fluid_limit is not None and pick.fluid_limit >= 96.0 - 1e-6
    counts = enumerate_pools(toy.space, 100.0)
    cost = counts @ toy.space.price_array
    ok = np.array([fluid_limit(toy.fluid, row).rate >= 96.0 - 1e-6 for row in counts])
    assert pick.cost == pytest.approx(cost[ok].min())
    assert ranking.candidates[1].cost >= pick.cost


def test_load_mode_rm2(rm2: Problem) -> None:
    pick = size_for_load(rm2, 100.0, 0.2).candidates[0]
    assert pick.fluid_limit is not None and pick.fluid_limit >= 120.0
    assert pick.pool.as_dict() == {"g4dn.xlarge": 1, "r5n.large": 11}


@pytest.mark.parametrize("model", ["ncf", "rm2", "wnd", "mtwnd", "dien"])
def test_on_the_same_mix_the_fluid_limit_is_at_least_the_papers_bound(
    model: str, paper_space: SearchSpace, profiles: ProfileSet, catalogue: Catalogue
) -> None:
    """Like for like: the paper's bound rounds batch sizes up to multiples of 10; the fluid LP on
    that same rounded mix is an upper bound of what any distributor carries, so it is never below
    the paper's bound on the ranked pools (on the exact sizes it may be: a different mix)."""
    p = build_problem(model, paper_space, profiles, catalogue)
    sizes, probs = ProductionMix().pmf()
    grid = MixOnGrid.from_pmf(sizes, probs)
    same = build_fluid_model(profiles, model, paper_space.types, grid.sizes, grid.probs, p.qos_ms)
    for c in rank_by_budget(p, 2.5, top=3).candidates:
        counts = [c.pool.count(t) for t in paper_space.types]
        assert fluid_limit(same, counts).rate >= c.paper_bound * (1 - 1e-6), (model, c.pool.label())
