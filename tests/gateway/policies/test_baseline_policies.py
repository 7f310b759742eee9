"""Baseline policies: head of queue first, free slots respected, their own pick rules."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.policies import POLICY_NAMES, Snapshot, make_policy


def snap(n_queries: int, free: list[int], outstanding: list[int] | None = None) -> Snapshot:
    n = len(free)
    return Snapshot(
        batch=np.full(n_queries, 10, dtype=np.int64),
        time_left_ms=np.full(n_queries, 100.0),
        qos_ms=100.0,
        inst_type=np.zeros(n, dtype=np.int64),
        healthy=np.array([f > 0 for f in free]) | True,
        free_slots=np.array(free, dtype=np.int64),
        outstanding=np.array(outstanding if outstanding is not None else [0] * n, dtype=np.int64),
        busy_left_ms=np.zeros(n),
        est_ms=np.full((n_queries, 1), 10.0),
        coefficient=np.ones(1),
    )


BASELINES = ("fcfs", "fcfs-paper", "round-robin", "least-outstanding", "power-of-two")


def test_baselines_are_registered() -> None:
    assert set(BASELINES) <= set(POLICY_NAMES)


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_fill_free_slots_from_the_head(name: str) -> None:
    chosen = make_policy(name, seed=1).decide(snap(5, free=[1, 0, 2]))
    assert [q for q, _ in chosen] == [0, 1, 2]
    per = np.bincount([j for _, j in chosen], minlength=3)
    assert per.tolist()[1] == 0 and per[0] <= 1 and per[2] <= 2


def test_the_papers_fcfs_fills_the_first_free_instance_in_pool_order() -> None:
    p = make_policy("fcfs-paper")
    assert p.decide(snap(4, free=[0, 2, 1, 3])) == [(0, 1), (1, 1), (2, 2), (3, 3)]
    random_pick = {make_policy("fcfs", seed=s).decide(snap(1, free=[1, 1, 1, 1]))[0][1] for s in range(20)}
    assert len(random_pick) > 1  # the other fcfs picks any free instance


def test_round_robin_takes_turns() -> None:
    p = make_policy("round-robin")
    picks = [p.decide(snap(1, free=[1, 1, 1]))[0][1] for _ in range(4)]
    assert picks == [0, 1, 2, 0]


def test_least_outstanding_joins_the_shortest_queue() -> None:
    chosen = make_policy("least-outstanding").decide(snap(1, free=[2, 2, 2], outstanding=[2, 0, 1]))
    assert chosen == [(0, 1)]
