"""The Kairos policy on hand-built snapshots: the paper's slack, penalties and matching."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.snapshots import snap
from scipy.optimize import linear_sum_assignment

from gateway.estimator import LatencyEstimator
from gateway.policies import Snapshot, make_policy
from gateway.policies.kairos import (
    AT_RISK_SLACK,
    FORBIDDEN_SLACK,
    MISS_SLACK,
    KairosPolicy,
    _matched,
    _one_query,
    one_query_slack,
    penalties,
    slack_matrix,
)
from gateway.profiles import load_profiles


def one(time_left: float, est: float = 10.0, busy_left: float = 0.0, qos_ms: float = 100.0) -> float:
    s = snap([time_left], [[est]], [0], busy_left=[busy_left], qos_ms=qos_ms)
    return float(slack_matrix(s, np.array([0]))[0, 0])


def test_slack_is_minus_left_minus_estimate_when_safe() -> None:
    assert one(time_left=50, est=10, busy_left=5) == pytest.approx(-15)


def test_at_risk_within_the_two_percent_safeguard_scores_minus_500() -> None:
    # residual = 11 - 10 = 1 ms >= 0 but below the safeguard of 2% x 100 ms = 2 ms
    assert one(time_left=11, est=10) == AT_RISK_SLACK == -500
    assert one(time_left=12.5, est=10) == pytest.approx(-10)  # residual 2.5 > safeguard: no penalty


def test_expected_miss_scores_minus_1000() -> None:
    assert one(time_left=9, est=10) == MISS_SLACK == -1000
    assert one(time_left=20, est=10, busy_left=15) == MISS_SLACK  # the wait behind the busy query counts


def test_the_penalties_stay_below_every_placement_in_time_whatever_the_qos() -> None:
    """Past 500 ms of QoS a placement in time scores below the fixed -500 (a 1,500 ms finish on an
    idle GPU): the penalties scale so that a miss never outranks it (a 2 s target chose the CPU
    that would miss). Below 500 ms they are the paper's -500 / -1000."""
    assert penalties(350.0) == (AT_RISK_SLACK, MISS_SLACK)
    kairos = make_policy("kairos")
    for qos, gpu_ms, cpu_ms in ((2000.0, 1500.0, 2600.0), (800.0, 700.0, 790.0)):
        s = snap([qos], [[gpu_ms, cpu_ms]], [0, 1], coefficient=[1.0, 0.2], qos_ms=qos)
        row = slack_matrix(s, np.array([0, 1]))[0]
        assert row[0] == pytest.approx(-gpu_ms) and row[1] < row[0], qos
        assert kairos.decide(s) == [(0, 0)], qos  # the GPU, in time
        assert one_query_slack(s) == pytest.approx(row.tolist())  # the fast path agrees
    two = snap([2000.0, 2000.0], [[1500.0, 2600.0], [1500.0, 2600.0]], [0, 1], coefficient=[1.0, 0.2], qos_ms=2000.0)
    assert slack_matrix(two, np.array([0, 1]))[:, 1].tolist() == [penalties(2000.0)[1]] * 2


def test_no_penalty_once_the_query_is_late() -> None:
    assert one(time_left=-5, est=10, busy_left=3) == pytest.approx(-13)
    assert one(time_left=0, est=10) == pytest.approx(-10)


def test_heterogeneity_coefficient_weights_the_slack() -> None:
    s = snap([100], [[10, 40]], [0, 1], coefficient=[1.0, 0.25])
    m = slack_matrix(s, np.array([0, 1]))
    assert m[0].tolist() == pytest.approx([-10, -10])  # 0.25 x -40


def test_only_pairs_on_idle_instances_are_dispatched() -> None:
    # The fast instance 0 is busy for 1 ms; the matching gives it query 0 (higher slack), so
    # only query 1 -> instance 1 leaves now; query 0 waits for instance 0.
    s = snap([100, 100], [[10, 60], [10, 60]], [0, 1], busy_left=[1, 0], free=[0, 1])
    chosen = make_policy("kairos").decide(s)
    assert chosen == [(1, 1)]


def test_an_idle_instance_may_stay_idle() -> None:
    # One query: waiting 1 ms for the fast instance beats 60 ms on the slow idle one.
    s = snap([100], [[10, 60]], [0, 1], busy_left=[1, 0], free=[0, 1])
    assert make_policy("kairos").decide(s) == []


def test_unhealthy_instances_are_never_chosen() -> None:
    s = snap([100, 100], [[10, 60], [10, 60]], [0, 1], healthy=[False, True], free=[0, 1])
    assert make_policy("kairos").decide(s) == [(0, 1)]


def test_window_is_twice_the_pool() -> None:
    assert make_policy("kairos").window(14, 3) == 28


def test_large_batch_goes_to_the_gpu_when_all_idle() -> None:
    types = ["g4dn.xlarge", "r5n.large"]
    est = LatencyEstimator(load_profiles(), "ncf", types)
    batch = np.array([900])
    s = Snapshot(
        batch=batch,
        time_left_ms=np.array([5.0]),
        qos_ms=5.0,
        inst_type=np.array([0, 1, 1]),
        healthy=np.ones(3, dtype=bool),
        free_slots=np.ones(3, dtype=np.int64),
        outstanding=np.zeros(3, dtype=np.int64),
        busy_left_ms=np.zeros(3),
        est_ms=est.estimate(batch),
        coefficient=est.coefficient,
    )
    assert est.coefficient[0] == 1.0 and est.coefficient[1] < 1.0
    assert make_policy("kairos").decide(s) == [(0, 0)]


