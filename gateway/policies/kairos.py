"""The Kairos query distributor (HPDC'23): maximum heterogeneity-weighted slack matching."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from gateway.policies.base import Assignment, Policy, Snapshot

SAFEGUARD_FRACTION = 0.02
AT_RISK_SLACK = -500.0
MISS_SLACK = -1000.0


def slack_matrix(snap: Snapshot, instances: np.ndarray) -> np.ndarray:
    """(Q, len(instances)) scores of placing each query on each of ``instances``."""
    types = snap.inst_type[instances]
    est = snap.est_ms[:, types]  # (Q, M)
    left = snap.busy_left_ms[instances]  # (M,)
    neg_finish = -left - est  # -(estimated time until the query would be done there)
    slack = snap.coefficient[types] * neg_finish
    # The penalties apply only while the query is not yet late; a late query scores on slack.
    on_time = snap.time_left_ms > 0
    if on_time.any():
        # residual = time left - wait - service; penalise a likely miss, then a near miss.
        residual = (snap.time_left_ms[on_time, None] - left) - est[on_time]
        rows = slack[on_time]
        rows[residual < SAFEGUARD_FRACTION * snap.qos_ms] = AT_RISK_SLACK
        rows[residual < 0] = MISS_SLACK
        slack[on_time] = rows
    return slack


class KairosPolicy(Policy):
    """Match up to 2N head-of-queue queries to all N healthy instances, busy ones included,
    maximising total slack; dispatch only the pairs whose instance is free now."""

    name = "kairos"

    def __init__(self, seed: int = 0) -> None:
        pass  # deterministic; the seed is accepted for a uniform constructor

    def window(self, n_instances: int, free_slots: int) -> int:
        return 2 * n_instances

    def decide(self, snap: Snapshot) -> list[Assignment]:
        instances = np.flatnonzero(snap.healthy)
        if snap.n_queries == 0 or instances.size == 0:
            return []
        slack = slack_matrix(snap, instances)
        rows, cols = linear_sum_assignment(slack, maximize=True)
        chosen = instances[cols]
        free = snap.free_slots[chosen] > 0
        return list(zip(rows[free].tolist(), chosen[free].tolist(), strict=True))
