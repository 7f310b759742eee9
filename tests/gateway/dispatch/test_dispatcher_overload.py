"""The Dispatcher under overload: hopeless queries shed, admission by expected wait, a bound on
any query's wait when late queries are served, no pipelining onto an overdue instance."""

from __future__ import annotations

import pytest

from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.errors import DeadlineExceeded, Overloaded
from gateway.estimator import LatencyEstimator
from gateway.policies import make_policy
from gateway.profiles import load_profiles

QOS = 350.0


def dispatcher(
    overload: OverloadControl, policy: str = "fcfs", types: tuple[str, ...] = ("r5n.large",) * 2, **kw: object
) -> Dispatcher:
    est = LatencyEstimator(load_profiles(), "rm2", list(dict.fromkeys(types)))
    insts = [(f"i{k}", t) for k, t in enumerate(types)]
    return Dispatcher(make_policy(policy), est, insts, overload=overload, **kw)  # type: ignore[arg-type]


def q(i: int, batch: int = 10, now: float = 0.0, qos: float = QOS) -> Query:
    return Query(id=i, batch=batch, arrival_ms=now, deadline_ms=now + qos)


def test_a_query_that_turns_hopeless_is_shed_at_its_latest_start() -> None:
    d = dispatcher(OverloadControl(shed_late=True), types=("r5n.large",))
    busy, waiting = q(0), q(1)
    d.submit(busy, 0.0)
    d.submit(waiting, 0.0)
    assert [x.query for x in d.decide(0.0)] == [busy]
    latest = d.next_shed_ms()
    assert latest is not None
    assert latest == pytest.approx(QOS - d.fastest_ms(10))
    assert d.shed(latest - 1.0) == []
    assert d.shed(latest + 0.5) == [waiting]
    assert not d.pending and not waiting.queued and d.next_shed_ms() is None


def test_a_dispatched_or_cancelled_query_is_never_shed() -> None:
    d = dispatcher(OverloadControl(shed_late=True))
    a, b, c = q(0), q(1), q(2)
    for x in (a, b, c):
        d.submit(x, 0.0)
    d.decide(0.0)  # a and b placed
    assert d.cancel(c) and not d.cancel(c)
    assert d.shed(10_000.0) == []


def test_admission_refuses_what_cannot_end_by_its_deadline() -> None:
    d = dispatcher(OverloadControl(admission=True), types=("r5n.large",))
    service = d.fastest_ms(200)
    accepted = 0
    with pytest.raises(Overloaded) as refused:
        for i in range(100):
            d.submit(q(i, batch=200), 0.0)
            accepted += 1
    # Served one after another on one instance: as many as end within the QoS, give or take one.
    assert abs(accepted - QOS / service) <= 1.5
    assert "deadline" in str(refused.value) and refused.value.status == 503
    # A query that cannot be served in time even on an idle pool is a deadline error at once.
    idle = dispatcher(OverloadControl(admission=True), types=("r5n.large",))
    with pytest.raises(DeadlineExceeded):
        idle.submit(q(0, batch=900, qos=1.0), 0.0)


def test_admission_accounts_for_what_leaves_the_queue() -> None:
    d = dispatcher(OverloadControl(admission=True), types=("r5n.large",))
    queries = [q(i, batch=200) for i in range(3)]
    for x in queries:
        d.submit(x, 0.0)
    before = d.expected_done_ms(0.0, 10, QOS)
    (placed,) = d.decide(0.0)
    assert d.expected_done_ms(0.0, 10, QOS) == pytest.approx(before)  # from the queue to the instance
    d.cancel(queries[2])
    assert d.expected_done_ms(0.0, 10, QOS) < before
    d.complete(placed.query, placed.instance, 1.0, 1.0)
    d.cancel(queries[1])
    assert d.expected_done_ms(1.0, 10, QOS) == pytest.approx(d.fastest_ms(10))


def test_work_only_a_gpu_can_serve_in_time_does_not_hold_back_small_queries() -> None:
    """Large batches queued for the GPU: a small batch a CPU serves in time is admitted, a large
    one that needs the GPU is refused."""
    d = dispatcher(OverloadControl(admission=True), types=("g4dn.xlarge", "r5n.large", "r5n.large"))
    for i in range(3):
        d.submit(q(i, batch=1000))  # queued unchecked; only the GPU serves 1,000 within 350 ms
    d.submit(q(100, batch=10), 0.0)
    with pytest.raises(Overloaded):
        d.submit(q(101, batch=1000), 0.0)


