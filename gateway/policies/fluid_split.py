"""The fluid split, learned online: which instance type each batch size should go to.

``MixLearner`` keeps a decaying histogram of the batch sizes dispatched (by class of
``CLASS_WIDTH`` sizes) and the latest estimated service time of each class on each type.
``type_prices`` solves the fluid LP of that mix on the pool's type counts,

    minimise z  s.t.  sum_c p_c s_ct x_ct <= z n_t,  sum_t x_ct = 1,  x_ct = 0 where s_ct > QoS,

and returns its dual prices y_t (per ms of type t): at the optimum a class goes to a type that
minimises y_t * s_ct, so ``price[t] * est`` is the capacity cost of a placement. Two types (the
usual GPU + CPU pool) have a closed form: a threshold on the ratio of service times. More types
use HiGHS. The allocator owns the offline fluid limit; this is the small online copy the gateway
may import.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

CLASS_WIDTH = 10  # batch sizes per class
FIRST_SOLVE = 64  # dispatches before the first solve; then every doubling up to SOLVE_EVERY
SOLVE_EVERY = 512
DECAY = 0.75  # the histogram's weight after each solve: it tracks a drifting mix


class MixLearner:
    """Decaying histogram of dispatched batch classes and their service time per type."""

    def __init__(self, n_types: int) -> None:
        self.counts = np.zeros(0)
        self.est = np.zeros((0, n_types))
        self.seen = 0
        self._next_solve = FIRST_SOLVE

    def observe(self, batch: np.ndarray, est_ms: np.ndarray) -> None:
        """Record dispatched queries: their batch sizes and (k, T) estimated service times."""
        if batch.size == 0:
            return
        cls = np.asarray(batch, dtype=np.int64) // CLASS_WIDTH
        top = int(cls.max()) + 1
        if top > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(top - self.counts.size)])
            self.est = np.concatenate([self.est, np.zeros((top - self.est.shape[0], self.est.shape[1]))])
        self.counts += np.bincount(cls, minlength=self.counts.size)
        self.est[cls] = est_ms  # the latest estimate of the class (the estimator learns online)
        self.seen += int(batch.size)

    def due(self) -> bool:
        return self.seen >= self._next_solve

    def solved(self) -> None:
        self._next_solve = self.seen + min(max(self.seen, FIRST_SOLVE), SOLVE_EVERY)
        self.counts *= DECAY


def forced_need(counts: np.ndarray, est: np.ndarray, n_inst: np.ndarray, qos_ms: float) -> np.ndarray:
    """(T,) the largest estimated service time, on each type, of a class that only that type
    serves within QoS (0 where there is none): the headroom the type must keep for it."""
    out = np.zeros(est.shape[1])
    seen = counts > 0
    if not seen.any():
        return out
    s = est[seen]
    ok = (s <= qos_ms) & (n_inst > 0)[None, :]
    only = ok & (ok.sum(axis=1) == 1)[:, None]
    return np.where(only, s, 0.0).max(axis=0)


def type_prices(counts: np.ndarray, est: np.ndarray, n_inst: np.ndarray, qos_ms: float) -> np.ndarray:
    """(T,) dual prices of the fluid LP; types without instances get +inf."""
    n_types = est.shape[1]
    present = n_inst > 0
    prices = np.full(n_types, np.inf)
    keep = counts > 0
    if not present.any():
        return prices
    if not keep.any() or present.sum() == 1:
        prices[present] = 1.0
        return prices
    p = counts[keep] / counts[keep].sum()
    s = est[keep][:, present]
    allowed = s <= qos_ms
    # A class no type serves within QoS may use its fastest type (it misses anyway).
    none = ~allowed.any(axis=1)
    allowed[none, np.argmin(s[none], axis=1)] = True
    n = n_inst[present].astype(float)
    y = _two_type_prices(p, s, allowed, n) if n.size == 2 else _lp_prices(p, s, allowed, n)
    prices[present] = y
    return prices


def _two_type_prices(p: np.ndarray, s: np.ndarray, allowed: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Closed form for two types: classes sorted by s_c1 / s_c0 go to type 0 from the top until
    the two utilisations meet; the ratio at the crossing is the price of type 0 (type 1's is 1)."""
    both = allowed.all(axis=1)
    # Load per instance of each type from the classes only it may take.
    base0 = float((p * s[:, 0])[~both & allowed[:, 0]].sum()) / n[0]
    base1 = float((p * s[:, 1])[~both & allowed[:, 1]].sum()) / n[1]
    ratio = s[both, 1] / s[both, 0]
    order = np.argsort(-ratio, kind="stable")
    r = ratio[order]
    w0 = (p[both] * s[both, 0])[order] / n[0]
    w1 = (p[both] * s[both, 1])[order] / n[1]
    if r.size == 0:
        return np.array([1.0, 1.0])
    # After giving type 0 the first k flexible classes: u0 = base0 + cum w0, u1 = base1 + rest w1.
    u0 = base0 + np.concatenate([[0.0], np.cumsum(w0)])
    u1 = base1 + np.concatenate([[np.sum(w1)], np.sum(w1) - np.cumsum(w1)])
    k = int(np.argmax(u0 >= u1)) if (u0 >= u1).any() else r.size + 1
    if k == 0:  # type 0 is full from its own classes: every flexible class goes to type 1
        return np.array([float(r[0]) * 1.0001, 1.0])
    if k > r.size:  # type 1 is full: every flexible class goes to type 0
        return np.array([float(r[-1]) * 0.9999, 1.0])
    return np.array([float(r[k - 1]), 1.0])  # the class at the crossing is split: equal cost


def _lp_prices(p: np.ndarray, s: np.ndarray, allowed: np.ndarray, n: np.ndarray) -> np.ndarray:
    ci, ti = np.nonzero(allowed)
    nv, n_cls, n_typ = ci.size, p.size, n.size
    # Variables: x for allowed (class, type) pairs, then z.
    a_ub = sparse.csr_matrix(
        (np.concatenate([p[ci] * s[ci, ti], -n]), (np.concatenate([ti, np.arange(n_typ)]),
                                                   np.concatenate([np.arange(nv), np.full(n_typ, nv)]))),
        shape=(n_typ, nv + 1),
    )
    a_eq = sparse.csr_matrix((np.ones(nv), (ci, np.arange(nv))), shape=(n_cls, nv + 1))
    cost = np.zeros(nv + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(n_typ), A_eq=a_eq, b_eq=np.ones(n_cls),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        return np.ones(n_typ)
    return np.maximum(-np.asarray(res.ineqlin.marginals, dtype=float), 0.0)