def random_snap(rng: np.random.Generator, healthy: list[bool] | None = None) -> Snapshot:
    """2N queries (some late, some on time) on N instances of T types, some busy."""
    n_types = int(rng.integers(1, 4))
    n = int(rng.integers(2, 7)) if healthy is None else len(healthy)
    n_q = int(rng.integers(1, 2 * n + 1))
    busy = rng.random(n) < 0.5
    return snap(
        time_left=rng.uniform(-50, 150, n_q).tolist(),
        est=rng.uniform(1, 60, (n_q, n_types)).tolist(),
        inst_type=rng.integers(0, n_types, n).tolist(),
        busy_left=np.where(busy, rng.uniform(0, 40, n), 0.0).tolist(),
        free=(~busy).astype(int).tolist(),
        healthy=healthy,
        coefficient=rng.uniform(0.2, 1.0, n_types).tolist(),
    )


def test_slack_matrix_defaults_to_all_instances() -> None:
    rng = np.random.default_rng(7)
    mixed = 0
    for _ in range(200):
        s = random_snap(rng)
        late = s.time_left_ms <= 0
        mixed += bool(late.any() and not late.all())
        np.testing.assert_array_equal(slack_matrix(s), slack_matrix(s, np.arange(s.n_instances)))
    assert mixed > 0  # late and on-time queries together were covered


def test_decide_when_all_healthy_is_the_matching_over_all_instances() -> None:
    rng = np.random.default_rng(11)
    dispatched = 0
    for _ in range(200):
        s = random_snap(rng)
        rows, cols = linear_sum_assignment(slack_matrix(s, np.arange(s.n_instances)), maximize=True)
        expected = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if s.free_slots[c] > 0]
        assert KairosPolicy().decide(s) == expected
        dispatched += len(expected)
    assert dispatched > 0


def test_decide_never_chooses_an_unhealthy_instance() -> None:
    rng = np.random.default_rng(13)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        healthy = (rng.random(n) < 0.6).tolist()
        s = random_snap(rng, healthy=healthy)
        chosen = KairosPolicy().decide(s)
        assert all(healthy[j] for _, j in chosen)
        ok = np.flatnonzero(s.healthy)
        if ok.size == 0:
            assert chosen == []
            continue
        # The same as matching over the healthy instances only.
        rows, cols = linear_sum_assignment(slack_matrix(s, ok), maximize=True)
        expected = [(int(r), int(ok[c])) for r, c in zip(rows, cols, strict=True) if s.free_slots[ok[c]] > 0]
        assert chosen == expected


def test_one_query_path_decides_as_the_matching_does() -> None:
    """The single-query path (``_one_query``) against the matching (``_matched``) on random
    snapshots made to tie: slack on a grid, penalties, late queries, unhealthy and busy instances."""
    rng = np.random.default_rng(7)
    hit = {"none": 0, "tie": 0, "late": 0}
    for _ in range(3000):
        n_types, n = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        s = snap(
            time_left=[float(rng.choice([-20.0, 0.0, 5.0, 6.0, 12.0, 30.0, 60.0, 200.0]))],  # 6, 12: on a safeguard
            est=[rng.choice([5.0, 10.0, 20.0, 40.0], size=n_types).tolist()],
            inst_type=rng.integers(0, n_types, size=n).tolist(),
            busy_left=rng.choice([0.0, 0.0, 10.0, 25.0], size=n).tolist(),
            free=rng.integers(0, 2, size=n).tolist(),
            healthy=(rng.random(n) < 0.8).tolist(),
            coefficient=rng.choice([1.0, 0.5, 0.25], size=n_types).tolist(),
            qos_ms=float(rng.choice([50.0, 350.0])),
        )
        one, matched = _one_query(s), _matched(s)
        assert one == matched
        hit["none"] += not one
        hit["late"] += s.time_left_ms[0] <= 0
        rows = slack_matrix(s)[0][s.healthy]
        hit["tie"] += rows.size > 1 and int((rows == rows.max()).sum()) > 1
    assert min(hit.values()) > 100, hit  # the cases that could tell them apart came up


@pytest.mark.parametrize("queries", [1, 2])
def test_queries_kept_to_some_instances_go_nowhere_else_without_variants(queries: int) -> None:
    """A subset hint or a pinned variant (``allowed``) binds with one variant too, where there is
    no accuracy rank: instance 0 is free and faster, yet only instance 1 is allowed."""
    s = snap([100.0] * queries, [[5.0, 5.0]] * queries, [0, 1], free=[1, 1]).replace(
        allowed=np.array([[False, True]] * queries)
    )
    assert s.accuracy_rank is None
    chosen = KairosPolicy().decide(s)
    assert chosen and all(j == 1 for _, j in chosen), chosen
    assert (slack_matrix(s)[:, 0] == FORBIDDEN_SLACK).all()


def test_one_query_slack_is_slack_matrix_to_the_bit() -> None:
    """Arbitrary floats (inexact sums, the estimator's coefficients): the single-query path's
    slack equals ``slack_matrix``'s row bit for bit, so a reordered sum would show."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        n_types, n = int(rng.integers(1, 5)), int(rng.integers(1, 10))
        at_max = rng.uniform(1.0, 900.0, size=n_types)
        s = snap(
            time_left=[float(rng.uniform(-50.0, 400.0))],
            est=[rng.uniform(0.1, 300.0, size=n_types).tolist()],
            inst_type=rng.integers(0, n_types, size=n).tolist(),
            busy_left=(rng.uniform(0.0, 300.0, size=n) * (rng.random(n) < 0.6)).tolist(),
            healthy=(rng.random(n) < 0.85).tolist(),
            coefficient=(at_max.min() / at_max).tolist(),
            qos_ms=float(rng.uniform(5.0, 400.0)),
        )
        row = slack_matrix(s)[0]
        for j, value in enumerate(one_query_slack(s)):
            if value is not None:
                assert value.hex() == float(row[j]).hex()