class _Starving:
    """A policy that never serves the head of the queue (as a slack-maximising one may do to a
    large batch under backlog)."""

    name = "starving"
    one_per_instance = True

    def window(self, n_instances: int, n_free: int) -> int:
        return 64

    def decide(self, snap: object) -> list[tuple[int, int]]:
        free = [j for j, f in enumerate(snap.free_slots) if f > 0]  # type: ignore[attr-defined]
        return [(pos, j) for pos, j in zip(range(1, len(snap.batch)), free, strict=False)]  # type: ignore[attr-defined]


def test_max_wait_serves_a_starved_query_first() -> None:
    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large"])
    d = Dispatcher(
        _Starving(), est, [("i0", "r5n.large")], overload=OverloadControl(max_wait_ms=100.0)
    )  # type: ignore[arg-type]
    starved = q(0, batch=600)
    d.submit(starved)
    now = 0.0
    for i in range(1, 6):
        d.submit(q(i, now=now))
        placed = d.decide(now)
        assert starved not in [x.query for x in placed] or now >= 100.0
        for x in placed:
            d.complete(x.query, x.instance, 1.0, now)
            if x.query is starved:
                assert now >= 100.0
                return
        now += 60.0
    pytest.fail("the starved query was never served")


def test_no_pipelining_onto_an_instance_long_overdue() -> None:
    d = dispatcher(OverloadControl(), types=("r5n.large",), pipeline=True)
    d.estimator.observe_overhead(2.0)  # a learned round trip opens pipelining
    first = q(0)
    d.submit(first)
    assert len(d.decide(0.0)) == 1
    end = first.est_ms
    d.submit(q(1))
    assert d.decide(end - 1.0) != []  # due now: the next query is sent behind it
    d2 = dispatcher(OverloadControl(), types=("r5n.large",), pipeline=True)
    d2.estimator.observe_overhead(2.0)
    d2.submit(q(0))
    (p2,) = d2.decide(0.0)
    d2.submit(q(1))
    assert d2.decide(p2.query.est_ms + 50.0) == []  # 50 ms past its estimate: maybe hung


def test_the_admission_factor_rises_with_shedding_and_falls_back_with_timely_dispatches() -> None:
    d = dispatcher(OverloadControl(shed_late=True, admission=True), types=("r5n.large",))
    assert d.admission_factors.get(0, 1.0) == 1.0
    d.submit(q(0), 0.0)
    d.submit(q(1), 0.0)
    (busy,) = d.decide(0.0)
    assert len(d.shed(QOS)) == 1  # the one still queued at its deadline
    assert d.admission_factors[0] > 1.0
    d.complete(busy.query, busy.instance, 1.0, QOS)
    # Dispatches in time bring it back down, never below 1.
    for i in range(2, 20_000):
        d.submit(q(i, now=float(i)), float(i))
        (placed,) = d.decide(float(i))
        d.complete(placed.query, placed.instance, 1.0, float(i))
    assert d.admission_factors.get(0, 1.0) == 1.0


def test_admission_and_shedding_judge_a_restricted_query_on_the_instances_it_may_use() -> None:
    """Batch 500: 133 ms on the GPU, 205 ms on the CPU. Kept to the CPU with 160 ms left, it is
    hopeless at once; with 300 ms left it is admitted, and its backlog and latest start are the
    CPU's, not the GPU's."""
    est = LatencyEstimator(load_profiles(), "rm2", ["g4dn.xlarge", "r5n.large"])
    d = Dispatcher(make_policy("kairos"), est, [("gpu", "g4dn.xlarge"), ("cpu", "r5n.large")],
                   overload=OverloadControl(shed_late=True, admission=True))  # fmt: skip
    cpu_ms = est.estimate_one(1, 500)
    with pytest.raises(DeadlineExceeded, match="205"):
        d.submit(Query(id=0, batch=500, arrival_ms=0.0, deadline_ms=160.0, only=frozenset({"cpu"})), 0.0)
    d.submit(Query(id=1, batch=500, arrival_ms=0.0, deadline_ms=300.0, only=frozenset({"cpu"})), 0.0)
    assert d.next_shed_ms() == pytest.approx(300.0 - cpu_ms)
    backlog = d._backlog[0]
    assert backlog[0] == 0.0 and backlog[1] == pytest.approx(cpu_ms)
