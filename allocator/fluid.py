"""The fluid (LP) limit: the largest arrival rate a pool can carry with no query over QoS on average.

The batch mix is cut into classes. x[c, t] is the rate (queries/s) of class c sent to type t.
Maximise the arrival rate r subject to
- every class is served:        sum_t x[c, t] = r * p_c
- no type is over-utilised:     sum_c x[c, t] * mean_ms[c, t] / 1000 <= n_t
- no query goes where its mean latency exceeds QoS: x[c, t] = 0 there.
No distributor can sustain more (queueing only adds delay), and it holds for any number of GPU
and CPU types. Unlike the paper's bound it uses the profiles' interpolated means at the actual
batch sizes (no rounding to a multiple of 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from gateway.errors import ConfigError
from gateway.profiles import ProfileSet


@dataclass(frozen=True)
class FluidModel:
    types: tuple[str, ...]
    probs: np.ndarray  # (C,) class probabilities
    service_s: np.ndarray  # (C, T) mean service time of the class on the type, seconds
    allowed: np.ndarray  # (C, T) bool: every size of the class is within QoS on the type (by mean)
    class_top: np.ndarray  # (C,) largest batch size in the class

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        ci, ti = np.nonzero(self.allowed)
        return ci, ti

    def unservable_from(self) -> int | None:
        """The smallest batch size no type in the model serves within QoS, if any."""
        bad = ~self.allowed.any(axis=1)
        return int(self.class_top[np.argmax(bad)]) if bad.any() else None


def build_fluid_model(
    profiles: ProfileSet,
    model: str,
    types: Sequence[str],
    sizes: np.ndarray,
    probs: np.ndarray,
    qos_ms: float,
    class_width: int = 1,
) -> FluidModel:
    """Classes are runs of at most ``class_width`` consecutive sizes (1: one class per size, exact).

    A class never straddles a size where some type's QoS feasibility changes, so feasibility stays
    exact; a wider class carries the mass-weighted mean service time of its sizes and one split
    across types for all of them, which can only lower the limit slightly.
    """
    sizes = np.asarray(sizes)
    probs = np.asarray(probs, dtype=float)
    keep = probs > 0
    sizes, probs = sizes[keep], probs[keep]
    means = np.stack([profiles.get(model, name).means_for(sizes) for name in types], axis=1)  # (S, T)
    ok = means <= qos_ms
    starts = np.ones(len(sizes), dtype=bool)
    starts[1:] = ((sizes[1:] - 1) // class_width != (sizes[:-1] - 1) // class_width) | (ok[1:] != ok[:-1]).any(axis=1)
    inverse = np.cumsum(starts) - 1
    n_cls = int(inverse[-1]) + 1 if len(sizes) else 0
    mass = np.bincount(inverse, weights=probs, minlength=n_cls)
    top = np.zeros(n_cls, dtype=np.int64)
    np.maximum.at(top, inverse, sizes)
    service = np.stack(
        [np.bincount(inverse, weights=probs * means[:, j], minlength=n_cls) / mass / 1000.0 for j in range(len(types))],
        axis=1,
    )
    allowed = ok[starts]
    return FluidModel(tuple(types), mass / mass.sum(), service, allowed, top)


@dataclass(frozen=True, slots=True)
class FluidResult:
    rate: float  # QPS
    utilisation: dict[str, float]  # busy fraction per type present at that rate


def fluid_limit(fm: FluidModel, counts: np.ndarray | Sequence[int]) -> FluidResult:
    """The fluid limit of one pool (instance counts aligned with ``fm.types``)."""
    n = np.asarray(counts, dtype=float)
    present = n > 0
    allowed = fm.allowed & present[None, :]
    if not present.any() or not allowed.any(axis=1).all():
        return FluidResult(0.0, {})
    ci, ti = np.nonzero(allowed)
    nv = len(ci)  # variables: x for allowed (class, type) pairs, then the rate r
    n_cls, n_typ = fm.probs.size, len(fm.types)
    a_eq = sparse.csr_matrix(
        (np.concatenate([np.ones(nv), -fm.probs]),
         (np.concatenate([ci, np.arange(n_cls)]), np.concatenate([np.arange(nv), np.full(n_cls, nv)]))),
        shape=(n_cls, nv + 1),
    )
    a_ub = sparse.csr_matrix((fm.service_s[ci, ti], (ti, np.arange(nv))), shape=(n_typ, nv + 1))
    cost = np.zeros(nv + 1)
    cost[-1] = -1.0
    res = linprog(cost, A_ub=a_ub, b_ub=n, A_eq=a_eq, b_eq=np.zeros(n_cls), bounds=(0, None), method="highs")
    if res.status != 0:
        raise ConfigError(f"fluid LP failed: {res.message}")
    rate = float(res.x[-1])
    busy = np.bincount(ti, weights=fm.service_s[ci, ti] * res.x[:nv], minlength=n_typ)
    util = {t: float(busy[j] / n[j]) for j, t in enumerate(fm.types) if present[j]}
    return FluidResult(rate, util)
