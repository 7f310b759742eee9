"""The Dispatcher: FIFO order, admission bound, requeue at the head, health exclusion."""

from __future__ import annotations

import pytest

from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.dispatch.dispatcher import OVERDUE_LEFT_MS, DecisionFailed
from gateway.errors import Overloaded
from gateway.estimator import LatencyEstimator
from gateway.policies import Policy, Snapshot, make_policy
from gateway.profiles import load_profiles


def dispatcher(policy: str = "fcfs", n: int = 2, max_pending: int | None = None, depth: int = 1) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    insts = [(f"cpu{i}", "r5n.large") for i in range(n)]
    return Dispatcher(make_policy(policy), est, insts, depth=depth, max_pending=max_pending)


def q(i: int, now: float = 0.0) -> Query:
    return Query(id=i, batch=10, arrival_ms=now, deadline_ms=now + 350)


def test_fifo_order_is_kept() -> None:
    d = dispatcher(n=2)
    for i in range(5):
        d.submit(q(i))
    first = d.decide(0.0)
    assert [x.query.id for x in first] == [0, 1]
    assert [x.id for x in d.pending] == [2, 3, 4]
    d.complete(first[1].query, first[1].instance, 5.0)
    assert [x.query.id for x in d.decide(1.0)] == [2]


def test_admission_bound() -> None:
    d = dispatcher(max_pending=2)
    d.submit(q(0))
    d.submit(q(1))
    with pytest.raises(Overloaded) as exc:
        d.submit(q(2))
    assert exc.value.status == 503 and exc.value.retry_after_s > 0


def test_requeue_puts_the_query_at_the_head() -> None:
    d = dispatcher(n=1)
    for i in range(3):
        d.submit(q(i))
    (first,) = d.decide(0.0)
    d.fail(first.query, first.instance)
    d.requeue(first.query)
    assert [x.id for x in d.pending] == [0, 1, 2]
    assert first.query.tried == {"cpu0"}
    (again,) = d.decide(1.0)
    assert again.query.id == 0 and again.query.attempts == 2


def test_unhealthy_instances_get_nothing() -> None:
    d = dispatcher(n=3)
    assert d.set_healthy(d.instances[1], False) is True
    assert d.set_healthy(d.instances[1], False) is False
    for i in range(3):
        d.submit(q(i))
    chosen = d.decide(0.0)
    assert sorted(x.instance.index for x in chosen) == [0, 2]
    assert [x.id for x in d.pending] == [2]


def test_depth_bounds_in_flight_per_instance() -> None:
    d = dispatcher(policy="least-outstanding", n=2, depth=2)
    for i in range(5):
        d.submit(q(i))
    assert len(d.decide(0.0)) == 4
    assert all(len(i.in_flight) == 2 for i in d.instances)


def test_cancel_removes_a_pending_query() -> None:
    d = dispatcher(n=1)
    a, b = q(0), q(1)
    d.submit(a)
    d.submit(b)
    assert d.cancel(b) is True and d.cancel(b) is False
    assert [x.id for x in d.pending] == [0]


def test_an_overdue_busy_instance_still_has_time_left() -> None:
    d = dispatcher(n=2)
    d.submit(q(0))
    (first,) = d.decide(0.0)
    busy, idle = first.instance.index, 1 - first.instance.index
    late = first.query.est_ms + 1000.0
    assert d.work_left_ms(late)[busy] == OVERDUE_LEFT_MS > 0
    assert d.work_left_ms(late)[idle] == 0.0
    assert d.work_left_ms(0.0)[busy] == pytest.approx(first.query.est_ms)  # not overdue: the estimate


def test_kairos_sends_a_query_to_the_idle_instance_not_an_overdue_busy_one() -> None:
    d = dispatcher(policy="kairos", n=2)
    d.set_healthy(d.instances[1], False)  # so the first query lands on instance 0
    d.submit(q(0))
    (first,) = d.decide(0.0)
    assert first.instance.index == 0
    d.set_healthy(d.instances[1], True)
    now = first.query.est_ms + 1000.0  # far past the estimate; instance 0 has not answered
    d.submit(q(1, now))
    chosen = d.decide(now)
    assert [(x.query.id, x.instance.index) for x in chosen] == [(1, 1)]
    assert not d.pending
    assert d.free_left == 0  # the only free slot was used


def test_free_left_counts_the_free_slots_a_decision_left_unused() -> None:
    d = dispatcher(policy="kairos", n=2)
    assert d.decide(0.0) == [] and d.free_left == 0  # nothing pending
    d.submit(q(0))
    assert len(d.decide(0.0)) == 1
    assert d.free_left == 1  # two idle instances, one query


