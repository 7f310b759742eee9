"""A plan: what to run (per model, variant and type), what it predicts per (model, class), what it
costs, and how the solver got there. ``make_plan`` is the planner's one entry point."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from allocator.planner.capacity import miss_probability
from allocator.planner.refine import Refinement, refine_model, simulation_profiles
from allocator.planner.request import PlanRequest
from allocator.planner.solve import (
    Solution,
    cost_vectors,
    objective_value,
    offered_loads,
    solve,
)


@dataclass(frozen=True, slots=True)
class Allocation:
    model: str
    variant: str
    type: str
    count: int
    rate_qps: float  # queries/s it is planned to serve
    utilisation: float  # offered load / replicas
    max_batch: int  # the largest batch size routed here (a batch limit for the instances)


@dataclass(frozen=True, slots=True)
class ClassOutcome:
    model: str
    service_class: str
    target_ms: float
    attainment: float
    load_qps: float
    within_target: float  # predicted share of its queries within target (drops count as misses)
    dropped: float  # share of its queries the plan drops
    utilisation: float  # of the instances that serve it, weighted by its traffic
    basis: str = "queueing model"  # or "simulation": the plan was refined and this was measured


@dataclass(frozen=True, slots=True)
class Change:
    model: str
    variant: str
    type: str
    before: int
    after: int


@dataclass(frozen=True)
class Plan:
    objective: str
    objective_value: float
    cost_per_hour: float
    change_cost: float
    served_accuracy: float | None  # traffic-weighted over served queries of variants with an accuracy
    allocations: tuple[Allocation, ...]
    classes: tuple[ClassOutcome, ...]
    changes: tuple[Change, ...]
    solver_status: str
    solver_rounds: int
    solver_time_s: float
    refinement: Refinement | None = None

    def count(self, model: str, type_name: str, variant: str | None = None) -> int:
        return sum(a.count for a in self.allocations
                   if a.model == model and a.type == type_name and a.variant == (variant or a.variant))

    def outcome(self, model: str, service_class: str) -> ClassOutcome:
        return next(c for c in self.classes if c.model == model and c.service_class == service_class)

    def to_json(self) -> dict[str, object]:
        return {
            "objective": {"kind": self.objective, "value": round(self.objective_value, 6)},
            "cost_per_hour": round(self.cost_per_hour, 6),
            "change_cost": round(self.change_cost, 6),
            "served_accuracy": None if self.served_accuracy is None else round(self.served_accuracy, 6),
            "allocations": [_rounded(asdict(a)) for a in self.allocations],
            "classes": [_rounded(asdict(c)) for c in self.classes],
            "changes": [asdict(c) for c in self.changes],
            "solver": {"status": self.solver_status, "rounds": self.solver_rounds, "time_s": round(self.solver_time_s, 4)},
            **({"refinement": {"moves": list(self.refinement.moves), "simulations": self.refinement.simulations,
                               "time_s": round(self.refinement.time_s, 4)}} if self.refinement else {}),
        }


def _rounded(d: dict[str, object]) -> dict[str, object]:
    return {k: round(float(v), 6) if isinstance(v, float) else v for k, v in d.items()}


def make_plan(req: PlanRequest) -> Plan:
    """Solve ``req``; PlanInfeasible says why when nothing meets it. With ``req.refine``, a least-cost
    plan is then trimmed in the simulator (``refined``)."""
    plan = describe(req, solve(req))
    return refined(req, plan) if req.refine is not None else plan


def _trimmable(req: PlanRequest, plan: Plan, model: str) -> bool:
    """A trim keeps the load served and (one variant) the accuracy served: only the cost moves."""
    kind = req.objective.kind
    return kind == "min_cost" or (kind == "accuracy" and len({a.variant for a in plan.allocations if a.model == model}) == 1)


def refined(req: PlanRequest, plan: Plan) -> Plan:
    """``plan`` with each model's pool made cheaper in the simulator where only the cost moves with
    it (least-cost plans; accuracy plans that run one variant of the model), and those models'
    rates, utilisations and shares within target as the simulator measured them."""
    assert req.refine is not None
    started = time.perf_counter()
    deadline = time.monotonic() + max(req.time_limit_s - plan.solver_time_s, 0.0)  # the request's time limit
    allocations: list[Allocation] = []
    outcomes: dict[tuple[str, str], ClassOutcome] = {}
    moves: list[str] = []
    sims = 0
    held = {m.name: {(a.variant, a.type): a.count for a in plan.allocations if a.model == m.name} for m in req.models}
    for mi, m in enumerate(req.models):
        counts = held[m.name]
        if not counts or not _trimmable(req, plan, m.name) or time.monotonic() >= deadline:
            if counts and time.monotonic() >= deadline:
                moves.append(f"{m.name}: not refined (the time limit)")
            allocations += [a for a in plan.allocations if a.model == m.name]
            continue
        others: dict[str, int] = {}
        for name, pool in held.items():
            if name != m.name:
                for (_v, t), n in pool.items():
                    others[t] = others.get(t, 0) + n
        now, run, made, n_sims = refine_model(req, mi, counts, req.refine, others, simulation_profiles(req, mi), deadline)
        held[m.name] = now
        sims += n_sims
        moves += made
        allocations += [Allocation(m.name, v, t, n, run.rate_qps.get((v, t), 0.0), run.utilisation.get((v, t), 0.0),
                                   run.max_batch.get((v, t), 0)) for (v, t), n in now.items()]
        for c in m.classes:
            served = [(run.rate_qps[k], run.utilisation[k]) for k in now if k in run.rate_qps]
            total = sum(r for r, _ in served)
            util = sum(r * u for r, u in served) / total if total > 0 else 0.0
            outcomes[(m.name, c.name)] = replace(plan.outcome(m.name, c.name), within_target=run.within[c.name],
                                                 utilisation=util, basis="simulation")
    classes = tuple(outcomes.get((c.model, c.service_class), c) for c in plan.classes)
    cost = sum(req.type(a.type).price_per_hour * a.count for a in allocations)
    changes = _changes(req, allocations)
    change_cost = sum(_change_cost(req, c) for c in changes)
    weight = 1.0 if req.objective.kind == "min_cost" else req.objective.cost_weight
    value = plan.objective_value + weight * (cost + change_cost - plan.cost_per_hour - plan.change_cost)
    return replace(plan, objective_value=value, cost_per_hour=cost, change_cost=change_cost,
                   served_accuracy=_served_accuracy(req, allocations),
                   allocations=tuple(allocations), classes=classes, changes=changes,
                   refinement=Refinement(tuple(moves), sims, time.perf_counter() - started))


def _served_accuracy(req: PlanRequest, allocations: list[Allocation]) -> float | None:
    """Traffic-weighted over the served queries of variants with an accuracy."""
    accuracy = {(m.name, v.name): v.accuracy for m in req.models for v in m.variants}
    num = den = 0.0
    for a in allocations:
        acc = accuracy.get((a.model, a.variant))
        if acc is not None:
            num += a.rate_qps * acc
            den += a.rate_qps
    return num / den if den > 0 else None


def describe(req: PlanRequest, sol: Solution) -> Plan:
    lay = sol.layout
    n, x, d = sol.n(), sol.x(), sol.d()
    price, _start, _stop = cost_vectors(req, lay)
    cost = float(price @ n)
    # the shares the plan uses, by group and by (model, class): one pass, not one per group or class
    by_group: dict[int, list[int]] = {}
    by_class: dict[tuple[int, int], list[int]] = {}
    for j, (mj, kj, _ci, gj) in enumerate(lay.x_key):
        if x[j] > 1e-12:
            by_class.setdefault((mj, kj), []).append(j)
            if x[j] > 1e-9:
                by_group.setdefault(gj, []).append(j)
    allocations = []
    group_util = np.zeros(len(lay.groups))
    for gi, g in enumerate(lay.groups):
        if n[gi] == 0:
            continue
        m = req.models[g.model]
        js = by_group.get(gi, [])
        group_util[gi] = sum(float(x[j]) * float(g.service_s[lay.x_key[j][2]]) for j in js) / n[gi]
        top = max((int(sol.tables[g.model].sizes_top[lay.x_key[j][2]]) for j in js), default=0)
        allocations.append(Allocation(m.name, m.variants[g.variant].name, g.type, int(n[gi]),
                                      float(sum(x[j] for j in js)), float(group_util[gi]), top))
    offered = offered_loads(lay, x)
    dropped_of: dict[tuple[int, int], float] = {}
    for jd, key in enumerate(lay.d_key):
        dropped_of[key[:2]] = dropped_of.get(key[:2], 0.0) + float(d[jd])
    classes = []
    for mi, m in enumerate(req.models):
        for k, c in enumerate(m.classes):
            load = lay.loads[(mi, k)]
            within = served_util = served = 0.0
            miss_of: dict[int, float] = {}  # a group's miss depends on its class, not the batch class
            for j in by_class.get((mi, k), []):
                gi = lay.x_key[j][3]
                if gi not in miss_of:
                    dist = lay.groups[gi].dists[k]
                    assert dist is not None
                    miss_of[gi] = float(miss_probability(dist, np.array(float(n[gi])), np.array(offered[(gi, k)]),
                                                         c.target_ms / 1000.0))
                within += float(x[j]) * (1.0 - miss_of[gi])
                served_util += float(x[j]) * group_util[gi]
                served += float(x[j])
            dropped = dropped_of.get((mi, k), 0.0)
            classes.append(ClassOutcome(
                m.name, c.name, c.target_ms, c.attainment, load,
                within / load if load > 0 else 1.0,
                dropped / load if load > 0 else 0.0,
                float(served_util / served) if served > 0 else 0.0,
            ))
    changes = _changes(req, allocations)
    return Plan(
        objective=req.objective.kind,
        objective_value=objective_value(req, lay, sol.values),
        cost_per_hour=cost,
        change_cost=sum(_change_cost(req, c) for c in changes),
        served_accuracy=_served_accuracy(req, allocations),
        allocations=tuple(allocations),
        classes=tuple(classes),
        changes=changes,
        solver_status=sol.status,
        solver_rounds=sol.rounds,
        solver_time_s=sol.wall_s,
    )


def _changes(req: PlanRequest, allocations: list[Allocation]) -> tuple[Change, ...]:
    """From the current pool to the plan, per (model, variant, type): also the current instances of a
    variant or type the plan has no use for (they are stopped)."""
    if not req.current:
        return ()
    before: dict[tuple[str, str, str], int] = {}
    for c in req.current:
        before[(c.model, c.variant, c.type)] = before.get((c.model, c.variant, c.type), 0) + c.count
    after = {(a.model, a.variant, a.type): a.count for a in allocations}
    keys = list(dict.fromkeys([*before, *after]))
    return tuple(Change(*k, before.get(k, 0), after.get(k, 0)) for k in keys if before.get(k, 0) != after.get(k, 0))


def _change_cost(req: PlanRequest, c: Change) -> float:
    return req.change_cost(c.type, c.before, c.after)
