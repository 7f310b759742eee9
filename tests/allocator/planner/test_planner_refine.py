"""The simulator refinement: replicas taken off only while the pool still meets its targets in the
gateway's own dispatcher, never where the objective would lose by it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from allocator.planner.plan import make_plan
from allocator.planner.refine import meets, refine_model, simulate_model, simulation_profiles
from allocator.planner.request import DEFAULT_REFINE_MARGIN, PlanRequest, RefineOptions, parse_plan_request
from gateway.profiles import ProfileSet, load_catalogue, load_profiles

TYPES = ("g4dn.xlarge", "r5n.large")


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return load_profiles()


def _raw(load: float = 10.4, **extra: Any) -> dict[str, Any]:
    cat = load_catalogue()
    return {
        "types": [{"name": t, "price_per_hour": cat.type(t).price_per_hour, "accelerator": cat.type(t).accelerator}
                  for t in TYPES],
        "models": [{"name": "rm2", "classes": [{"name": "default", "target_ms": 350}], "load": load}],
        "objective": {"kind": "min_cost"},
        **extra,
    }


def _counts(plan: Any) -> dict[tuple[str, str], int]:
    return {(a.variant, a.type): a.count for a in plan.allocations}


def _req(shipped: ProfileSet, **extra: Any) -> PlanRequest:
    return parse_plan_request(_raw(**extra), shipped)


def test_a_mixed_pool_is_trimmed_and_still_meets_its_target_in_an_unseen_run(shipped: ProfileSet) -> None:
    solved = make_plan(_req(shipped))
    plan = make_plan(_req(shipped, refine=True))
    assert plan.refinement is not None and plan.refinement.moves == ("rm2: -1 r5n.large",)
    assert _counts(solved) == {("rm2", "g4dn.xlarge"): 1, ("rm2", "r5n.large"): 2}
    assert _counts(plan) == {("rm2", "g4dn.xlarge"): 1, ("rm2", "r5n.large"): 1}
    assert plan.cost_per_hour == pytest.approx(solved.cost_per_hour - load_catalogue().type("r5n.large").price_per_hour)
    assert plan.objective_value == pytest.approx(plan.cost_per_hour)
    outcome = plan.outcome("rm2", "default")
    # its bound on the misses within the margin of the 1% it may miss, and the share itself below the bound
    assert outcome.basis == "simulation" and outcome.within_target >= 1 - DEFAULT_REFINE_MARGIN * 0.01
    assert sum(a.rate_qps for a in plan.allocations) == pytest.approx(10.4, rel=0.1)
    # judged on a run the refinement never saw: twice the queries, another seed
    req = _req(shipped)
    run = simulate_model(req, 0, _counts(plan), queries=10000, seed=77, profiles=simulation_profiles(req, 0))
    assert run.within["default"] >= 0.99


def test_the_search_stops_where_one_replica_less_would_miss(shipped: ProfileSet) -> None:
    req = _req(shipped, load=60.0, refine={"queries": 3000, "seed": 5, "max_simulations": 500})
    plan = make_plan(req)
    assert req.refine is not None
    profiles = simulation_profiles(req, 0)
    counts = _counts(plan)
    for key, n in counts.items():
        fewer = {**counts, key: n - 1}
        if sum(fewer.values()) == 0:
            continue
        run = simulate_model(req, 0, fewer, queries=3000, seed=5, profiles=profiles)
        assert not meets(req, 0, run, req.refine.margin), key


def test_the_same_request_gives_the_same_refined_plan(shipped: ProfileSet) -> None:
    a, b = (make_plan(_req(shipped, load=30.0, refine={"queries": 2000})) for _ in range(2))
    assert a.allocations == b.allocations and a.classes == b.classes


def test_no_replica_is_stopped_when_stopping_costs_more_than_it_saves(shipped: ProfileSet) -> None:
    solved = make_plan(_req(shipped))
    current = [{"model": "rm2", "type": t, "count": n} for (_v, t), n in _counts(solved).items()]
    plan = make_plan(_req(shipped, refine=True, current=current, change_cost={"stop": 5.0}))
    assert plan.refinement is not None and plan.refinement.moves == ()
    assert _counts(plan) == _counts(solved) and plan.changes == ()
    # the same pool with stopping free: the refinement takes the r5n.large off, and says so as a change
    free = make_plan(_req(shipped, refine=True, current=current, change_cost={"stop": 0.0}))
    assert free.refinement is not None and free.refinement.moves
    assert [(c.type, c.before - c.after) for c in free.changes] == [("r5n.large", 1)]


def test_a_utility_plan_is_not_trimmed(shipped: ProfileSet) -> None:
    raw = _raw(refine=True, objective={"kind": "utility"}, max_units=3)
    plan = make_plan(parse_plan_request(raw, shipped))
    assert plan.refinement is not None and plan.refinement.moves == () and plan.refinement.simulations == 0
    assert all(c.basis == "queueing model" for c in plan.classes)


def test_a_pool_that_misses_as_planned_is_left_as_it_is(shipped: ProfileSet) -> None:
    # under a utilisation cap of 0.05 the planned pool already misses: nothing is tried, nothing taken off
    req = replace(_req(shipped), max_utilisation=0.05)
    counts = {("rm2", "g4dn.xlarge"): 1, ("rm2", "r5n.large"): 2}
    now, run, moves, sims = refine_model(req, 0, counts, RefineOptions(queries=2000))
    assert now == counts and moves == [] and sims == 1
    assert run.busy > 0.05 and run.within["default"] >= 0.99


def test_the_bound_on_misses_is_above_the_share_missed_and_a_class_without_load_has_none(shipped: ProfileSet) -> None:
    raw = _raw()
    raw["models"][0]["classes"] = [{"name": "premium", "target_ms": 350, "priority": 1},
                                   {"name": "idle", "target_ms": 700, "attainment": 0.95}]
    raw["models"][0]["load"] = {"premium": 10.4}
    req = parse_plan_request(raw, shipped)
    run = simulate_model(req, 0, {("rm2", "g4dn.xlarge"): 1}, queries=4000, seed=2, profiles=simulation_profiles(req, 0))
    assert run.miss_bound["premium"] > 1.0 - run.within["premium"] > 0.0
    assert run.miss_bound["idle"] == 0.0 and run.within["idle"] == 1.0
    plan = make_plan(parse_plan_request({**raw, "refine": {"queries": 4000}}, shipped))
    assert plan.refinement is not None and plan.refinement.moves  # the idle class does not hold the trim back


def test_an_instance_is_traded_for_a_cheaper_one_where_that_meets_the_target(shipped: ProfileSet) -> None:
    raw = _raw(load=30.0)
    c5n = load_catalogue().type("c5n.2xlarge")
    raw["types"].append({"name": c5n.name, "price_per_hour": c5n.price_per_hour})
    req = parse_plan_request(raw, shipped)
    start = {("rm2", "g4dn.xlarge"): 1, ("rm2", "c5n.2xlarge"): 4}
    now, _run, moves, sims = refine_model(req, 0, start, RefineOptions(queries=4000, max_simulations=40))
    assert "rm2: 1 c5n.2xlarge -> 1 r5n.large" in moves and sims <= 40
    price = {t.name: t.price_per_hour for t in req.types}
    assert sum(price[t] * n for (_v, t), n in now.items()) < sum(price[t] * n for (_v, t), n in start.items())
    run = simulate_model(req, 0, now, queries=10000, seed=31, profiles=simulation_profiles(req, 0))
    assert run.within["default"] >= 0.99


def test_a_trade_respects_what_exists(shipped: ProfileSet) -> None:
    raw = _raw(load=30.0)
    c5n = load_catalogue().type("c5n.2xlarge")
    raw["types"].append({"name": c5n.name, "price_per_hour": c5n.price_per_hour})
    raw["types"][1]["available"] = 1  # one r5n.large exists
    req = parse_plan_request(raw, shipped)
    start = {("rm2", "g4dn.xlarge"): 1, ("rm2", "c5n.2xlarge"): 4}
    now, _run, _moves, _sims = refine_model(req, 0, start, RefineOptions(queries=4000, max_simulations=40),
                                            others={"r5n.large": 1})  # another model holds it
    assert now.get(("rm2", "r5n.large"), 0) == 0


def test_models_with_a_variant_of_the_same_name_are_simulated_on_their_own_profiles(shipped: ProfileSet) -> None:
    raw = _raw()
    raw["models"] = [
        {"name": "a", "variants": [{"name": "v", "profile": "rm2"}], "classes": [{"name": "c", "target_ms": 350}],
         "load": 10.0},
        {"name": "b", "variants": [{"name": "v", "profile": "ncf"}], "classes": [{"name": "c", "target_ms": 50}],
         "load": 10.0},
    ]
    req = parse_plan_request(raw, shipped)
    for mi, source in ((0, "rm2"), (1, "ncf")):
        got = simulation_profiles(req, mi).get("v", "r5n.large")
        assert got.means.tolist() == shipped.get(source, "r5n.large").means.tolist()


def test_a_trade_never_takes_the_pool_over_the_budget(shipped: ProfileSet) -> None:
    """Trading a c5n.2xlarge for four of the current r5n.large saves their stop cost but costs more
    per hour: under budget_per_hour the search trades for two instead, at every step."""
    c5n = load_catalogue().type("c5n.2xlarge")
    start = {("rm2", "g4dn.xlarge"): 1, ("rm2", "c5n.2xlarge"): 4}
    budget = 0.526 + 4 * c5n.price_per_hour
    for limit in (None, budget):
        raw = _raw(load=30.0, current=[{"model": "rm2", "type": "r5n.large", "count": 4}],
                   change_cost={"start": 0.0, "stop": 1.0})
        raw["types"].append({"name": c5n.name, "price_per_hour": c5n.price_per_hour})
        if limit is not None:
            raw["budget_per_hour"] = limit
        req = parse_plan_request(raw, shipped)
        _now, _run, moves, _sims = refine_model(req, 0, start, RefineOptions(queries=4000, max_simulations=40))
        price = {t.name: t.price_per_hour for t in req.types}
        counts = dict(start)
        hourly = []
        for move in moves:  # replay: "rm2: -1 T" or "rm2: 1 A -> k B"
            words = move.split(": ", 1)[1].split()
            if words[0] == "-1":
                counts[("rm2", words[1])] -= 1
            else:
                counts[("rm2", words[1])] -= 1
                counts[("rm2", words[4])] = counts.get(("rm2", words[4]), 0) + int(words[3])
            hourly.append(sum(price[t] * n for (_v, t), n in counts.items()))
        if limit is None:
            assert hourly and hourly[0] > budget, moves  # what the objective alone would do first
        else:
            assert hourly and max(hourly) <= budget + 1e-9, moves


def test_without_a_current_pool_a_trade_costs_no_start(shipped: ProfileSet) -> None:
    """As the solver counts it: change costs apply to changes from a current pool only."""
    c5n = load_catalogue().type("c5n.2xlarge")
    raw = _raw(load=30.0, change_cost={"start": 5.0})
    raw["types"].append({"name": c5n.name, "price_per_hour": c5n.price_per_hour})
    req = parse_plan_request(raw, shipped)
    start = {("rm2", "g4dn.xlarge"): 1, ("rm2", "c5n.2xlarge"): 4}
    _now, _run, moves, _sims = refine_model(req, 0, start, RefineOptions(queries=4000, max_simulations=40))
    assert any("c5n.2xlarge -> " in m for m in moves), moves


def test_the_refinement_keeps_to_the_requests_time_limit(shipped: ProfileSet) -> None:
    plan = make_plan(_req(shipped, load=60.0, time_limit_s=0.2,
                          refine={"queries": 20000, "max_simulations": 1000}))
    assert plan.refinement is not None
    assert plan.refinement.simulations <= 2  # the limit passes during the first trial or two
