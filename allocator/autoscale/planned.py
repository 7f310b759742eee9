"""Ours: forecast each model's load as quantiles, plan the pool with the planner, and react between
plans when the measurements say the forecast was wrong.

Every ``plan_every_s``: per model, the forecaster's quantiles for each step of the horizon (what
is started now serves only after its start-up delay, so the horizon covers the period and the
start-up), their maximum over the horizon per level, never below the rate measured in the last
``measure_s`` (30 s); then one plan request for all models (the template gives the types, models, classes and the
objective; the loop fills the loads and the current pool) and its counts as targets.

Safety: capacity goes up at once; it comes down only when the plans have wanted less for
``down_after_s`` in a row, one step at a time (``max_down``), and never below what the rate
measured now needs at ``max_utilisation`` (the mean service time of each group).
Between plans, each tick: a model whose queries ran over target (more than ``react_over`` of the
last tick's arrivals) while its ready instances were busy (at least ``react_util`` of what they
serve), or whose queue outgrew its instances, gets ``react_step`` more, if there is room and
none of its groups is growing already. A reaction soon after a plan took the group down (within
``down_after_s``) doubles the time the plans must want less before they take it down again (up
to 8x): a plan that keeps undoing what the measurements need would start and stop an instance
every few minutes. Late
queries on an idle pool (a slow network, a noisy host) are not a capacity problem: more instances
would not fix them, and on a 35 ms target they made the loop add one instance per tick.

A cluster out of room: when a group's instances are ``unschedulable`` (no node fits them, a quota
refused them), their type is capped at what it has placed for ``unschedulable_hold_s``: the plans
put the rest of the load on other types, the stuck instances are dropped at once, and the
reaction grows other groups. After the hold the type is tried again.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from allocator.autoscale.actuator import GroupKey
from allocator.autoscale.forecast import LEVELS, Forecaster
from allocator.autoscale.policies import Target
from allocator.autoscale.view import ClusterView, ModelView
from allocator.planner.plan import Plan, make_plan
from allocator.planner.request import parse_plan_request
from allocator.planner.solve import PlanInfeasible
from gateway.profiles import ProfileSet

FORECAST_LOG_PLANS = 20_160
MAX_DOWN_HOLD = 8.0

# The plan request without loads and pool: (model -> class -> load JSON, current pool JSON) -> request.
RequestTemplate = Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]


class PlannedPolicy:
    name = "planned"

    def __init__(
        self,
        template: RequestTemplate,
        forecaster: Forecaster,
        service_s: Mapping[GroupKey, float],
        *,
        profiles: ProfileSet | None = None,
        plan_every_s: float = 30.0,
        step_s: float = 60.0,
        horizon_s: float = 120.0,
        down_after_s: float = 120.0,
        measure_s: float = 30.0,
        max_down: int = 1,
        max_up: int = 8,
        max_utilisation: float = 0.9,
        react_over: float = 0.02,
        react_util: float = 0.6,
        react_queue: float = 2.0,
        react_step: int = 1,
        initial: Mapping[GroupKey, int] | None = None,
        unschedulable_hold_s: float = 600.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.template, self.forecaster, self.service_s = template, forecaster, dict(service_s)
        self.profiles = profiles or ProfileSet()
        self.plan_every_s, self.step_s, self.horizon_s = plan_every_s, step_s, horizon_s
        self.down_after_s, self.max_down, self.max_up = down_after_s, max_down, max_up
        self.measure_s = measure_s
        self.max_utilisation = max_utilisation
        self.react_over, self.react_queue, self.react_step = react_over, react_queue, react_step
        self.react_util = react_util
        self.start = dict(initial or {})
        self.forecasters: dict[str, Forecaster] = {}
        self.unschedulable_hold_s = unschedulable_hold_s
        self.type_caps: dict[str, tuple[int, float]] = {}  # type -> (instances it has room for, until)
        self.log = log
        self.next_plan_s = 0.0
        self.wanted_less_since: dict[GroupKey, float] = {}
        self.last_down_s: dict[GroupKey, float] = {}  # when a plan last took the group down
        self.down_hold: dict[GroupKey, float] = {}  # times down_after_s the plans must want less
        self.last_plan: Plan | None = None
        self.plan_time_s = 0.0
        self.plans = 0
        # (time, model -> the planned-for rates at the 10%, 50% and 90% levels), one per plan: the
        # latest FORECAST_LOG_PLANS (a week of plans every 30 s; a live loop runs for months)
        self.forecast_log: deque[tuple[float, dict[str, tuple[float, float, float]]]] = deque(
            maxlen=FORECAST_LOG_PLANS)

    def initial(self, view: ClusterView) -> dict[GroupKey, int]:
        return dict(self.start) if self.start else {k: 1 for m in view.models.values() for k in m.groups}

    # -- planning -------------------------------------------------------------------------------

    def forecaster_of(self, model: str) -> Forecaster:
        """The model's own copy of the forecaster: one that keeps state per series (gbm's fitted
        models, found by the series' tail) must not hand one model's fit to another."""
        if model not in self.forecasters:
            self.forecasters[model] = copy.deepcopy(self.forecaster)
        return self.forecasters[model]

    def load_of(self, m: ModelView) -> dict[str, Any]:
        """The model's load for the plan: per level, the forecast's maximum over the horizon (from
        now: the forecast's first step is the one in progress), never below the rate measured in
        the last ``measure_s``."""
        now = m.rate(self.measure_s)
        history = m.per_step(self.step_s)
        if history.size == 0:
            rates = np.full(len(LEVELS), now)
        else:
            horizon = max(1, math.ceil((self.horizon_s + m.step_elapsed_s(self.step_s)) / self.step_s - 1e-9))
            rates = np.maximum(self.forecaster_of(m.name).forecast(history, horizon, LEVELS).max(axis=0), now)
        rates = np.maximum.accumulate(np.maximum(rates, 0.0))
        return {"quantiles": {f"{lv:g}": round(float(r), 6) for lv, r in zip(LEVELS, rates, strict=True)}}

    def plan(self, view: ClusterView) -> Plan | None:
        loads = {name: self.load_of(m) for name, m in view.models.items()}
        self.forecast_log.append((view.now_s, {
            name: tuple(load["quantiles"][f"{lv:g}"] for lv in (0.1, 0.5, 0.9)) for name, load in loads.items()
        }))
        current = [{"model": k.model, "variant": k.variant, "type": k.type, "count": s.placed}
                   for m in view.models.values() for k, s in m.groups.items() if s.placed]
        request = self.template(loads, current)
        caps = self.caps(view.now_s)
        if caps:
            request = {**request, "types": [
                {**t, "available": min(caps[t["name"]], t.get("available") or caps[t["name"]])}
                if t["name"] in caps else t for t in request["types"]]}
        started = time.perf_counter()
        try:
            plan = make_plan(parse_plan_request(request, self.profiles))
        except PlanInfeasible as e:
            self._say(f"{view.now_s:.0f}s plan infeasible: {e}")
            return None
        finally:
            self.plan_time_s += time.perf_counter() - started
            self.plans += 1
        self.last_plan = plan
        if self.log:
            forecast = ", ".join(f"{name} {q['0.5']:.1f}/{q['0.9']:.1f} q/s" for name, q in
                                 ((n, load["quantiles"]) for n, load in loads.items()))
            pool = ", ".join(f"{a.count} x {a.variant}@{a.type}" for a in plan.allocations) or "nothing"
            self._say(f"{view.now_s:.0f}s plan for {forecast} (median/0.9 of the forecast): {pool}")
        return plan

    def caps(self, now_s: float) -> dict[str, int]:
        """Per type the cluster had no room for lately, the instances it has room for."""
        return {t: cap for t, (cap, until) in self.type_caps.items() if now_s < until}

    def note_unschedulable(self, view: ClusterView) -> None:
        """Cap each type with unschedulable instances at what it has placed, for the hold."""
        placed: dict[str, int] = {}
        stuck: dict[str, int] = {}
        for m in view.models.values():
            for k, s in m.groups.items():
                placed[k.type] = placed.get(k.type, 0) + s.placed
                stuck[k.type] = stuck.get(k.type, 0) + s.unschedulable
        for t, n in sorted(stuck.items()):
            if n:
                if t not in self.caps(view.now_s):
                    self._say(f"{view.now_s:.0f}s {n} instance(s) of {t} cannot be placed: planning with at most"
                              f" {placed[t]} of {t} for {self.unschedulable_hold_s:.0f}s")
                self.type_caps[t] = (placed[t], view.now_s + self.unschedulable_hold_s)

    def need(self, m: ModelView, key: GroupKey) -> int:
        """Instances the rate measured now needs at ``max_utilisation``, if all of it went to ``key``."""
        if key not in self.service_s:
            return 0
        return math.ceil(m.rate(self.measure_s) * self.service_s[key] / self.max_utilisation - 1e-9)

    def utilisation(self, m: ModelView) -> float:
        """The last tick's arrivals over what the ready instances serve at their mean service times."""
        capacity = sum(s.ready / self.service_s[k] for k, s in m.groups.items() if s.ready and k in self.service_s)
        return m.rate(m.tick_s) / capacity if capacity else math.inf

    # -- a tick ---------------------------------------------------------------------------------

    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        out: dict[GroupKey, Target] = {}
        self.note_unschedulable(view)
        if view.now_s + 1e-9 >= self.next_plan_s:
            self.next_plan_s = view.now_s + self.plan_every_s
            plan = self.plan(view)
            if plan is not None:
                out = self._from_plan(view, plan)
        for m in view.models.values():  # instances that cannot be placed serve no one: gone at once
            for key, s in m.groups.items():
                if s.unschedulable and (key not in out or out[key].replicas > s.placed):
                    out[key] = Target(s.placed, f"{s.unschedulable} of {key} cannot be placed:"
                                                f" {s.committed} -> {s.placed}")
        self._react(view, out)
        return out

    def _from_plan(self, view: ClusterView, plan: Plan) -> dict[GroupKey, Target]:
        out = {}
        for m in view.models.values():
            keys = set(m.groups) | {GroupKey(a.model, a.variant, a.type) for a in plan.allocations if a.model == m.name}
            for key in sorted(keys):
                state = m.groups.get(key)
                have = state.placed if state else 0
                want = plan.count(key.model, key.type, key.variant if key.variant != key.model else None)
                if want > have:
                    self.wanted_less_since.pop(key, None)
                    want = min(want, have + self.max_up)
                    out[key] = Target(want, f"plan: {have} -> {want} for {m.name}'s forecast")
                elif want < have:
                    since = self.wanted_less_since.setdefault(key, view.now_s)
                    floor = self.need(m, key) if len(keys) == 1 else 0
                    lower = max(want, have - self.max_down, floor)
                    if view.now_s - since >= self.down_after_s * self.down_hold.get(key, 1.0) and lower < have:
                        out[key] = Target(lower, f"plan: {have} -> {lower}, wanted fewer for {view.now_s - since:.0f}s")
                        self.wanted_less_since[key] = view.now_s
                        self.last_down_s[key] = view.now_s
                else:
                    self.wanted_less_since.pop(key, None)
        return out

    def _react(self, view: ClusterView, out: dict[GroupKey, Target]) -> None:
        free = view.free_units
        for m in view.models.values():
            if not m.windows or not m.groups:
                continue
            w = m.windows[-1]
            over = w.over_target / w.arrivals if w.arrivals else 0.0
            ready = max(m.ready, 1)
            late = over > self.react_over and self.utilisation(m) >= self.react_util
            if not late and w.queued <= self.react_queue * ready:
                continue
            caps = self.caps(view.now_s)
            room = [k for k, s in m.groups.items() if k in self.service_s and k.type not in caps]
            if not room:
                continue
            if any(s.starting or (k in out and out[k].replicas > s.committed) for k, s in m.groups.items()):
                continue  # already growing: what is starting will help
            key = min(room, key=lambda k: self.service_s[k])  # the fastest group absorbs the surprise
            have = m.groups[key].committed
            base = out[key].replicas if key in out else have
            step = self.react_step if free is None else min(self.react_step, free)
            if step <= 0:
                continue
            out[key] = Target(base + step, f"react: {over:.1%} over target, {w.queued} queued on {m.ready} ready")
            self.wanted_less_since.pop(key, None)
            if view.now_s - self.last_down_s.get(key, -math.inf) <= self.down_after_s:
                self.down_hold[key] = min(2.0 * self.down_hold.get(key, 1.0), MAX_DOWN_HOLD)
            if free is not None:
                free -= step

    def _say(self, line: str) -> None:
        if self.log:
            self.log(line)
