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

import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from allocator.planner.groups import Group, ModelTables, build_tables
from allocator.planner.request import Objective, PlanRequest
from gateway.errors import KairosError

MAX_ROUNDS = 1  # MILP rounds after the relaxation's guess: a second changed no plan in benchmarks.planner.speed
WORKERS = 2  # blocks solved at once (HiGHS releases the GIL)
MAX_GROUP_REPLICAS = 10 * 8192  # the most replicas of one variant on one type the program considers
SPREAD_FACTOR, SPREAD_MIN = 4, 64  # a utility plan's spare replicas: at most 4x its own (or 64)
_TOL = 1e-9


class PlanInfeasible(KairosError):
    """No plan meets the request; the message says why."""


class PlanTimeout(PlanInfeasible):
    """The solver found no plan within the request's time limit (one may exist)."""


@dataclass(frozen=True)
class Layout:
    """Where each variable sits in the solver's vector."""

    groups: list[Group]
    x_key: list[tuple[int, int, int, int]]  # (model, class, batch class, group index)
    d_key: list[tuple[int, int, int]]  # (model, class, batch class)
    loads: dict[tuple[int, int], float]  # (model, class) -> queries/s planned for
    mass: dict[tuple[int, int], float]  # (model, batch class) -> its share of the model's queries
    priority: dict[tuple[int, int], int]  # (model, class) -> its priority
    group_model: np.ndarray  # (G,) model of each group
    x_group: np.ndarray  # (X,) group of each x
    x_model: np.ndarray  # (X,) model of each x
    x_busy: np.ndarray  # (X,) replicas kept busy per query/s of each x (its class's mean service, s)
    x_priority: np.ndarray  # (X,) priority of each x's class
    n_upper: np.ndarray  # (G,) the most replicas a group could need (or may have)
    n0: int = 0
    u0: int = 0
    x0: int = 0
    d0: int = 0
    up0: int = 0
    down0: int = 0
    z: int = 0  # fairness: the worst share served
    size: int = 0

    def in_block(self, block: list[int]) -> np.ndarray:
        """(G,) bool: the groups of the models in ``block``."""
        return np.isin(self.group_model, block)

    @functools.cached_property
    def x_of_demand(self) -> dict[tuple[int, int, int], list[int]]:
        """(model, class, batch class) -> the x indices that serve it."""
        out: dict[tuple[int, int, int], list[int]] = {}
        for j, (mi, k, ci, _gi) in enumerate(self.x_key):
            out.setdefault((mi, k, ci), []).append(j)
        return out

    @functools.cached_property
    def x_of_group(self) -> list[np.ndarray]:
        """Per group, the indices of its x."""
        order = np.argsort(self.x_group, kind="stable")
        at = np.searchsorted(self.x_group[order], np.arange(len(self.groups) + 1))
        return [order[at[gi] : at[gi + 1]] for gi in range(len(self.groups))]


@dataclass
class Solution:
    layout: Layout
    tables: list[ModelTables]
    values: np.ndarray
    rounds: int
    status: str
    wall_s: float

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
    values = np.zeros(lay.size)
    rounds, statuses = 0, set()
    deadline = started + req.time_limit_s
    blocks = _blocks(req, lay)
    with ThreadPoolExecutor(min(WORKERS, len(blocks))) as pool:
        found = list(pool.map(lambda b: _solve_block(req, lay, tables, b, deadline), blocks))
    for sol in found:
        if sol is None:
            raise PlanInfeasible(_why_infeasible(req, lay))
        values += sol.values
        rounds = max(rounds, sol.rounds)
        statuses.add(sol.status)
    status = "optimal" if statuses == {"optimal"} else "; ".join(sorted(statuses - {"optimal"}))
    return Solution(lay, tables, values, rounds, status, time.perf_counter() - started)


def _blocks(req: PlanRequest, lay: Layout) -> list[list[int]]:
    """Models that can be planned apart: all together when a limit or the fairness term spans them."""
    models = list(range(len(req.models)))
    coupled = req.max_units is not None or req.budget_per_hour is not None or (
        req.objective.kind == "utility" and req.objective.fairness > 0
    )
    for t in req.types:
        if t.available is not None and len({g.model for g in lay.groups if g.type == t.name}) > 1:
            coupled = True
    return [models] if coupled else [[m] for m in models]


