"""The planner check's oracle (the least pool that meets the targets) says when its search was cut
short, rather than counting the plan as its own least pool."""

from __future__ import annotations

import pytest

import benchmarks.planner.check as check
from allocator.planner.plan import make_plan
from allocator.planner.request import parse_plan_request


def test_a_search_cut_short_is_no_verdict(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = check._profiles()
    case = next(c for c in check.draw_cases(1, 0))  # rm2 at 10.4 q/s: cheaper pools carry it in the fluid limit
    req = parse_plan_request(case.raw, shipped)
    plan = make_plan(req)
    profiles = check.simulation_profiles(req, 0)
    monkeypatch.setattr(check, "ORACLE_SIMULATIONS", 0)
    least, sims, complete = check.least_pool(req, plan, 2000, 0, profiles)
    assert (sims, complete) == (0, False) and least == check._counts(plan, req.models[0].name)
    row = {"request": case.name, "meets": True, "unused": 0.3, "least_unused": 0.3, "cost_per_hour": 1.0,
           "least_cost_per_hour": 1.0, "solved_cost_per_hour": 1.0, "instances": 2, "removable": None,
           "oracle_complete": complete}
    check.summarise([row])
    assert f"the least-pool search was cut short for 1 ({case.name})" in capsys.readouterr().out
