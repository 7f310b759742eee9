"""Pipelining: a full instance takes its next query once its current one has run its estimated
service time (the learned transport overhead still to go), and never before."""

from __future__ import annotations

import pytest

from gateway.dispatch import Dispatcher, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

OVERHEAD_MS = 2.0


def dispatcher(
    pipeline: bool = True, overhead_ms: float = OVERHEAD_MS, lookahead_ms: float | None = None, policy: str = "fcfs"
) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    est.overhead_ms = overhead_ms  # in every estimate
    est.overhead_p99_ms = overhead_ms if lookahead_ms is None else lookahead_ms  # how early an instance opens
    return Dispatcher(make_policy(policy), est, [("cpu0", "r5n.large")], pipeline=pipeline)


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


def test_the_99th_percentile_opens_an_instance_before_its_estimate_is_due() -> None:
    d = dispatcher(overhead_ms=1.0, lookahead_ms=3.0)
    d.submit(q(0))
    (first,) = d.decide(0.0)
    assert d.next_opening_ms(0.0) == pytest.approx(first.query.est_ms - 3.0)


def test_a_pipelined_query_is_estimated_from_when_the_one_before_it_answers() -> None:
    """Sent while its instance was busy, the next query starts its service when the first is
    done; its span is rebased then, so the instance does not open early for a third query and
    the deadline check sees the wait."""
    d = dispatcher()
    d.submit(q(0))
    (first,) = d.decide(0.0)
    opens = first.query.est_ms - OVERHEAD_MS
    d.submit(q(1))
    (second,) = d.decide(opens)
    assert second.query.pipelined and second.query.started_ms == opens
    answered = first.query.est_ms + 4.0  # the first ran 4 ms over its estimate
    d.complete(first.query, first.instance, 10.0, answered)
    assert second.query.started_ms == answered
    assert d.work_left_ms(answered)[0] == pytest.approx(second.query.est_ms)
    assert d.next_opening_ms(answered) == pytest.approx(answered + second.query.est_ms - OVERHEAD_MS)
    # Without the time of the answer (an old caller), nothing moves.
    d2 = dispatcher()
    d2.submit(q(0))
    (a,) = d2.decide(0.0)
    d2.submit(q(1))
    (b,) = d2.decide(a.query.est_ms - OVERHEAD_MS)
    d2.complete(a.query, a.instance, 10.0)
    assert b.query.started_ms == a.query.est_ms - OVERHEAD_MS


def test_an_answer_never_moves_a_held_query_back_in_time() -> None:
    d = dispatcher()
    d.submit(q(0))
    (first,) = d.decide(0.0)
    d.submit(q(1))
    (second,) = d.decide(first.query.est_ms - OVERHEAD_MS)
    d.complete(first.query, first.instance, 10.0, 1.0)  # a clock behind the dispatch time
    assert second.query.started_ms == first.query.est_ms - OVERHEAD_MS
