"""The planner's mixed-integer program, solved with HiGHS (``scipy.optimize.milp``).

Variables: n[g] replicas of each group (variant on type, integer), u[g] whether it runs (binary),
x[j] the rate of one (model, class, batch class) sent to one group, d[i] the rate dropped of one
(model, class, batch class), and for changes from the current pool up[g] / down[g].
- every query of a (model, class, batch class) is served or dropped: sum_g x + d = p_c * load;
- per group and class k, the load of classes at k's priority or above fits the capacity curve of k's
  target: sum s_c * x <= slope * n + intercept * u (the curve's tangent, see ``capacity``);
- u <= n <= N * u; per type, sum n <= available; sum units * n <= max_units; cost <= budget.
The tangents start at an optimistic guess and move to each solution's n until n settles; every
solution after the first is valid for the exact curve, and each is at least as good as the last.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from allocator.planner.groups import Group, ModelTables, build_tables
from allocator.planner.request import Objective, PlanRequest
from gateway.errors import KairosError

MAX_ROUNDS = 5
_TOL = 1e-9


class PlanInfeasible(KairosError):
    """No plan meets the request; the message says why."""


@dataclass(frozen=True)
class Layout:
    """Where each variable sits in the solver's vector."""

    groups: list[Group]
    x_key: list[tuple[int, int, int, int]]  # (model, class, batch class, group index)
    d_key: list[tuple[int, int, int]]  # (model, class, batch class)
    loads: dict[tuple[int, int], float]  # (model, class) -> queries/s planned for
    mass: dict[tuple[int, int], float]  # (model, batch class) -> its share of the model's queries
    priority: dict[tuple[int, int], int]  # (model, class) -> its priority
    n0: int = 0
    u0: int = 0
    x0: int = 0
    d0: int = 0
    up0: int = 0
    down0: int = 0
    z: int = 0  # fairness: the worst share served
    size: int = 0


@dataclass
class Solution:
    layout: Layout
    tables: list[ModelTables]
    values: np.ndarray
    rounds: int
    status: str
    wall_s: float
    lines: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)

    def n(self) -> np.ndarray:
        lay = self.layout
        return np.round(self.values[lay.n0 : lay.n0 + len(lay.groups)]).astype(np.int64)

    def x(self) -> np.ndarray:
        lay = self.layout
        return self.values[lay.x0 : lay.x0 + len(lay.x_key)]

    def d(self) -> np.ndarray:
        lay = self.layout
        return self.values[lay.d0 : lay.d0 + len(lay.d_key)]


def solve(req: PlanRequest) -> Solution:
    started = time.perf_counter()
    tables = build_tables(req)
    lay = _layout(req, tables)
    _check_servable(req, tables, lay)
    guess = _optimistic_guess(req, lay)
    best: Solution | None = None
    n_prev = guess
    for rounds in range(1, MAX_ROUNDS + 1):
        lines = {(gi, k): _line(g, k, n_prev[gi]) for gi, g in enumerate(lay.groups) for k in _classes_of(g)}
        remaining = req.time_limit_s - (time.perf_counter() - started)
        if remaining <= 0:
            break
        res = _solve_once(req, lay, lines, remaining)
        if res is None:
            if best is None and rounds > 1:
                break
            if best is None:
                raise PlanInfeasible(_why_infeasible(req, lay, tables))
            break
        values, status = res
        sol = Solution(lay, tables, values, rounds, status, 0.0, lines)
        n = sol.n()
        valid = _valid(lay, sol)
        if valid and (best is None or _objective(req, lay, values) <= _objective(req, lay, best.values) + 1e-9):
            best = sol
        if np.array_equal(n, n_prev) and valid:
            break
        n_prev = np.maximum(n, 1)
    if best is None:
        raise PlanInfeasible(_why_infeasible(req, lay, tables))
    best.wall_s = time.perf_counter() - started
    return best


def _classes_of(g: Group) -> list[int]:
    return [k for k, c in enumerate(g.curves) if c is not None]


def _line(g: Group, k: int, n0: float) -> tuple[float, float]:
    curve = g.curves[k]
    assert curve is not None
    return curve.line_at(max(float(n0), 1.0))


