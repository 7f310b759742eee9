"""Service-class priorities in the Dispatcher: a higher class queues ahead, takes free slots
first, displaces a lower one from a full queue, and is admitted on the work ahead of it."""

from __future__ import annotations

import pytest

from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.errors import Overloaded
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

QOS = 350.0


def dispatcher(policy: str = "kairos", n: int = 2, **kw: object) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    return Dispatcher(make_policy(policy), est, [(f"i{k}", "r5n.large") for k in range(n)], **kw)  # type: ignore[arg-type]


def q(i: int, priority: int = 0, now: float = 0.0, qos: float = QOS, batch: int = 10) -> Query:
    return Query(id=i, batch=batch, arrival_ms=now, deadline_ms=now + qos, priority=priority)


def test_a_higher_class_queues_ahead_of_lower_ones_and_fifo_within_a_class() -> None:
    d = dispatcher(n=1)
    for query in (q(0, 0), q(1, 0), q(2, 2), q(3, 1), q(4, 2), q(5, 0)):
        d.submit(query)
    assert [(x.id, x.priority) for x in d.pending] == [(2, 2), (4, 2), (3, 1), (0, 0), (1, 0), (5, 0)]


@pytest.mark.parametrize("policy", ["kairos", "fluid", "fcfs"])
def test_free_slots_go_to_the_higher_class_even_when_a_policy_would_prefer_the_lower(policy: str) -> None:
    d = dispatcher(policy=policy, n=2)
    # Lower-class queries with more slack (a policy weighing slack likes them), then two premium.
    for i in range(6):
        d.submit(q(i, 0, qos=5000.0, batch=1))
    d.submit(q(10, 2, batch=200))
    d.submit(q(11, 2, batch=200))
    placed = d.decide(0.0)
    assert sorted(x.query.id for x in placed) == [10, 11]


def test_a_lower_class_takes_the_slots_a_higher_one_leaves() -> None:
    d = dispatcher(n=3)
    d.submit(q(0, 0))
    d.submit(q(1, 2))
    assert sorted(x.query.id for x in d.decide(0.0)) == [0, 1]


def test_a_full_queue_displaces_the_newest_lowest_class_query() -> None:
    d = dispatcher(n=1, max_pending=3)
    for i in range(3):
        assert d.submit(q(i, 0)) == []
    (displaced,) = d.submit(q(9, 1))
    assert displaced.id == 2 and not displaced.queued
    assert [x.id for x in d.pending] == [9, 0, 1]
    with pytest.raises(Overloaded, match="queue is full"):
        d.submit(q(10, 0))  # nothing lower to displace
    (displaced,) = d.submit(q(11, 2))
    assert displaced.id == 1


def test_admission_counts_only_the_work_queued_at_or_above_its_class() -> None:
    d = dispatcher(n=1, overload=OverloadControl(shed_late=True, admission=True))
    d.submit(q(0, 0, batch=100), 0.0)  # takes the instance (~43 ms)
    d.decide(0.0)
    for i in range(1, 4):  # then ~500 ms of lower-class work queues up
        d.submit(q(i, 0, qos=10_000.0, batch=400), 0.0)
    low = d.expected_done_ms(0.0, 100, QOS, priority=0)
    high = d.expected_done_ms(0.0, 100, QOS, priority=1)
    assert high < low
    with pytest.raises(Overloaded):
        d.submit(q(5, 0, batch=100), 0.0)  # behind the queued batch work: refused
    d.submit(q(6, 1, batch=100), 0.0)  # ahead of it: admitted
    assert d.pending[0].id == 6


def test_each_class_learns_its_own_admission_factor() -> None:
    d = dispatcher(n=1, overload=OverloadControl(shed_late=True, admission=True))
    d.submit(q(0, 2), 0.0)
    d.submit(q(1, 0), 0.0)
    d.decide(0.0)
    assert [x.id for x in d.shed(QOS)] == [1]
    assert d.admission_factors[0] > 1.0 and d.admission_factors.get(2, 1.0) == 1.0


@pytest.mark.parametrize("policy", ["fcfs", "kairos", "fluid"])
def test_a_retried_query_goes_back_at_the_head_of_its_class_not_ahead_of_higher_ones(policy: str) -> None:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    d = Dispatcher(make_policy(policy), est, [("a", "r5n.large"), ("b", "r5n.large")])
    low = Query(id=0, batch=10, arrival_ms=0.0, deadline_ms=350.0, priority=0)
    d.submit(low)
    (x,) = d.decide(0.0)
    d.submit(Query(id=1, batch=10, arrival_ms=1.0, deadline_ms=351.0, priority=1))
    d.submit(Query(id=2, batch=10, arrival_ms=1.0, deadline_ms=351.0, priority=1))
    d.submit(Query(id=3, batch=10, arrival_ms=1.0, deadline_ms=351.0, priority=0))
    d.fail(low, x.instance)  # as the core does on a failure: out of rotation, then the retry
    d.set_healthy(x.instance, False)
    d.requeue(low)
    assert [q.id for q in d.pending] == [1, 2, 0, 3]
    assert [y.query.id for y in d.decide(2.0)] == [1]  # the one free slot
