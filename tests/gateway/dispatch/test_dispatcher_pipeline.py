"""Pipelining: a full instance takes its next query once its current one has run its estimated
service time (the learned transport overhead still to go), and never before."""

from __future__ import annotations

from gateway.dispatch import Dispatcher, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

OVERHEAD_MS = 2.0


def dispatcher(pipeline: bool = True, overhead_ms: float = OVERHEAD_MS) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    est.overhead_ms = overhead_ms
    return Dispatcher(make_policy("fcfs"), est, [("cpu0", "r5n.large")], qos_ms=350, pipeline=pipeline)


def q(i: int, now: float = 0.0) -> Query:
    return Query(id=i, batch=10, arrival_ms=now, deadline_ms=now + 350)


def test_a_full_instance_opens_when_its_estimated_service_time_has_run() -> None:
    d = dispatcher()
    d.submit(q(0))
    (first,) = d.decide(0.0)
    service_ms = first.query.est_ms - OVERHEAD_MS  # the estimate carries the overhead
    assert not first.query.pipelined
    assert d.next_opening_ms(0.0) == service_ms
    d.submit(q(1))
    assert d.decide(service_ms - 0.01) == []  # still serving: no slot yet
    (second,) = d.decide(service_ms)
    assert second.query.id == 1 and second.query.pipelined
    assert len(d.instances[0].in_flight) == 2 and d.pipelined == 1
    # Never a third: the instance is over its depth until one answer comes back.
    d.submit(q(2))
    assert d.decide(service_ms + 100.0) == []
    assert d.next_opening_ms(service_ms) is None


def test_without_pipelining_or_without_a_learned_overhead_depth_is_strict() -> None:
    for d in (dispatcher(pipeline=False), dispatcher(overhead_ms=0.0)):
        d.submit(q(0))
        (first,) = d.decide(0.0)
        d.submit(q(1))
        assert d.decide(first.query.est_ms + 50.0) == []
        assert d.next_opening_ms(0.0) is None


def test_an_opening_in_the_past_is_not_a_timer() -> None:
    d = dispatcher()
    d.submit(q(0))
    (first,) = d.decide(0.0)
    opens = first.query.est_ms - OVERHEAD_MS
    assert d.next_opening_ms(opens - 1.0) == opens
    assert d.next_opening_ms(opens) is None  # already open: a decision at any event takes it