def _layout(req: PlanRequest, tables: list[ModelTables]) -> Layout:
    groups = [g for t in tables for g in t.groups]
    x_key, d_key = [], []
    loads = {}
    for mi, (m, t) in enumerate(zip(req.models, tables, strict=True)):
        for k, c in enumerate(m.classes):
            load = m.load[c.name].at(req.objective.load_quantile) if c.name in m.load else 0.0
            loads[(mi, k)] = load
            if load <= 0:
                continue
            for ci in range(len(t.mass)):
                d_key.append((mi, k, ci))
                for gi, g in enumerate(groups):
                    if g.model == mi and g.allowed[k, ci]:
                        x_key.append((mi, k, ci, gi))
    n_g = len(groups)
    n0, u0 = 0, n_g
    x0 = 2 * n_g
    d0 = x0 + len(x_key)
    up0 = d0 + len(d_key)
    down0 = up0 + n_g
    z = down0 + n_g
    mass = {(mi, ci): float(p) for mi, t in enumerate(tables) for ci, p in enumerate(t.mass)}
    priority = {(mi, k): c.priority for mi, m in enumerate(req.models) for k, c in enumerate(m.classes)}
    return Layout(groups, x_key, d_key, loads, mass, priority, n0, u0, x0, d0, up0, down0, z, z + 1)


def _check_servable(req: PlanRequest, tables: list[ModelTables], lay: Layout) -> None:
    """Without drops, every batch class with load must have a group that serves it."""
    if req.objective.kind == "utility" and req.objective.allow_drops:
        return
    served = {(mi, k, ci) for mi, k, ci, _ in lay.x_key}
    for mi, k, ci in lay.d_key:
        if (mi, k, ci) not in served:
            m, c = req.models[mi], req.models[mi].classes[k]
            size = int(tables[mi].sizes_top[ci])
            best = _fastest(req, mi, size, c.attainment)
            raise PlanInfeasible(
                f"no type serves {m.name}'s batch {size} within {c.target_ms:g} ms ({m.name}/{c.name}, "
                f"{c.attainment:.4g} of queries)" + (f"; fastest: {best}" if best else "")
            )


def _fastest(req: PlanRequest, mi: int, size: int, attainment: float) -> str:
    m = req.models[mi]
    options = []
    for v in m.variants:
        for t in req.types:
            if req.profiles.has(v.profile_model, t.name):
                p = req.profiles.get(v.profile_model, t.name)
                if size <= p.max_batch:
                    q = float(p.quantiles_for(np.array([size]), attainment)[0])
                    options.append((q, f"{v.name} on {t.name}" if len(m.variants) > 1 else t.name))
    if not options:
        return ""
    q, where = min(options)
    return f"{where} at {q:.1f} ms (p{attainment * 100:.4g} of its service time)"


def _optimistic_guess(req: PlanRequest, lay: Layout) -> np.ndarray:
    """A first n per group: as if it took all its model's load at the curve's best utilisation."""
    guess = np.ones(len(lay.groups))
    for gi, g in enumerate(lay.groups):
        offered = sum(lay.loads[(g.model, k)] for k in range(len(req.models[g.model].classes)))
        mean = float(np.nanmean(np.where(np.isfinite(g.service_s), g.service_s, np.nan)))
        guess[gi] = max(1.0, offered * mean)
    return guess