def _solve_block(
    req: PlanRequest, lay: Layout, tables: list[ModelTables], block: list[int], deadline: float
) -> Solution | None:
    """Successive linearisation for the models in ``block`` (the others' variables stay 0)."""
    in_block = lay.in_block(block)
    at = _optimistic_guess(req, lay)  # where each group's tangents touch its curves
    # A first guess at n from the linear relaxation: much cheaper than a MILP round.
    relaxed = _solve_once(req, lay, _lines(lay, in_block, at), max(deadline - time.perf_counter(), 0.05), block, relax=True)
    if relaxed is not None:
        at = np.maximum(np.ceil(relaxed[0][lay.n0 : lay.n0 + len(lay.groups)] - 1e-6), 1.0)
    best: Solution | None = None
    last_n: np.ndarray | None = None
    for rounds in range(1, MAX_ROUNDS + 1):
        lines = _lines(lay, in_block, at)
        remaining = deadline - time.perf_counter()
        if remaining <= 0 and best is not None:
            break
        res = _solve_once(req, lay, lines, max(remaining, 0.05), block)
        if res is None:
            break
        values, status = res
        sol = Solution(lay, tables, values, rounds, status, 0.0)
        n = sol.n()
        if _valid(lay, sol) and (best is None or objective_value(req, lay, values) <= objective_value(req, lay, best.values) + 1e-9):
            best = sol
        used = in_block & (n > 0)
        if np.array_equal(n[used], at[used]) or (last_n is not None and np.array_equal(n, last_n)):
            break  # the tangents touch the curves where the plan is: exact there
        last_n = n
        at = np.maximum(n, 1)
    if best is not None:
        _trim(req, lay, best, in_block)
        if req.objective.kind == "utility":
            best = _spread(req, lay, best, block, deadline) or best
    return best


def _spread(req: PlanRequest, lay: Layout, sol: Solution, block: list[int], deadline: float) -> Solution | None:
    """Under a cap, capacity left over goes, one replica at a time, to the group running closest to
    its curve (the least headroom); the routing and drops are then solved again for that pool."""
    in_block = lay.in_block(block)
    n = sol.n().astype(float)
    loads = offered_loads(lay, sol.x())
    units = np.array([req.type(g.type).units for g in lay.groups])
    price = np.array([req.type(g.type).price_per_hour for g in lay.groups])
    room = {t.name: (t.available - n[[gi for gi, g in enumerate(lay.groups) if g.type == t.name]].sum())
            if t.available is not None else np.inf for t in req.types}
    total_units = req.max_units - float(units @ n) if req.max_units is not None else np.inf
    budget = req.budget_per_hour - float(price @ n) if req.budget_per_hour is not None else np.inf
    # A group whose additions no limit bounds gets none (a type without a cap, and no cap on units
    # or cost that it spends): spare replicas would only cost, without end.
    bounded = np.array([room[g.type] < np.inf or (total_units < np.inf and units[gi] > 0)
                        or (budget < np.inf and price[gi] > 0) for gi, g in enumerate(lay.groups)])
    if not (bounded & in_block).any():
        return None
    # Past a few times the plan's own replicas, more capacity helps no one's latency.
    most = max(SPREAD_FACTOR * int(n[in_block].sum()), SPREAD_MIN)
    added = 0
    while added < most and time.perf_counter() < deadline:
        best_gi, best_pressure = -1, 0.0
        for gi, g in enumerate(lay.groups):
            if (not in_block[gi] or not bounded[gi] or room[g.type] < 1 or units[gi] > total_units
                    or price[gi] > budget):
                continue
            pressure = max((loads[(gi, k)] / max(g.carries(k, max(n[gi], 1)), 1e-9) for k in _classes_of(g)), default=0.0)
            demand = sum(lay.loads[(g.model, k)] for k in range(len(req.models[g.model].classes)))
            if demand > 0 and pressure >= best_pressure and (pressure > 0 or n[gi] > 0):
                best_gi, best_pressure = gi, pressure
        if best_gi < 0:
            break
        n[best_gi] += 1
        room[lay.groups[best_gi].type] -= 1
        total_units -= units[best_gi]
        budget -= price[best_gi]
        added += 1
    if not added:
        return None
    lines = _lines(lay, in_block, np.maximum(n, 1))
    res = _solve_once(req, lay, lines, max(deadline - time.perf_counter(), 0.05), block, fixed_n=n)
    if res is None:
        return None
    return Solution(lay, sol.tables, res[0], sol.rounds, res[1], 0.0)


