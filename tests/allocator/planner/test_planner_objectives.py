"""Each objective on small cases checked by enumeration over every pool, with the same capacity model."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from allocator.planner.capacity import CapacityCurve
from allocator.planner.groups import build_tables
from allocator.planner.plan import Plan, make_plan
from allocator.planner.request import PlanRequest, parse_plan_request
from gateway.profiles import ProfileSet

LEVELS = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


def _profile(mean_ms: float, sigma: float = 0.2) -> dict[str, Any]:
    dist = stats.lognorm(s=sigma, scale=mean_ms * math.exp(-sigma * sigma / 2))
    q = dist.ppf(np.clip(LEVELS, 1e-4, 1 - 1e-4)).tolist()
    return {"batch": [1], "mean": [mean_ms], "quantiles": [q]}


def _variant(name: str, per_type_ms: dict[str, float], accuracy: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "profiles": {"quantile_levels": LEVELS,
                                                      "types": {t: _profile(ms) for t, ms in per_type_ms.items()}}}
    if accuracy is not None:
        out["accuracy"] = accuracy
    return out


def _request(types: list[dict[str, Any]], models: list[dict[str, Any]], objective: dict[str, Any], **extra: Any) -> PlanRequest:
    for m in models:
        m.setdefault("batch_mix", "fixed:1")
    return parse_plan_request({"types": types, "models": models, "objective": objective, **extra}, ProfileSet())


def _curves(req: PlanRequest) -> dict[tuple[int, str], tuple[CapacityCurve, float]]:
    """(variant index, type) -> (curve of the model's one class, mean service s)."""
    groups = build_tables(req)[0].groups
    out = {}
    for g in groups:
        curve = g.curves[0]
        assert curve is not None
        out[(g.variant, g.type)] = (curve, float(g.service_s[0]))
    return out


def _carries(curve: CapacityCurve, service_s: float, n: int) -> float:
    """Queries/s n replicas carry at the target."""
    return float(curve.at(n)) / service_s if n > 0 else 0.0


TWO_TYPES = [{"name": "fast", "price_per_hour": 1.0}, {"name": "slow", "price_per_hour": 0.3}]


@pytest.mark.parametrize("load", [3.0, 20.0, 55.0, 140.0])
def test_min_cost_on_one_type_is_the_fewest_replicas_that_carry_the_load(load: float) -> None:
    req = _request([{"name": "fast", "price_per_hour": 1.0}],
                   [{"name": "m", **_variant("m", {"fast": 50.0}), "classes": [{"name": "c", "target_ms": 200}], "load": load}],
                   {"kind": "min_cost"})
    curve, service = _curves(req)[(0, "fast")]
    fewest = next(n for n in range(1, 1000) if _carries(curve, service, n) >= load)
    plan = make_plan(req)
    assert plan.count("m", "fast") == fewest
    assert plan.outcome("m", "c").within_target >= 0.99


@pytest.mark.parametrize("load", [5.0, 30.0, 80.0])
def test_min_cost_on_two_types_matches_enumeration(load: float) -> None:
    req = _request(TWO_TYPES, [{"name": "m", **_variant("m", {"fast": 20.0, "slow": 90.0}),
                                "classes": [{"name": "c", "target_ms": 300}], "load": load}], {"kind": "min_cost"})
    curves = _curves(req)
    best = min(
        1.0 * a + 0.3 * b
        for a, b in itertools.product(range(12), range(40))
        if _carries(*curves[(0, "fast")], a) + _carries(*curves[(0, "slow")], b) >= load
    )
    plan = make_plan(req)
    assert plan.cost_per_hour == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("weight", [0.0005, 0.02, 0.5])
def test_accuracy_objective_matches_enumeration(weight: float) -> None:
    """Two variants on one type: the accurate one is 4x slower. Served accuracy minus weight x cost."""
    load = 40.0
    req = _request([{"name": "cpu", "price_per_hour": 0.5}],
                   [{"name": "m", "variants": [_variant("small", {"cpu": 10.0}, 0.80), _variant("big", {"cpu": 40.0}, 0.90)],
                     "classes": [{"name": "c", "target_ms": 250}], "load": load}],
                   {"kind": "accuracy", "cost_weight": weight})
    curves = _curves(req)
    best = math.inf
    for s, b in itertools.product(range(10), range(20)):
        cap_s, cap_b = _carries(*curves[(0, "cpu")], s), _carries(*curves[(1, "cpu")], b)
        if cap_s + cap_b < load:
            continue
        to_big = min(cap_b, load)  # the most accurate share the pool can take
        value = -(0.90 * to_big + 0.80 * (load - to_big)) / load + weight * 0.5 * (s + b)
        best = min(best, value)
    plan = make_plan(req)
    assert plan.objective_value == pytest.approx(best, abs=1e-6)
    if weight < 0.001:
        assert plan.served_accuracy == pytest.approx(0.90)  # cost hardly counts: all on the accurate variant
    if weight >= 0.5:
        assert plan.count("m", "cpu", "big") == 0  # cost dominates: the cheap variant only


def _shared_cap(fairness: float) -> Plan:
    """Two models on one capped type (4 replicas), together needing about 6."""
    models = [
        {"name": "light", **_variant("light", {"cpu": 20.0}), "classes": [{"name": "c", "target_ms": 200}], "load": 120.0},
        {"name": "heavy", **_variant("heavy", {"cpu": 60.0}), "classes": [{"name": "c", "target_ms": 400}], "load": 40.0},
    ]
    req = _request([{"name": "cpu", "price_per_hour": 0.1, "available": 4}], models,
                   {"kind": "utility", "fairness": fairness})
    return make_plan(req)


def test_utility_total_serves_the_most_requests_and_fairness_the_worst_model() -> None:
    total, fair = _shared_cap(0.0), _shared_cap(1.0)
    t_served = sum((1 - c.dropped) * c.load_qps for c in total.classes)
    f_served = sum((1 - c.dropped) * c.load_qps for c in fair.classes)
    assert t_served >= f_served - 1e-6
    assert min(1 - c.dropped for c in fair.classes) >= min(1 - c.dropped for c in total.classes) - 1e-6
    assert sum(a.count for a in total.allocations) <= 4 and sum(a.count for a in fair.allocations) <= 4
    assert any(c.dropped > 0 for c in fair.classes)  # the cap binds


def test_without_drops_an_overfull_cap_is_infeasible_with_the_reason() -> None:
    from allocator.planner.solve import PlanInfeasible

    models = [{"name": "m", **_variant("m", {"cpu": 50.0}), "classes": [{"name": "c", "target_ms": 200}], "load": 200.0}]
    req = _request([{"name": "cpu", "price_per_hour": 0.1, "available": 3}], models, {"kind": "min_cost"})
    with pytest.raises(PlanInfeasible, match="cpu x3"):
        make_plan(req)


def test_a_higher_priority_class_is_not_slowed_by_a_lower_one() -> None:
    """With priorities the tight class only waits behind its own load: fewer replicas than when both
    classes must meet the tight target's queue."""
    classes = [{"name": "gold", "target_ms": 120, "priority": 1}, {"name": "bulk", "target_ms": 2000, "attainment": 0.95}]
    load = {"gold": 20.0, "bulk": 60.0}

    def plan(prio_gold: int) -> Plan:
        cls = [dict(classes[0], priority=prio_gold), classes[1]]
        return make_plan(_request([{"name": "cpu", "price_per_hour": 0.1}],
                                  [{"name": "m", **_variant("m", {"cpu": 50.0}), "classes": cls, "load": load}],
                                  {"kind": "min_cost"}))

    assert plan(1).count("m", "cpu") < plan(0).count("m", "cpu")
    assert plan(1).outcome("m", "gold").within_target >= 0.99


def test_a_plan_holds_its_curves_when_the_shared_cache_is_emptied_between_its_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache of capacity curves is emptied past its size; a request of many curves emptied it
    between its classes' curves and those behind higher priorities, and lost the first: a 500
    KeyError for a valid request (40 models x 5 variants x 8 classes)."""
    from allocator.planner import groups

    classes = [{"name": "gold", "target_ms": 120, "priority": 1}, {"name": "bulk", "target_ms": 2000}]
    model = {"name": "m", **_variant("m", {"cpu": 50.0}), "classes": classes, "load": {"gold": 20.0, "bulk": 60.0}}
    expected = make_plan(_request([{"name": "cpu", "price_per_hour": 0.1}], [dict(model)], {"kind": "min_cost"}))
    monkeypatch.setattr(groups, "MAX_CACHED_CURVES", 0)  # emptied at every step
    groups._CURVES.clear()
    again = make_plan(_request([{"name": "cpu", "price_per_hour": 0.1}], [dict(model)], {"kind": "min_cost"}))
    assert again.count("m", "cpu") == expected.count("m", "cpu") > 0


def test_a_costly_change_keeps_the_current_pool() -> None:
    model = {"name": "m", **_variant("m", {"fast": 20.0, "slow": 60.0}), "classes": [{"name": "c", "target_ms": 300}],
             "load": 30.0}
    fresh = make_plan(_request(TWO_TYPES, [dict(model)], {"kind": "min_cost"}))
    current = [{"model": "m", "type": "slow", "count": 4}]
    cheap_change = make_plan(_request(TWO_TYPES, [dict(model)], {"kind": "min_cost"}, current=current,
                                      change_cost={"start": 0.0}))
    costly_change = make_plan(_request(TWO_TYPES, [dict(model)], {"kind": "min_cost"}, current=current,
                                       change_cost={"start": 50.0}))
    assert fresh.cost_per_hour == cheap_change.cost_per_hour
    assert costly_change.count("m", "fast") == 0 and costly_change.change_cost == 0.0
    assert cheap_change.changes or fresh.count("m", "slow") == 4


def test_free_changes_plan_as_if_nothing_ran_and_a_running_twin_variant_is_kept() -> None:
    """With stops and starts free, the current pool is no floor (the plan kept 4 where 3 carry the
    load). A variant that another one of the same speed would replace is kept where it runs, when
    stopping costs more than running it (its stop cost was charged, but not seen by the program)."""
    from gateway.profiles import load_profiles

    base = {"types": [{"name": "r5n.large", "price_per_hour": 0.149}], "objective": {"kind": "min_cost"}}
    free = parse_plan_request({**base, "models": [{"name": "rm2", "classes": [{"name": "d", "target_ms": 1000}],
                                                   "load": 26}],
                               "current": [{"model": "rm2", "variant": "rm2", "type": "r5n.large", "count": 6}],
                               "change_cost": {"start": 0, "stop": 0}}, load_profiles())
    fresh = make_plan(replace(free, current=()))
    assert make_plan(free).count("rm2", "r5n.large") == fresh.count("rm2", "r5n.large") == 3
    twins = parse_plan_request({**base, "models": [{"name": "rm2", "load": 10, "classes": [{"name": "d", "target_ms": 1000}],
                                                    "variants": [{"name": "a", "profile": "rm2"}, {"name": "b", "profile": "rm2"}]}],
                                "current": [{"model": "rm2", "variant": "b", "type": "r5n.large", "count": 4}],
                                "change_cost": {"start": 5, "stop": 5}}, load_profiles())
    plan = make_plan(twins)
    assert plan.count("rm2", "r5n.large", "b") == 4 and plan.count("rm2", "r5n.large", "a") == 0
    assert plan.change_cost == 0 and plan.objective_value == pytest.approx(plan.cost_per_hour + plan.change_cost)


def test_a_forecast_is_planned_at_the_requested_quantile() -> None:
    def plan(q: float) -> Plan:
        model = {"name": "m", **_variant("m", {"fast": 20.0}), "classes": [{"name": "c", "target_ms": 300}],
                 "load": {"c": {"quantiles": {"0.5": 50.0, "0.9": 120.0}}}}
        return make_plan(_request([TWO_TYPES[0]], [model], {"kind": "min_cost", "load_quantile": q}))

    low, high = plan(0.5), plan(0.9)
    assert low.outcome("m", "c").load_qps == pytest.approx(50.0)
    assert high.outcome("m", "c").load_qps == pytest.approx(120.0)
    assert high.count("m", "fast") > low.count("m", "fast")


def test_under_a_cap_the_utility_objective_uses_the_spare_replicas() -> None:
    """Capacity left under the cap goes to the models (headroom for free); min_cost leaves it idle."""
    models = [
        {"name": "a", **_variant("a", {"cpu": 50.0}), "classes": [{"name": "c", "target_ms": 400}], "load": 30.0},
        {"name": "b", **_variant("b", {"cpu": 50.0}), "classes": [{"name": "c", "target_ms": 400}], "load": 10.0},
    ]
    types = [{"name": "cpu", "price_per_hour": 0.1, "available": 10}]
    spread = make_plan(_request(types, [dict(m) for m in models], {"kind": "utility"}))
    cheap = make_plan(_request(types, [dict(m) for m in models], {"kind": "min_cost"}))
    assert sum(a.count for a in spread.allocations) == 10
    assert sum(a.count for a in cheap.allocations) < 10
    assert spread.count("a", "cpu") > spread.count("b", "cpu")  # the busier model gets more of the spare
    assert all(c.dropped == 0 for c in spread.classes)


def _finishes(req: PlanRequest, within_s: float = 20.0) -> Plan:
    """make_plan in a thread that must end (a loop without end would hang the test run)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(make_plan, req).result(timeout=within_s)
    finally:
        pool.shutdown(wait=False)


def test_spare_replicas_go_only_where_a_limit_bounds_them() -> None:
    """One type capped, another not, no cap on units or cost: the uncapped type gets no spare
    replicas (they would only cost, without end; the spreading looped for ever)."""
    models = [{"name": "a", **_variant("a", {"gpu": 20.0, "cpu": 50.0}), "classes": [{"name": "c", "target_ms": 400}],
               "load": 30.0}]
    types = [{"name": "gpu", "price_per_hour": 0.5, "available": 1}, {"name": "cpu", "price_per_hour": 0.1}]
    spread = _finishes(_request(types, [dict(m) for m in models], {"kind": "utility"}))
    cheap = make_plan(_request(types, [dict(m) for m in models], {"kind": "min_cost"}))
    assert spread.count("a", "gpu") <= 1 and spread.count("a", "cpu") <= cheap.count("a", "cpu") + 1
    # A huge cap on units: spare replicas stop at a few times what the plan needs.
    big = _finishes(_request(types, [dict(m) for m in models], {"kind": "utility"}, max_units=100_000))
    assert sum(a.count for a in big.allocations) <= 4 * sum(a.count for a in cheap.allocations) + 64


def test_a_plan_not_found_in_time_is_a_timeout_not_infeasible(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS stopped by its time limit before a first plan: no verdict on the request (it was
    reported as "does not fit within the limits"). Whether HiGHS finds a first plan within its
    time limit depends on the machine's speed, so its answer is made the one it gives when it
    does not: the real solve, its result replaced."""
    import scipy.optimize

    import allocator.planner.solve as solve
    from allocator.planner.solve import PlanTimeout
    from gateway.profiles import load_profiles

    def out_of_time(*args: object, **kwargs: object) -> scipy.optimize.OptimizeResult:
        real = scipy.optimize.milp(*args, **kwargs)
        return scipy.optimize.OptimizeResult(x=None, status=1, message="Time limit reached", fun=None,
                                             success=False, mip_gap=real.get("mip_gap"))

    monkeypatch.setattr(solve, "milp", out_of_time)

    models = [{"name": f"m{i}", "profile": "rm2", "load": {"a": 5, "p": 5},
               "classes": [{"name": "a", "target_ms": 350}, {"name": "p", "target_ms": 700}]} for i in range(200)]
    raw = {"types": [{"name": "g4dn.xlarge", "price_per_hour": 0.526}, {"name": "r5n.large", "price_per_hour": 0.149}],
           "models": models, "objective": {"kind": "min_cost"}, "budget_per_hour": 1e6, "time_limit_s": 0.01}
    with pytest.raises(PlanTimeout, match=r"time limit \(0.01 s\)"):
        make_plan(parse_plan_request(raw, load_profiles()))
