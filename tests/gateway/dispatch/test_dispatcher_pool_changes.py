"""The Dispatcher's pool while queries flow: add, drain and remove by stable name."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

TYPES = ["g4dn.xlarge", "r5n.large"]


def dispatcher(policy: str = "kairos", names: tuple[str, ...] = ("a", "b", "c")) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", TYPES)
    return Dispatcher(make_policy(policy), est, [(n, "r5n.large") for n in names])


def q(i: int, now: float = 0.0) -> Query:
    return Query(id=i, batch=10, arrival_ms=now, deadline_ms=now + 350)


def columns_agree(d: Dispatcher) -> None:
    """Every column describes the instance at its index, and the pool totals match."""
    assert [i.index for i in d.instances] == list(range(len(d.instances)))
    for inst in d.instances:
        j = inst.index
        assert d.instance(inst.name) is inst
        assert d._types[j] == inst.type_index
        assert d._ok[j] == inst.in_rotation
        assert d._held[j] == len(inst.in_flight)
    assert d._healthy_count == sum(i.in_rotation for i in d.instances)
    assert d._total_free == int(d._free.sum())
    per_type = np.bincount([i.type_index for i in d.instances if i.in_rotation], minlength=len(TYPES))
    assert d._type_healthy.tolist() == per_type.tolist()


def test_an_added_instance_takes_queries_at_once() -> None:
    d = dispatcher(names=("a",))
    for i in range(2):
        d.submit(q(i))
    assert [x.instance.name for x in d.decide(0.0)] == ["a"]
    gpu = d.add("gpu", "g4dn.xlarge")
    columns_agree(d)
    (placed,) = d.decide(1.0)
    assert placed.instance is gpu and placed.query.id == 1


def test_an_added_instance_waits_for_its_probe_when_not_healthy() -> None:
    d = dispatcher(names=())
    assert not d.has_healthy()
    new = d.add("a", "r5n.large", healthy=False)
    d.submit(q(0))
    assert d.decide(0.0) == []
    d.set_healthy(new, True)
    assert [x.instance.name for x in d.decide(1.0)] == ["a"]


def test_a_draining_instance_finishes_what_it_holds_and_takes_nothing_new() -> None:
    d = dispatcher(names=("a", "b"))
    for i in range(4):
        d.submit(q(i))
    placed = {x.instance.name: x for x in d.decide(0.0)}
    d.drain(d.instance("a"))
    columns_agree(d)
    a = placed["a"]
    d.complete(a.query, a.instance, 5.0, 5.0)
    assert a.instance.state == "draining" and not a.instance.removed
    b = placed["b"]
    d.complete(b.query, b.instance, 5.0, 6.0)
    (nxt,) = d.decide(6.0)
    assert nxt.instance.name == "b"


def test_remove_waits_for_the_last_query_then_shrinks_the_columns() -> None:
    d = dispatcher(names=("a", "b", "c"))
    for i in range(3):
        d.submit(q(i))
    placed = {x.instance.name: x for x in d.decide(0.0)}
    a = d.instance("a")
    assert d.remove(a) is False  # it still holds a query
    assert not a.removed and len(d.instances) == 3
    d.complete(placed["a"].query, a, 5.0, 5.0)
    assert a.removed and len(d.instances) == 2
    with pytest.raises(KeyError):
        d.instance("a")
    columns_agree(d)
    # The instance that moved into a's column still completes and serves correctly.
    c = d.instance("c")
    assert c.index == 0
    d.complete(placed["c"].query, c, 5.0, 6.0)
    d.submit(q(9, 6.0))
    assert [x.instance.name for x in d.decide(6.0)] == ["c"]
    columns_agree(d)


def test_an_idle_instance_is_removed_at_once_and_its_name_can_come_back() -> None:
    d = dispatcher(names=("a", "b"))
    b = d.instance("b")
    assert d.remove(b) is True and b.removed
    columns_agree(d)
    again = d.add("b", "g4dn.xlarge")
    assert again is not b and again.index == 1
    columns_agree(d)


def test_a_failed_query_on_a_removed_instance_is_retried_elsewhere() -> None:
    d = dispatcher(names=("a", "b"))
    d.submit(q(0))
    (x,) = d.decide(0.0)
    d.remove(x.instance)
    d.fail(x.query, x.instance)
    assert x.instance.removed and x.query.tried == {x.instance.name}
    d.requeue(x.query)
    (again,) = d.decide(1.0)
    assert again.instance.name != x.instance.name


def test_names_are_unique() -> None:
    d = dispatcher(names=("a",))
    with pytest.raises(ValueError, match="already"):
        d.add("a", "r5n.large")


def test_churn_keeps_every_column_consistent() -> None:
    """Random adds, drains, removes, arrivals and completions: the columns always agree, and
    every query submitted is dispatched exactly once."""
    rng = np.random.default_rng(7)
    d = dispatcher(policy="fluid", names=("i0", "i1"))
    serial, qid = 2, 0
    placed: list = []
    dispatched: list[int] = []
    now = 0.0
    for _ in range(2000):
        now += 1.0
        r = rng.random()
        live = [i for i in d.instances if not i.draining]
        if r < 0.05:
            d.add(f"i{serial}", TYPES[serial % 2])
            serial += 1
        elif r < 0.08 and len(live) > 1:
            d.drain(live[int(rng.integers(len(live)))])
        elif r < 0.12 and len(live) > 1:
            d.remove(live[int(rng.integers(len(live)))])
        elif r < 0.55:
            d.submit(Query(id=qid, batch=int(rng.integers(1, 200)), arrival_ms=now, deadline_ms=now + 350))
            qid += 1
        elif placed:
            x = placed.pop(int(rng.integers(len(placed))))
            d.complete(x.query, x.instance, 3.0, now)
        for x in d.decide(now):
            assert x.instance.in_rotation and not x.instance.removed
            placed.append(x)
            dispatched.append(x.query.id)
        columns_agree(d)
    assert len(dispatched) == len(set(dispatched))
    assert len(dispatched) + len(d.pending) == qid


def test_queries_queued_before_a_new_type_joins_are_dispatched_to_it() -> None:
    """Under admission control a queued query remembers which types could serve it; a type added
    later (an autoscaler starting a GPU) widens the pool without breaking that bookkeeping."""
    from gateway.dispatch import OverloadControl

    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    d = Dispatcher(make_policy("kairos"), est, [("cpu", "r5n.large")], overload=OverloadControl(admission=True))
    for i in range(4):
        d.submit(q(i), 0.0)
    first = d.decide(0.0)
    assert len(first) == 1
    gpu = d.add("gpu", "g4dn.xlarge", profile=load_profiles().get("rm2", "g4dn.xlarge"))
    placed = d.decide(1.0)
    assert [p.instance for p in placed] == [gpu]
    d.complete(first[0].query, first[0].instance, 100.0, 100.0)
    d.complete(placed[0].query, gpu, 50.0, 51.0)
    rest = d.decide(101.0)
    assert {p.query.id for p in first + placed + rest} <= {0, 1, 2, 3} and len(rest) >= 1
    assert all(b.min() >= -1e-6 for b in d._backlog.values())


def test_a_faster_type_joining_moves_the_queued_queries_latest_start() -> None:
    """Three batch-500 queries on one CPU (205 ms each, 350 ms deadlines): queued, the later two
    may start by 144.8 ms. A GPU (133 ms) joins: they may now start until 217 ms, and one that
    the GPU will take at ~153 ms is not shed at 145 ms."""
    profiles = load_profiles()
    d = Dispatcher(make_policy("fcfs"), LatencyEstimator(profiles, "rm2", ["r5n.large"]), [("cpu", "r5n.large")],
                   overload=OverloadControl(shed_late=True))  # fmt: skip
    for i in range(3):
        d.submit(Query(id=i, batch=500, arrival_ms=0.0, deadline_ms=350.0), 0.0)
    assert [x.query.id for x in d.decide(0.0)] == [0]
    assert d.next_shed_ms() == pytest.approx(144.8, abs=0.1)
    gpu = d.add("gpu", "g4dn.xlarge", profile=profiles.get("rm2", "g4dn.xlarge"))
    assert d.next_shed_ms() == pytest.approx(350.0 - d.estimator.estimate_one(gpu.type_index, 500))
    assert [x.query.id for x in d.decide(20.0)] == [1]
    assert d.shed(145.0) == [] and [q.id for q in d.pending] == [2]
    d.set_healthy(gpu, False)  # the fast type leaves again: the CPU's latest start is back
    assert d.next_shed_ms() == pytest.approx(144.8, abs=0.1)