def _trim(req: PlanRequest, lay: Layout, sol: Solution, in_block: np.ndarray) -> None:
    """Take replicas off while the routed load still fits the exact curves (the tangents are
    conservative away from where they touch): the same plan, cheaper."""
    loads = offered_loads(lay, sol.x())
    current = current_counts(req, lay)
    for gi in np.flatnonzero(in_block).tolist():
        g = lay.groups[gi]
        n = round(float(sol.values[lay.n0 + gi]))
        needed = [(loads[(gi, k)], k) for k in _classes_of(g) if loads[(gi, k)] > 1e-9]
        # Below the current pool only where a stop costs less than an hour of the instance.
        keep = current[gi] if req.stop_cost >= req.type(g.type).price_per_hour else 0
        while n > max(keep, 1 if needed else 0) and all(
            load <= g.carries(k, n - 1) * (1 - 1e-9) for load, k in needed
        ):
            n -= 1
        sol.values[lay.n0 + gi] = n
        sol.values[lay.u0 + gi] = 1.0 if n > 0 else 0.0
        sol.values[lay.up0 + gi] = max(n - current[gi], 0.0)
        sol.values[lay.down0 + gi] = max(current[gi] - n, 0.0)


def _lines(lay: Layout, in_block: np.ndarray, at: np.ndarray) -> dict[tuple[int, int], tuple[float, float]]:
    return {(gi, k): _line(g, k, at[gi]) for gi, g in enumerate(lay.groups) if in_block[gi] for k in _classes_of(g)}


def _classes_of(g: Group) -> list[int]:
    return [k for k, c in enumerate(g.curves) if c is not None]


def _line(g: Group, k: int, n0: float) -> tuple[float, float]:
    return g.curve(k).line_at(max(float(n0), 1.0))


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
    x_group = np.array([k[3] for k in x_key], dtype=np.int64)
    return Layout(
        groups, x_key, d_key, loads, mass, priority,
        np.array([g.model for g in groups], dtype=np.int64),
        x_group,
        np.array([k[0] for k in x_key], dtype=np.int64),
        np.array([groups[k[3]].service_s[k[2]] for k in x_key], dtype=float),
        np.array([priority[(k[0], k[1])] for k in x_key], dtype=np.int64),
        _n_upper(req, groups, loads),
        n0, u0, x0, d0, up0, down0, z, z + 1,
    )


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
    # A tangent touches no further out than the group may go: one at 10 replicas of a type capped
    # at 1 is far below the curve at 1, and made a feasible plan look infeasible.
    return np.minimum(guess, np.maximum(lay.n_upper, 1.0))


