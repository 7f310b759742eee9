"""Hand-built policy snapshots for policy unit tests."""

from __future__ import annotations

import numpy as np

from gateway.policies import Snapshot


def snap(
    time_left: list[float],
    est: list[list[float]],
    inst_type: list[int],
    busy_left: list[float] | None = None,
    free: list[int] | None = None,
    healthy: list[bool] | None = None,
    batch: list[int] | None = None,
    coefficient: list[float] | None = None,
    qos_ms: float = 100.0,
) -> Snapshot:
    """Queries with ``time_left`` and ``est`` (Q x T), instances of ``inst_type``; by default every
    instance is healthy, idle and has one free slot (an unhealthy one has none, as in the
    dispatcher), batch sizes are 1 and every heterogeneity coefficient is 1."""
    n = len(inst_type)
    h = np.array(healthy if healthy is not None else [True] * n)
    free_a = np.array(free if free is not None else [1] * n) * h
    return Snapshot(
        batch=np.array(batch if batch is not None else [1] * len(time_left), dtype=np.int64),
        time_left_ms=np.array(time_left, dtype=float),
        qos_ms=qos_ms,
        inst_type=np.array(inst_type),
        healthy=h,
        free_slots=free_a,
        outstanding=(free_a == 0).astype(np.int64),
        busy_left_ms=np.array(busy_left if busy_left is not None else [0.0] * n, dtype=float),
        est_ms=np.array(est, dtype=float),
        coefficient=np.array(coefficient if coefficient is not None else [1.0] * len(est[0])),
    )