def test_kairos_fills_the_free_slots_of_a_deep_instance_in_one_decision() -> None:
    # kairos's matrix has one column per instance, so one matching places at most one query on
    # each; at depth 4 the dispatcher matches again while the chosen instance has room.
    d = dispatcher("kairos", n=1, depth=4)
    for i in range(6):
        d.submit(q(i))
    placed = d.decide(0.0)
    assert [x.query.id for x in placed] == [0, 1, 2, 3]  # FIFO, up to the instance's depth
    assert [x.id for x in d.pending] == [4, 5]
    assert d.decisions == 4 and d.free_left == 0
    assert d.decide(1.0) == [] and d.decisions == 4  # full: no policy call at all


def test_at_depth_one_kairos_is_matched_once_per_decision() -> None:
    d = dispatcher("kairos", n=3, depth=1)
    for i in range(5):
        d.submit(q(i))
    assert len(d.decide(0.0)) == 3
    assert d.decisions == 1


@pytest.mark.parametrize("policy", ["fcfs", "round-robin", "least-outstanding", "power-of-two", "fluid"])
def test_policies_that_fill_many_slots_are_called_once(policy: str) -> None:
    d = dispatcher(policy, n=2, depth=3)
    for i in range(4):
        d.submit(q(i))
    d.decide(0.0)
    assert d.decisions == 1


def test_the_next_change_is_the_earliest_future_moment_a_decision_could_change() -> None:
    """A late head no longer hides the deadline behind it; a late query's urgent point (fluid:
    3 QoS past its deadline) and the head's ``max_wait_ms`` are moments too."""
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    d = Dispatcher(make_policy("kairos"), est, [("a", "r5n.large")])  # sees 2 queries
    d.submit(Query(id=0, batch=10, arrival_ms=0.0, deadline_ms=100.0))
    d.submit(Query(id=1, batch=10, arrival_ms=50.0, deadline_ms=150.0))
    assert d.next_change_ms(0.0) == 100.0
    assert d.next_change_ms(120.0) == 150.0  # the head is late: the next one's deadline
    assert d.next_change_ms(200.0) is None  # kairos: nothing changes past a deadline
    fluid = Dispatcher(make_policy("fluid"), est, [("a", "r5n.large")])
    fluid.submit(Query(id=0, batch=10, arrival_ms=0.0, deadline_ms=100.0))
    assert fluid.next_change_ms(120.0) == pytest.approx(400.0, abs=0.01)  # urgent: 3 x 100 ms late
    aged = Dispatcher(make_policy("fcfs"), est, [("a", "r5n.large")], overload=OverloadControl(max_wait_ms=30.0))
    aged.submit(Query(id=0, batch=10, arrival_ms=0.0, deadline_ms=100.0))
    assert aged.next_change_ms(0.0) == 30.0 and aged.next_change_ms(40.0) == 100.0


class _TwoOnFirst(Policy):
    """A broken policy: two queries on instance 0, which has one slot."""

    name = "broken"

    def decide(self, snap: Snapshot) -> list[tuple[int, int]]:
        return [(0, 0), (1, 0)]


def test_an_invalid_decision_places_nothing_and_what_was_placed_before_it_is_handed_over() -> None:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    d = Dispatcher(_TwoOnFirst(), est, [("a", "r5n.large"), ("b", "r5n.large")])
    for i in range(3):
        d.submit(Query(id=i, batch=10, arrival_ms=0.0, deadline_ms=350.0))
    with pytest.raises(RuntimeError, match="invalid assignment"):
        d.decide(0.0)
    assert [q.id for q in d.pending] == [0, 1, 2] and all(q.queued for q in d.pending)
    assert not d.instance("a").in_flight and d._total_free == 2  # no slot lost
    # An aged query placed before the policy failed: handed to the driver, not lost.
    d = Dispatcher(_TwoOnFirst(), est, [("a", "r5n.large"), ("b", "r5n.large"), ("c", "r5n.large")],
                   overload=OverloadControl(max_wait_ms=100.0))  # fmt: skip
    for i in range(4):
        d.submit(Query(id=i, batch=10, arrival_ms=0.0 if i == 0 else 150.0, deadline_ms=350.0))
    with pytest.raises(DecisionFailed) as failed:
        d.decide(200.0)
    (placed,) = failed.value.placed
    assert placed.query.id == 0 and placed.instance.in_flight == {0: placed.query}
    assert [q.id for q in d.pending] == [1, 2, 3]
