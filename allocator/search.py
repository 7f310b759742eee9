"""Search over pools: rank by the paper's bound under a budget (enumeration, vectorised), find the
best pool by the fluid limit (MILP, for large catalogues), or the cheapest pool for a load."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from allocator.fluid import fluid_limit
from allocator.pool import Candidate, Pool
from allocator.problem import Problem
from allocator.space import SearchSpace
from gateway.errors import ConfigError

ENUMERATE_LIMIT = 2_000_000  # above this many pools in the (budget-capped) product space, use the MILP
COST_TIEBREAK = 1e-4  # QPS per $/hour: among equal limits prefer the cheaper pool


@dataclass(frozen=True)
class Ranking:
    mode: str  # "budget" or "load"
    method: str  # "enumerate" or "milp"
    candidates: list[Candidate]  # best first
    target_qps: float | None = None  # load mode: load * (1 + headroom)
    cloud_cost: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every enumerated pool, for plots
    cloud_bound: np.ndarray = field(default_factory=lambda: np.zeros(0))


def check_budget(space: SearchSpace, budget: float) -> None:
    if not np.isfinite(budget) or budget < 0:
        raise ConfigError(f"budget must be a non-negative number of $/hour, got {budget:g}")
    usable = [(p, t) for t, p, m in zip(space.types, space.prices, space.max_count, strict=True) if m > 0]
    if not usable:
        raise ConfigError("the search space allows no instance of any type (every max count is 0)")
    price, name = min(usable)
    if budget + 1e-9 < price:
        raise ConfigError(
            f"budget {budget:g} $/hour buys no pool: the cheapest type in the search space is {name} at {price:g} $/hour"
        )


def enumerate_pools(space: SearchSpace, budget: float) -> np.ndarray:
    """Every non-empty pool within the per-type maxima that costs at most ``budget``: (P, T) counts."""
    space = space.capped_by_budget(budget)
    grids = np.meshgrid(*[np.arange(m + 1) for m in space.max_count], indexing="ij")
    counts = np.stack([g.ravel() for g in grids], axis=1)
    cost = counts @ space.price_array
    keep = (cost <= budget + 1e-9) & (counts.sum(axis=1) > 0)
    return counts[keep]


def _candidate(problem: Problem, counts: np.ndarray, with_fluid: bool = True) -> Candidate:
    pool = Pool.of(dict(zip(problem.space.types, (int(c) for c in counts), strict=True)))
    cand = Candidate(
        pool=pool,
        cost=float(counts @ problem.space.price_array),
        paper_bound=float(problem.bound(counts[None, :])[0]),
    )
    return cand.with_fluid(fluid_limit(problem.fluid, counts).rate) if with_fluid else cand


def rank_by_budget(problem: Problem, budget: float, top: int = 5, method: str = "auto") -> Ranking:
    check_budget(problem.space, budget)
    if method == "auto":
        small = problem.space.capped_by_budget(budget).product_size() <= ENUMERATE_LIMIT
        method = "enumerate" if small else "milp"
    if method == "milp":
        return Ranking("budget", "milp", best_by_milp(problem, budget, top))
    if method != "enumerate":
        raise ConfigError(f"search method {method!r}: expected auto, enumerate or milp")
    counts = enumerate_pools(problem.space, budget)
    bounds = problem.bound(counts)
    cost = counts @ problem.space.price_array
    order = np.lexsort((cost, -bounds))  # highest bound first, then the cheaper pool
    cands = [_candidate(problem, counts[i]) for i in order[:top]]
    return Ranking("budget", "enumerate", cands, cloud_cost=cost, cloud_bound=bounds)


class _Milp:
    """Variables: x[c, t] for every allowed (class, type) pair, n[t] (integer counts), r (rate)."""

    def __init__(self, problem: Problem) -> None:
        fm = problem.fluid_coarse
        self.ci, self.ti = fm.pairs
        nx, nt, nc = len(self.ci), len(fm.types), fm.probs.size
        self.nx, self.nt = nx, nt
        self.n_at = nx  # first count variable
        self.r_at = nx + nt
        size = nx + nt + 1
        serve = sparse.coo_matrix(
            (np.concatenate([np.ones(nx), -fm.probs]),
             (np.concatenate([self.ci, np.arange(nc)]), np.concatenate([np.arange(nx), np.full(nc, self.r_at)]))),
            shape=(nc, size),
        )
        capacity = sparse.coo_matrix(
            (np.concatenate([fm.service_s[self.ci, self.ti], -np.ones(nt)]),
             (np.concatenate([self.ti, np.arange(nt)]), np.concatenate([np.arange(nx), self.n_at + np.arange(nt)]))),
            shape=(nt, size),
        )
        self.price = np.zeros(size)
        self.price[self.n_at : self.r_at] = problem.space.price_array
        self.constraints = [
            LinearConstraint(serve.tocsr(), 0.0, 0.0),
            LinearConstraint(capacity.tocsr(), -np.inf, 0.0),
        ]
        self.lower = np.zeros(size)
        self.upper = np.full(size, np.inf)
        self.upper[self.n_at : self.r_at] = problem.space.max_array
        self.integrality = np.zeros(size)
        self.integrality[self.n_at : self.r_at] = 1
        self.size = size

    def row(self, at: int) -> np.ndarray:
        v = np.zeros(self.size)
        v[at] = 1.0
        return v

    def solve(
        self,
        objective: np.ndarray,
        extra: list[LinearConstraint],
        lower_r: float = 0.0,
        exclude: list[np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """Optimal counts, or None if infeasible. ``exclude``: pools (count vectors) to rule out."""
        lower = self.lower.copy()
        lower[self.r_at] = lower_r
        cons = [*self.constraints, *extra]
        objective, upper, integrality = objective, self.upper, self.integrality
        if exclude:
            cons, nb = self._no_good(cons, exclude)
            objective = np.concatenate([objective, np.zeros(nb)])
            lower = np.concatenate([lower, np.zeros(nb)])
            upper = np.concatenate([upper, np.ones(nb)])
            integrality = np.concatenate([integrality, np.ones(nb)])
        res = milp(
            objective,
            constraints=cons,
            integrality=integrality,
            bounds=Bounds(lower, upper),
            options={"mip_rel_gap": 1e-6, "time_limit": 60.0},
        )
        if res.x is None:
            return None
        return np.round(res.x[self.n_at : self.r_at]).astype(np.int64)

    def _no_good(self, cons: list[LinearConstraint], exclude: list[np.ndarray]) -> tuple[list[LinearConstraint], int]:
        """Rule out each pool v: some n_t >= v_t + 1 (binary up_t) or n_t <= v_t - 1 (binary down_t)."""
        top = self.upper[self.n_at : self.r_at]
        terms: list[tuple[int, int, str]] = []  # (cut, type, "up" | "down")
        for k, v in enumerate(exclude):
            for t in range(self.nt):
                if v[t] < top[t]:
                    terms.append((k, t, "up"))
                if v[t] > 0:
                    terms.append((k, t, "down"))
        nb = len(terms)
        width = self.size + nb
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        for j, (k, t, kind) in enumerate(terms):
            v, r, b = exclude[k][t], len(lo), self.size + j
            if kind == "up":  # n_t - (v_t + 1) * up >= 0
                rows += [r, r]
                cols += [self.n_at + t, b]
                vals += [1.0, -(v + 1.0)]
                lo.append(0.0)
                hi.append(np.inf)
            else:  # n_t + (M_t - v_t + 1) * down <= M_t
                rows += [r, r]
                cols += [self.n_at + t, b]
                vals += [1.0, top[t] - v + 1.0]
                lo.append(-np.inf)
                hi.append(top[t])
        for k in range(len(exclude)):  # at least one indicator per excluded pool
            r = len(lo)
            for j, (kk, _, _) in enumerate(terms):
                if kk == k:
                    rows.append(r)
                    cols.append(self.size + j)
                    vals.append(1.0)
            lo.append(1.0)
            hi.append(np.inf)
        widened = [
            LinearConstraint(sparse.hstack([sparse.csr_matrix(c.A), sparse.csr_matrix((c.A.shape[0], nb))]).tocsr(), c.lb, c.ub)
            for c in cons
        ]
        cut = sparse.csr_matrix((vals, (rows, cols)), shape=(len(lo), width))
        return [*widened, LinearConstraint(cut, np.array(lo), np.array(hi))], nb


def best_by_milp(problem: Problem, budget: float, top: int = 1) -> list[Candidate]:
    """The pools with the highest fluid limit within ``budget`` (integer counts, per-type maxima)."""
    check_budget(problem.space, budget)
    m = _Milp(problem)
    cons = [LinearConstraint(m.price, -np.inf, budget + 1e-9)]
    objective = COST_TIEBREAK * m.price - m.row(m.r_at)
    out: list[Candidate] = []
    seen: list[np.ndarray] = []
    for _ in range(top):
        counts = m.solve(objective, cons, exclude=seen)
        if counts is None or counts.sum() == 0:
            break
        out.append(_candidate(problem, counts))
        seen.append(counts)
    return out


def size_for_load(problem: Problem, load_qps: float, headroom: float = 0.2, top: int = 1) -> Ranking:
    """The cheapest pools whose fluid limit is at least ``load * (1 + headroom)``, cheapest first."""
    if not np.isfinite(load_qps) or load_qps <= 0:
        raise ConfigError(f"load must be a positive number of queries/s, got {load_qps:g}")
    if not np.isfinite(headroom) or headroom < 0:
        raise ConfigError(f"headroom must be >= 0 (a fraction, 0.2 = 20%), got {headroom:g}")
    target = load_qps * (1.0 + headroom)
    m = _Milp(problem)
    objective = m.price - 1e-9 * m.row(m.r_at)
    out: list[Candidate] = []
    seen: list[np.ndarray] = []
    for _ in range(top):
        counts = m.solve(objective, [], lower_r=target, exclude=seen)
        if counts is None:
            break
        out.append(_candidate(problem, counts))
        seen.append(counts)
    if not out:
        most = _candidate(problem, problem.space.max_array)
        raise ConfigError(
            f"no pool in the search space carries {load_qps:g} QPS with {headroom:.0%} headroom "
            f"({target:.1f} QPS): the largest pool's fluid limit is {most.fluid_limit or 0.0:.1f} QPS"
        )
    return Ranking("load", "milp", out, target_qps=target)