def _cost_vector(req: PlanRequest, lay: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    price = np.array([req.type(g.type).price_per_hour for g in lay.groups])
    start = np.array([
        req.start_cost if req.start_cost is not None else req.type(g.type).price_per_hour * req.type(g.type).startup_s / 3600
        for g in lay.groups
    ])
    stop = np.full(len(lay.groups), req.stop_cost)
    return price, start, stop


def _objective_vector(req: PlanRequest, lay: Layout) -> np.ndarray:
    c = np.zeros(lay.size)
    n_g = len(lay.groups)
    price, start, stop = _cost_vector(req, lay)
    obj = req.objective
    if obj.kind == "min_cost":
        weight = 1.0
    elif obj.kind == "accuracy":
        weight = obj.cost_weight
        total = sum(lay.loads.values())
        for j, (mi, _k, _ci, gi) in enumerate(lay.x_key):
            acc = req.models[mi].variants[lay.groups[gi].variant].accuracy or 0.0
            c[lay.x0 + j] = -acc / total
    else:
        weight = obj.cost_weight or 1e-7  # a tie-break: no instance that serves nothing
        wl = {key: req.models[key[0]].classes[key[1]].utility_weight * v for key, v in lay.loads.items()}
        total = sum(wl.values()) or 1.0
        for j, (mi, k, _ci) in enumerate(lay.d_key):
            c[lay.d0 + j] = (1.0 - obj.fairness) * req.models[mi].classes[k].utility_weight / total
        c[lay.z] = -obj.fairness
    c[lay.n0 : lay.n0 + n_g] = weight * price
    c[lay.up0 : lay.up0 + n_g] = weight * start
    c[lay.down0 : lay.down0 + n_g] = weight * stop
    return c


def _objective(req: PlanRequest, lay: Layout, values: np.ndarray) -> float:
    return float(_objective_vector(req, lay) @ values)


def _solve_once(
    req: PlanRequest, lay: Layout, lines: dict[tuple[int, int], tuple[float, float]], time_limit: float
) -> tuple[np.ndarray, str] | None:
    n_g = len(lay.groups)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lo.append(low)
        hi.append(high)

    # Coverage: sum_g x + d = p_c * load.
    by_demand: dict[tuple[int, int, int], list[int]] = {}
    for j, (mi, k, ci, _gi) in enumerate(lay.x_key):
        by_demand.setdefault((mi, k, ci), []).append(j)
    for jd, (mi, k, ci) in enumerate(lay.d_key):
        mass = lay.mass[(mi, ci)]
        demand = mass * lay.loads[(mi, k)]
        row([(lay.x0 + j, 1.0) for j in by_demand.get((mi, k, ci), [])] + [(lay.d0 + jd, 1.0)], demand, demand)
    # Capacity per (group, class): the load at that class's priority or above.
    by_group: dict[int, list[int]] = {}
    for j, (_mi, _k, _ci, gi) in enumerate(lay.x_key):
        by_group.setdefault(gi, []).append(j)
    for gi, g in enumerate(lay.groups):
        classes = req.models[g.model].classes
        for k in _classes_of(g):
            slope, intercept = lines[(gi, k)]
            entries = [
                (lay.x0 + j, float(g.service_s[lay.x_key[j][2]]))
                for j in by_group.get(gi, [])
                if classes[lay.x_key[j][1]].priority >= classes[k].priority
            ]
            if entries:
                row([*entries, (lay.n0 + gi, -slope), (lay.u0 + gi, -intercept)], -np.inf, 0.0)
    # u <= n <= N u
    n_max = _n_upper(req, lay)
    for gi in range(n_g):
        row([(lay.u0 + gi, 1.0), (lay.n0 + gi, -1.0)], -np.inf, 0.0)
        row([(lay.n0 + gi, 1.0), (lay.u0 + gi, -float(n_max[gi]))], -np.inf, 0.0)
    # Per type availability, the cluster cap and the budget.
    for t in req.types:
        if t.available is not None:
            entries = [(lay.n0 + gi, 1.0) for gi, g in enumerate(lay.groups) if g.type == t.name]
            if entries:
                row(entries, -np.inf, float(t.available))
    if req.max_units is not None:
        row([(lay.n0 + gi, req.type(g.type).units) for gi, g in enumerate(lay.groups)], -np.inf, req.max_units)
    if req.budget_per_hour is not None:
        row([(lay.n0 + gi, req.type(g.type).price_per_hour) for gi, g in enumerate(lay.groups)], -np.inf,
            req.budget_per_hour)
    # Changes from the current pool: up >= n - cur, down >= cur - n.
    current = _current_counts(req, lay)
    for gi in range(n_g):
        row([(lay.up0 + gi, 1.0), (lay.n0 + gi, -1.0)], -float(current[gi]), np.inf)
        row([(lay.down0 + gi, 1.0), (lay.n0 + gi, 1.0)], float(current[gi]), np.inf)
    # Fairness: z <= share served of every (model, class) with load.
    if req.objective.kind == "utility" and req.objective.fairness > 0:
        by_mk: dict[tuple[int, int], list[int]] = {}
        for jd, (mi, k, _ci) in enumerate(lay.d_key):
            by_mk.setdefault((mi, k), []).append(jd)
        for (mi, k), js in by_mk.items():
            load = lay.loads[(mi, k)]
            if req.models[mi].classes[k].utility_weight > 0:
                row([(lay.z, 1.0)] + [(lay.d0 + jd, 1.0 / load) for jd in js], -np.inf, 1.0)

    a = sparse.csr_matrix((vals, (rows, cols)), shape=(len(lo), lay.size))
    lb = np.zeros(lay.size)
    ub = np.full(lay.size, np.inf)
    ub[lay.n0 : lay.n0 + n_g] = n_max
    ub[lay.u0 : lay.u0 + n_g] = 1.0
    drops = req.objective.kind == "utility" and req.objective.allow_drops
    for jd, (mi, _k, ci) in enumerate(lay.d_key):
        ub[lay.d0 + jd] = lay.mass[(mi, ci)] * lay.loads[(mi, _k)] if drops else 0.0
    ub[lay.z] = 1.0 if req.objective.kind == "utility" and req.objective.fairness > 0 else 0.0
    integrality = np.zeros(lay.size)
    integrality[lay.n0 : lay.n0 + 2 * n_g] = 1
    res = milp(
        _objective_vector(req, lay),
        constraints=LinearConstraint(a, np.array(lo), np.array(hi)),
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options={"time_limit": max(time_limit, 0.05), "mip_rel_gap": 1e-4},
    )
    if res.x is None:
        return None
    return np.asarray(res.x), "optimal" if res.status == 0 else f"stopped ({res.message})"


def _n_upper(req: PlanRequest, lay: Layout) -> np.ndarray:
    out = np.zeros(len(lay.groups))
    for gi, g in enumerate(lay.groups):
        offered = sum(lay.loads[(g.model, k)] for k in range(len(req.models[g.model].classes)))
        finite = g.service_s[np.isfinite(g.service_s)]
        worst = offered * float(finite.max()) if finite.size else 0.0
        first = min((c.at(1).item() for c in g.curves if c is not None), default=0.0)
        bound = math.ceil(worst / max(first, 1e-3)) + 1 if worst > 0 else 0
        available = req.type(g.type).available
        out[gi] = min(bound, available if available is not None else bound, 10 * 8192)
    return out


def _current_counts(req: PlanRequest, lay: Layout) -> np.ndarray:
    out = np.zeros(len(lay.groups))
    for cur in req.current:
        for gi, g in enumerate(lay.groups):
            m = req.models[g.model]
            if m.name == cur.model and m.variants[g.variant].name == cur.variant and g.type == cur.type:
                out[gi] += cur.count
    return out


def _valid(lay: Layout, sol: Solution) -> bool:
    """Every group's load fits its exact capacity curve at the solution's n."""
    n = sol.n()
    x = sol.x()
    for gi, g in enumerate(lay.groups):
        for k in _classes_of(g):
            curve = g.curves[k]
            assert curve is not None
            load = offered_at(lay, gi, k, x)
            if load > 1e-9 and (n[gi] < 1 or load > float(curve.at(n[gi])) * (1 + 1e-6) + 1e-9):
                return False
    return True


def offered_at(lay: Layout, gi: int, k: int, x: np.ndarray) -> float:
    """Offered load (busy replicas) on group gi of the classes at class k's priority or above."""
    g = lay.groups[gi]
    floor = lay.priority[(g.model, k)]
    total = 0.0
    for j, (mi, kj, ci, gj) in enumerate(lay.x_key):
        if gj == gi and lay.priority[(mi, kj)] >= floor:
            total += float(x[j]) * float(g.service_s[ci])
    return total


def _why_infeasible(req: PlanRequest, lay: Layout, tables: list[ModelTables]) -> str:
    """Name the limits and what the best plan within them would have to drop."""
    limits = [f"{t.name} x{t.available}" for t in req.types if t.available is not None]
    if req.max_units is not None:
        limits.append(f"at most {req.max_units:g} units")
    if req.budget_per_hour is not None:
        limits.append(f"a budget of {req.budget_per_hour:g} $/hour")
    what = "; ".join(limits) or "no limit"
    relaxed = replace(req, objective=Objective("utility", allow_drops=True))
    n_max = _n_upper(req, lay)
    lines = {(gi, k): _line(g, k, n_max[gi]) for gi, g in enumerate(lay.groups) for k in _classes_of(g)}
    res = _solve_once(relaxed, lay, lines, max(req.time_limit_s, 1.0))
    if res is None:
        return f"no plan within the limits ({what}) meets the targets"
    d = res[0][lay.d0 : lay.d0 + len(lay.d_key)]
    dropped: dict[tuple[int, int], float] = {}
    for jd, (mi, k, _ci) in enumerate(lay.d_key):
        dropped[(mi, k)] = dropped.get((mi, k), 0.0) + float(d[jd])
    worst = sorted(((v / lay.loads[key], key) for key, v in dropped.items() if v > 1e-6), reverse=True)[:3]
    shares = ", ".join(
        f"{req.models[mi].name}/{req.models[mi].classes[k].name} {share:.0%}" for share, (mi, k) in worst
    )
    return (
        f"the load does not fit within the limits ({what}) at the targets: the best plan within them would "
        f"drop {shares or 'a little'} of the load; allow drops (objective utility) or raise the limits"
    )