def cost_vectors(req: PlanRequest, lay: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: price per hour, cost of starting one, of stopping one (changes count only when the
    request gives the current pool)."""
    price = np.array([req.type(g.type).price_per_hour for g in lay.groups])
    if not req.current:
        return price, np.zeros(len(lay.groups)), np.zeros(len(lay.groups))
    start = np.array([req.start_cost_of(g.type) for g in lay.groups])
    return price, start, np.full(len(lay.groups), req.stop_cost)


def _objective_vector(req: PlanRequest, lay: Layout) -> np.ndarray:
    c = np.zeros(lay.size)
    n_g = len(lay.groups)
    price, start, stop = cost_vectors(req, lay)
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


def objective_value(req: PlanRequest, lay: Layout, values: np.ndarray) -> float:
    return float(_objective_vector(req, lay) @ values)


def _solve_once(
    req: PlanRequest,
    lay: Layout,
    lines: dict[tuple[int, int], tuple[float, float]],
    time_limit: float,
    block: list[int] | None = None,
    relax: bool = False,
    fixed_n: np.ndarray | None = None,
) -> tuple[np.ndarray, str] | None:
    """One MILP with the given tangents, over the models in ``block`` (default: all); ``relax``: its
    linear relaxation; ``fixed_n``: the pool is given, its exact capacities replace the tangents."""
    if fixed_n is not None:
        lines = {(gi, k): (0.0, lay.groups[gi].carries(k, fixed_n[gi])) for gi, k in lines}
    n_g = len(lay.groups)
    models = set(range(len(req.models)) if block is None else block)
    g_in = lay.in_block(list(models))
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
    by_demand = lay.x_of_demand
    for jd, (mi, k, ci) in enumerate(lay.d_key):
        if mi in models:
            demand = lay.mass[(mi, ci)] * lay.loads[(mi, k)]
            row([*((lay.x0 + j, 1.0) for j in by_demand.get((mi, k, ci), [])), (lay.d0 + jd, 1.0)], demand, demand)
    # Capacity per (group, class): the load at that class's priority or above.
    for gi, g in enumerate(lay.groups):
        if not g_in[gi]:
            continue
        js = lay.x_of_group[gi]
        for k in _classes_of(g):
            slope, intercept = lines[(gi, k)]
            sel = js[lay.x_priority[js] >= lay.priority[(g.model, k)]]
            if sel.size:
                row([*zip((lay.x0 + sel).tolist(), lay.x_busy[sel].tolist(), strict=True),
                     (lay.n0 + gi, -slope), (lay.u0 + gi, -intercept)], -np.inf, 0.0)
    # u <= n <= N u
    n_max = lay.n_upper if fixed_n is None else np.maximum(lay.n_upper, fixed_n)
    for gi in np.flatnonzero(g_in).tolist():
        row([(lay.u0 + gi, 1.0), (lay.n0 + gi, -1.0)], -np.inf, 0.0)
        row([(lay.n0 + gi, 1.0), (lay.u0 + gi, -float(n_max[gi]))], -np.inf, 0.0)
    # Per type availability, the cluster cap and the budget.
    for t in req.types:
        if t.available is not None:
            entries = [(lay.n0 + gi, 1.0) for gi, g in enumerate(lay.groups) if g.type == t.name and g_in[gi]]
            if entries:
                row(entries, -np.inf, float(t.available))
    if req.max_units is not None:
        row([(lay.n0 + gi, req.type(g.type).units) for gi, g in enumerate(lay.groups) if g_in[gi]], -np.inf,
            req.max_units)
    if req.budget_per_hour is not None:
        row([(lay.n0 + gi, req.type(g.type).price_per_hour) for gi, g in enumerate(lay.groups) if g_in[gi]],
            -np.inf, req.budget_per_hour)
    # Changes from the current pool: up >= n - cur, down >= cur - n.
    current = current_counts(req, lay)
    for gi in np.flatnonzero(g_in).tolist():
        row([(lay.up0 + gi, 1.0), (lay.n0 + gi, -1.0)], -float(current[gi]), np.inf)
        row([(lay.down0 + gi, 1.0), (lay.n0 + gi, 1.0)], float(current[gi]), np.inf)
    # Fairness: z <= share served of every (model, class) with load.
    fair = req.objective.kind == "utility" and req.objective.fairness > 0
    if fair:
        by_mk: dict[tuple[int, int], list[int]] = {}
        for jd, (mi, k, _ci) in enumerate(lay.d_key):
            by_mk.setdefault((mi, k), []).append(jd)
        for (mi, k), jds in by_mk.items():
            if mi in models and req.models[mi].classes[k].utility_weight > 0:
                row([(lay.z, 1.0), *((lay.d0 + jd, 1.0 / lay.loads[(mi, k)]) for jd in jds)], -np.inf, 1.0)

    a = sparse.csr_matrix((vals, (rows, cols)), shape=(len(lo), lay.size))
    lb = np.zeros(lay.size)
    ub = np.full(lay.size, np.inf)
    ub[lay.n0 : lay.n0 + n_g] = np.where(g_in, n_max, 0.0)
    if fixed_n is not None:  # the routing and drops for a pool already chosen
        lb[lay.n0 : lay.n0 + n_g] = np.where(g_in, fixed_n, 0.0)
        ub[lay.n0 : lay.n0 + n_g] = lb[lay.n0 : lay.n0 + n_g]
        lb[lay.u0 : lay.u0 + n_g] = np.where(g_in & (fixed_n > 0), 1.0, 0.0)
    ub[lay.u0 : lay.u0 + n_g] = np.where(g_in, 1.0, 0.0)
    ub[lay.up0 : lay.up0 + n_g] = np.where(g_in, np.inf, 0.0)
    ub[lay.down0 : lay.down0 + n_g] = np.where(g_in, np.inf, 0.0)
    ub[lay.x0 : lay.x0 + len(lay.x_key)] = np.where(np.isin(lay.x_model, list(models)), np.inf, 0.0)
    drops = req.objective.kind == "utility" and req.objective.allow_drops
    for jd, (mi, k, ci) in enumerate(lay.d_key):
        ub[lay.d0 + jd] = lay.mass[(mi, ci)] * lay.loads[(mi, k)] if drops and mi in models else 0.0
    ub[lay.z] = 1.0 if fair else 0.0
    integrality = np.zeros(lay.size)
    integrality[lay.n0 : lay.n0 + 2 * n_g] = 0 if relax else 1
    # Only the block's columns go to the solver (the others are fixed at 0).
    active = np.flatnonzero(ub > 0)
    res = milp(
        _objective_vector(req, lay)[active],
        constraints=LinearConstraint(a[:, active], np.array(lo), np.array(hi)),
        integrality=integrality[active],
        bounds=Bounds(lb[active], ub[active]),
        options={"time_limit": max(time_limit, 0.05), "mip_rel_gap": 1e-2},
    )
    if res.x is None:
        if res.status == 1:  # the time limit, before any plan: not a verdict on the request
            raise PlanTimeout(f"no plan found within the time limit ({req.time_limit_s:g} s): raise time_limit_s")
        return None
    values = np.zeros(lay.size)
    values[active] = res.x
    return values, "optimal" if res.status == 0 else f"stopped ({res.message})"


def _n_upper(req: PlanRequest, groups: list[Group], loads: dict[tuple[int, int], float]) -> np.ndarray:
    out = np.zeros(len(groups))
    for gi, g in enumerate(groups):
        offered = sum(loads[(g.model, k)] for k in range(len(req.models[g.model].classes)))
        finite = g.service_s[np.isfinite(g.service_s)]
        worst = offered * float(finite.max()) if finite.size else 0.0
        first = min((float(c.at(1)) for c in g.curves if c is not None), default=0.0)
        bound = math.ceil(worst / max(first, 1e-3)) + 1 if worst > 0 else 0
        available = req.type(g.type).available
        out[gi] = min(bound, available if available is not None else bound, MAX_GROUP_REPLICAS)
    return out


def current_counts(req: PlanRequest, lay: Layout) -> np.ndarray:
    groups_of: dict[tuple[str, str, str], list[int]] = {}
    for gi, g in enumerate(lay.groups):
        m = req.models[g.model]
        groups_of.setdefault((m.name, m.variants[g.variant].name, g.type), []).append(gi)
    out = np.zeros(len(lay.groups))
    for cur in req.current:
        for gi in groups_of.get((cur.model, cur.variant, cur.type), ()):
            out[gi] += cur.count
    return out


def _valid(lay: Layout, sol: Solution) -> bool:
    """Every group's load fits its exact capacity curve at the solution's n."""
    n = sol.n()
    for (gi, k), load in offered_loads(lay, sol.x()).items():
        if load > 1e-9 and load > lay.groups[gi].carries(k, n[gi]) * (1 + 1e-6) + 1e-9:
            return False
    return True


def offered_loads(lay: Layout, x: np.ndarray) -> dict[tuple[int, int], float]:
    """Per (group, class k): the offered load (busy replicas) of the classes at k's priority or above."""
    busy = x * lay.x_busy
    out = {}
    for gi, g in enumerate(lay.groups):
        js = lay.x_of_group[gi]
        mine, prio = busy[js], lay.x_priority[js]
        for k in _classes_of(g):
            out[(gi, k)] = float(mine[prio >= lay.priority[(g.model, k)]].sum())
    return out


def _why_infeasible(req: PlanRequest, lay: Layout) -> str:
    """Name the limits and what the best plan within them would have to drop."""
    limits = [f"{t.name} x{t.available}" for t in req.types if t.available is not None]
    if req.max_units is not None:
        limits.append(f"at most {req.max_units:g} units")
    if req.budget_per_hour is not None:
        limits.append(f"a budget of {req.budget_per_hour:g} $/hour")
    if (lay.n_upper >= MAX_GROUP_REPLICAS).any():
        limits.append(f"at most {MAX_GROUP_REPLICAS:,} replicas of a variant on a type (the planner's own)")
    what = "; ".join(limits) or "no limit"
    relaxed = replace(req, objective=Objective("utility", allow_drops=True))
    n_max = lay.n_upper
    lines = {(gi, k): _line(g, k, n_max[gi]) for gi, g in enumerate(lay.groups) for k in _classes_of(g)}
    try:
        res = _solve_once(relaxed, lay, lines, max(req.time_limit_s, 1.0))
    except PlanTimeout:
        res = None
    if res is None:
        return f"no plan within the limits ({what}) meets the targets"
    d = res[0][lay.d0 : lay.d0 + len(lay.d_key)]
    dropped: dict[tuple[int, int], float] = {}
    for jd, (mi, k, _ci) in enumerate(lay.d_key):
        dropped[(mi, k)] = dropped.get((mi, k), 0.0) + float(d[jd])
    worst = sorted(((v / lay.loads[key], key) for key, v in dropped.items() if v > 1e-6), reverse=True)[:3]
    shares = ", ".join(
        f"{req.models[mi].name}/{req.models[mi].classes[k].name} {100 * share:.3g}%" for share, (mi, k) in worst
    )
    return (
        f"the load does not fit within the limits ({what}) at the targets: the best plan within them would "
        f"drop {shares or 'a little'} of the load; allow drops (objective utility) or raise the limits"
    )
