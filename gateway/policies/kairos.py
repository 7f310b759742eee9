"""The Kairos query distributor (HPDC'23): maximum heterogeneity-weighted slack matching."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from gateway.policies.base import Assignment, Policy, Snapshot

SAFEGUARD_FRACTION = 0.02
AT_RISK_SLACK = -500.0
MISS_SLACK = -1000.0
FORBIDDEN_SLACK = -1e9  # a query pinned to another variant: never chosen


def penalties(max_qos_ms: float) -> tuple[float, float]:
    """(at risk, likely miss) scores, below every on-time one: a placement in time scores at least
    -QoS (a coefficient <= 1 times a finish within the time left), so past 500 ms of QoS the fixed
    penalties would rank a miss above a safe placement."""
    at_risk = min(AT_RISK_SLACK, -max_qos_ms - 1.0)
    return at_risk, min(MISS_SLACK, 2.0 * at_risk)


def slack_matrix(snap: Snapshot, instances: np.ndarray | None = None) -> np.ndarray:
    """(Q, M) scores of placing each query on each of ``instances`` (default: all N)."""
    if instances is None:  # all healthy, the common case: no gathers
        types, left = snap.inst_type, snap.busy_left_ms
    else:
        types, left = snap.inst_type[instances], snap.busy_left_ms[instances]
    # ``take`` and ``putmask``: the same as fancy indexing and masked assignment, at a third to
    # two thirds of the cost on matrices this small (the gateway builds one per query).
    est = snap.est_ms.take(types, axis=1)  # (Q, M)
    neg_finish = -left - est  # -(estimated time until the query would be done there)
    slack = snap.coefficient.take(types) * neg_finish
    # The penalties apply only while the query is not yet late; a late query scores on slack.
    time_left = snap.time_left_ms
    safeguard = SAFEGUARD_FRACTION * snap.qos_ms[:, None]  # per query: its own target's share
    at_risk, miss = penalties(float(snap.qos_ms.max()))
    if snap.accuracy_rank is not None:
        return _with_variants(snap, slack, types, left, est, safeguard, instances, at_risk, miss)
    if time_left.min() > 0:
        # residual = time left - wait - service; penalise a likely miss, then a near miss.
        residual = (time_left[:, None] - left) - est
        np.putmask(slack, residual < safeguard, at_risk)
        np.putmask(slack, residual < 0, miss)
    else:
        on_time = time_left > 0
        if on_time.any():
            residual = (time_left[on_time, None] - left) - est[on_time]
            rows = slack[on_time]
            rows[residual < safeguard[on_time]] = at_risk
            rows[residual < 0] = miss
            slack[on_time] = rows
    return _forbid(snap, slack, instances)


def _forbid(snap: Snapshot, slack: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
    """Queries kept to some instances (a pinned variant, a subset): elsewhere, never chosen."""
    allowed = snap.allowed
    if allowed is not None:
        slack[~(allowed if instances is None else allowed[:, instances])] = FORBIDDEN_SLACK
    return slack


def _with_variants(
    snap: Snapshot,
    slack: np.ndarray,
    types: np.ndarray,
    left: np.ndarray,
    est: np.ndarray,
    safeguard: np.ndarray,
    instances: np.ndarray | None,
    at_risk: float,
    miss: float,
) -> np.ndarray:
    """The slack matrix with variants: where a query is still safely in time, a more accurate
    variant wins outright (its rank times more than any slack difference), then slack; pinned
    queries keep to their variant."""
    time_left = snap.time_left_ms
    residual = (time_left[:, None] - left) - est
    on_time = (time_left > 0)[:, None]
    safe = on_time & (residual >= safeguard)
    assert snap.accuracy_rank is not None
    rank = snap.accuracy_rank.take(types)[None, :]
    span = float(-slack.min()) + 1.0 if slack.size else 1.0
    slack = np.where(safe, slack + rank * span, slack)
    slack[on_time & (residual < safeguard)] = at_risk
    slack[on_time & (residual < 0)] = miss
    return _forbid(snap, slack, instances)


class KairosPolicy(Policy):
    """Match up to 2N head-of-queue queries to all N healthy instances, busy ones included,
    maximising total slack; dispatch only the pairs whose instance is free now."""

    name = "kairos"
    one_per_instance = True  # one matrix column per instance

    def __init__(self, seed: int = 0) -> None:
        pass  # deterministic; the seed is accepted for a uniform constructor

    def window(self, n_instances: int, free_slots: int) -> int:
        return 2 * n_instances

    def decide(self, snap: Snapshot) -> list[Assignment]:
        if snap.n_queries == 0:
            return []
        if snap.n_queries == 1 and snap.accuracy_rank is None and snap.allowed is None:
            return _one_query(snap)
        return _matched(snap)


def _matched(snap: Snapshot) -> list[Assignment]:
    """Each query's instance in the matching of the queries to the healthy instances that
    maximises total slack; only the pairs whose instance is free now."""
    instances: np.ndarray | None = None
    if not snap.healthy.all():
        instances = np.flatnonzero(snap.healthy)
        if instances.size == 0:
            return []
    slack = slack_matrix(snap, instances)
    rows, cols = linear_sum_assignment(slack, maximize=True)
    chosen = cols if instances is None else instances[cols]
    free = snap.free_slots.tolist()
    if snap.allowed is not None:
        ok = slack[rows, cols] > FORBIDDEN_SLACK
        return [(i, j) for i, j, k in zip(rows.tolist(), chosen.tolist(), ok.tolist(), strict=True) if k and free[j] > 0]
    return [(i, j) for i, j in zip(rows.tolist(), chosen.tolist(), strict=True) if free[j] > 0]


def _one_query(snap: Snapshot) -> list[Assignment]:
    """``_matched`` for one query (no variants, no pins): the healthy instance of the highest
    slack, the first of equals as ``linear_sum_assignment`` picks. Why: the common decision under
    light load, at a third of the matrix path's cost in numpy calls."""
    best_j, best = -1, 0.0
    for j, slack in enumerate(one_query_slack(snap)):
        if slack is not None and (best_j < 0 or slack > best):
            best_j, best = j, slack
    return [(0, best_j)] if best_j >= 0 and snap.free_slots[best_j] > 0 else []


def one_query_slack(snap: Snapshot) -> list[float | None]:
    """Row 0 of ``slack_matrix`` for a one-query snapshot without variants or pins (None for an
    unhealthy instance), computed operation for operation as there, in Python floats: the
    simulator's results stay the same to the bit."""
    est = snap.est_ms[0].tolist()
    left = snap.busy_left_ms.tolist()
    coefficient = snap.coefficient.tolist()
    healthy = snap.healthy.tolist()
    time_left = float(snap.time_left_ms[0])
    on_time = time_left > 0  # the penalties apply only while the query is not yet late
    safeguard = SAFEGUARD_FRACTION * float(snap.qos_ms[0])
    at_risk, miss = penalties(float(snap.qos_ms[0]))
    out: list[float | None] = []
    for j, t in enumerate(snap.inst_type.tolist()):
        if not healthy[j]:
            out.append(None)
            continue
        e, w = est[t], left[j]
        slack = coefficient[t] * (-w - e)
        if on_time:
            residual = (time_left - w) - e
            if residual < 0:
                slack = miss
            elif residual < safeguard:
                slack = at_risk
        out.append(slack)
    return out
