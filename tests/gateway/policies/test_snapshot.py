"""Snapshot: lazy inputs are computed once, on first read; the dispatcher's are read-only."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.dispatch import Dispatcher, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import Assignment, Policy, Snapshot
from gateway.profiles import load_profiles


def _snapshot(calls: list[str]) -> Snapshot:
    def lazy(name: str, value: np.ndarray):  # type: ignore[no-untyped-def]
        def compute() -> np.ndarray:
            calls.append(name)
            return value

        return compute

    return Snapshot(
        batch=np.array([1, 2]),
        time_left_ms=lazy("time_left", np.array([5.0, 6.0])),
        qos_ms=10.0,
        inst_type=np.array([0]),
        healthy=np.array([True]),
        free_slots=np.array([1]),
        outstanding=np.array([0]),
        busy_left_ms=lazy("busy_left", np.array([0.0])),
        est_ms=np.array([[1.0], [2.0]]),
        coefficient=np.array([1.0]),
    )


def test_lazy_inputs_are_computed_on_first_read_and_only_once() -> None:
    calls: list[str] = []
    snap = _snapshot(calls)
    assert calls == [] and snap.n_queries == 2 and snap.est_ms[1, 0] == 2.0
    assert snap.time_left_ms.tolist() == [5.0, 6.0]
    assert snap.time_left_ms is snap.time_left_ms
    assert calls == ["time_left"]
    copy = snap.replace(batch=np.array([3]))
    assert copy.batch.tolist() == [3] and copy.time_left_ms.tolist() == [5.0, 6.0]
    assert copy.busy_left_ms.tolist() == [0.0] and calls == ["time_left", "busy_left"]


class _Recorder(Policy):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Snapshot] = []

    def decide(self, snap: Snapshot) -> list[Assignment]:
        self.seen.append(snap)
        return []


@pytest.mark.parametrize("field", ["healthy", "free_slots", "outstanding", "inst_type", "coefficient"])
def test_a_policy_cannot_write_to_the_dispatchers_columns(field: str) -> None:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    policy = _Recorder()
    d = Dispatcher(policy, est, [("cpu0", "r5n.large")])
    d.submit(Query(id=0, batch=1, arrival_ms=0.0, deadline_ms=350.0))
    assert d.decide(0.0) == []
    with pytest.raises(ValueError, match="read-only"):
        getattr(policy.seen[0], field)[0] = 0
    assert d.decide(0.0) == [] and policy.seen[1].free_slots.tolist() == [1]
    assert policy.seen[1].inst_type.tolist() == [0] and policy.seen[1].coefficient.tolist() == [1.0]
