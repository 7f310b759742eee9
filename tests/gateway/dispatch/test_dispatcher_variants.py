"""Model variants in the Dispatcher: the more accurate variant where the deadline allows, the
faster one where only it makes the deadline, and a pinned query only on its variant."""

from __future__ import annotations

import pytest

from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

# rm2 (accurate, ~43 ms at batch 100 on r5n.large) and, as its fast variant, wnd's network (~5 ms).
KINDS = ["r5n.large", "wnd/r5n.large"]
ACCURACY = {"rm2": 0.80, "wnd": 0.70}


def dispatcher(policy: str, accuracy: dict[str, float] | None = ACCURACY) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", KINDS)
    insts = [("big", "r5n.large"), ("small", "wnd/r5n.large")]
    return Dispatcher(make_policy(policy), est, insts, model="rm2", accuracy=accuracy)


def q(i: int, qos: float, variant: str | None = None, batch: int = 100) -> Query:
    return Query(id=i, batch=batch, arrival_ms=0.0, deadline_ms=qos, variant=variant)


@pytest.mark.parametrize("policy", ["kairos", "fluid"])
def test_the_accurate_variant_when_the_deadline_allows(policy: str) -> None:
    d = dispatcher(policy)
    d.submit(q(0, qos=350.0))
    (x,) = d.decide(0.0)
    assert x.instance.name == "big"


def test_the_accuracy_ranks_a_policy_reads_are_read_only() -> None:
    d = dispatcher("kairos")
    assert d.accuracy_rank is not None and d.accuracy_rank.tolist() == [2, 1]  # rm2 the more accurate
    with pytest.raises(ValueError, match="read-only"):
        d.accuracy_rank[0] = 0


@pytest.mark.parametrize("policy", ["kairos", "fluid"])
def test_the_fast_variant_when_only_it_makes_the_deadline(policy: str) -> None:
    d = dispatcher(policy)
    d.submit(q(0, qos=20.0))  # rm2 needs ~43 ms
    (x,) = d.decide(0.0)
    assert x.instance.name == "small"


@pytest.mark.parametrize("policy", ["kairos", "fluid"])
def test_two_queries_share_the_variants_by_deadline(policy: str) -> None:
    d = dispatcher(policy)
    d.submit(q(0, qos=20.0))
    d.submit(q(1, qos=350.0))
    placed = {x.query.id: x.instance.name for x in d.decide(0.0)}
    assert placed == {0: "small", 1: "big"}


def test_without_accuracies_the_variants_are_two_kinds_on_slack_alone() -> None:
    d = dispatcher("kairos", accuracy=None)
    assert d.accuracy_rank is None and d.kind_variant.tolist() == ["rm2", "wnd"]
    for i in range(2):
        d.submit(q(i, qos=350.0))
    assert {x.instance.name for x in d.decide(0.0)} == {"big", "small"}


@pytest.mark.parametrize("policy", ["kairos", "fluid", "fcfs", "round-robin"])
def test_a_pinned_query_waits_for_its_variant(policy: str) -> None:
    d = dispatcher(policy)
    d.submit(q(0, qos=350.0, variant="rm2"))
    (first,) = d.decide(0.0)
    assert first.instance.name == "big"
    d.submit(q(1, qos=350.0, variant="rm2"))  # big is busy: it waits, small stays free
    d.submit(q(2, qos=350.0, variant="wnd"))
    placed = d.decide(1.0)
    assert [(x.query.id, x.instance.name) for x in placed] == [(2, "small")]
    assert [p.id for p in d.pending] == [1]
    d.complete(first.query, first.instance, 40.0, 40.0)
    (again,) = d.decide(40.0)
    assert (again.query.id, again.instance.name) == (1, "big")


@pytest.mark.parametrize("policy", ["kairos", "fluid", "fcfs", "round-robin"])
def test_a_query_restricted_to_some_instances_goes_only_there(policy: str) -> None:
    d = dispatcher(policy)
    d.submit(Query(id=0, batch=100, arrival_ms=0.0, deadline_ms=350.0, only=frozenset({"small"})))
    (x,) = d.decide(0.0)  # unrestricted, it would go to the more accurate "big" (above)
    assert x.instance.name == "small"
    d.submit(Query(id=1, batch=100, arrival_ms=0.0, deadline_ms=350.0, only=frozenset({"small"})))
    assert d.decide(1.0) == [] and d.pinned == 1  # small is busy: it waits, big stays free
    d.complete(x.query, x.instance, 5.0, 5.0)
    (again,) = d.decide(5.0)
    assert (again.query.id, again.instance.name) == (1, "small") and d.pinned == 0


def test_an_aged_query_still_goes_only_where_it_may() -> None:
    est = LatencyEstimator(load_profiles(), "rm2", KINDS)
    d = Dispatcher(
        make_policy("kairos"), est, [("big", "r5n.large"), ("small", "wnd/r5n.large")],
        model="rm2", accuracy=ACCURACY, overload=OverloadControl(max_wait_ms=10.0),
    )  # fmt: skip
    d.submit(Query(id=0, batch=1, arrival_ms=0.0, deadline_ms=350.0, variant="rm2"))
    d.submit(Query(id=1, batch=1, arrival_ms=0.0, deadline_ms=350.0, only=frozenset({"small"})))
    d.instances[0].healthy = d.instances[1].healthy = True
    placed = {x.query.id: x.instance.name for x in d.decide(100.0)}  # both waited past 10 ms
    assert placed == {0: "big", 1: "small"}


@pytest.mark.parametrize("policy", ["kairos", "fluid", "fcfs", "round-robin"])
@pytest.mark.parametrize("queued", [1, 2])
def test_a_restriction_binds_without_accuracies(policy: str, queued: int) -> None:
    """No accuracy rank (a subset hint on a pool of one variant): the restriction alone decides.
    Unrestricted, kairos would take the faster "small"."""
    d = dispatcher(policy, accuracy=None)
    for i in range(queued):
        d.submit(Query(id=i, batch=100, arrival_ms=0.0, deadline_ms=350.0, only=frozenset({"big"})))
    placed = d.decide(0.0)
    assert [x.instance.name for x in placed] == ["big"]


@pytest.mark.parametrize("policy", ["kairos", "fluid", "fcfs"])
def test_an_aged_query_kept_to_a_busy_instance_lets_the_aged_ones_behind_it_go(policy: str) -> None:
    d = Dispatcher(make_policy(policy), LatencyEstimator(load_profiles(), "rm2", ["r5n.large"]),
                   [("a", "r5n.large"), ("b", "r5n.large")], overload=OverloadControl(max_wait_ms=100.0))  # fmt: skip
    d.submit(Query(id=9, batch=10, arrival_ms=0.0, deadline_ms=350.0, only=frozenset({"a"})))
    (busy,) = d.decide(0.0)
    assert busy.instance.name == "a"  # busy from now on
    d.submit(Query(id=0, batch=10, arrival_ms=1.0, deadline_ms=351.0, only=frozenset({"a"})))
    d.submit(Query(id=1, batch=500, arrival_ms=2.0, deadline_ms=352.0))
    assert d.next_change_ms(50.0) == 101.0
    placed = d.decide(150.0)  # both waited past 100 ms; only "b" is free
    assert [(x.query.id, x.instance.name) for x in placed] == [(1, "b")] and [q.id for q in d.pending] == [0]
