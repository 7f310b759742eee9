"""GatewayCore on fake instances: exactly one answer per query, retry once, admission, drain."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from gateway.backend import BackendReply, RoutedRequest
from gateway.backend.base import GRPC
from gateway.config import Variant
from gateway.core import GatewayCore, InferResult
from gateway.dispatch import Dispatcher, OverloadControl
from gateway.errors import BadRequest, DeadlineExceeded, InternalError, ModelNotFound, Overloaded, Unavailable
from gateway.estimator import LatencyEstimator
from gateway.outlier import ConsecutiveErrors
from gateway.policies import make_policy
from gateway.profiles import load_profiles
from tests.helpers.fake_instances import Behaviour, FakeInstance, failing, make_core, ok_after, request


async def test_every_query_answered_once_in_fifo_order_on_one_instance() -> None:
    core, (fake,) = make_core([ok_after(1)])
    results = await asyncio.gather(*(core.infer(request(i)) for i in range(20)))
    assert [r.reply.body for r in results] == [f"q{i}".encode() for i in range(20)]
    assert all(n == 1 for n in fake.calls.values()) and len(fake.calls) == 20
    assert core.outstanding == 0 and not core.dispatcher.pending
    assert results[-1].queue_ms > results[0].queue_ms


async def test_failed_instance_is_retried_once_elsewhere_and_leaves_rotation() -> None:
    core, (bad, good) = make_core([failing("bad"), ok_after(1)], policy="round-robin")
    results = await asyncio.gather(*(core.infer(request(i)) for i in range(6)))
    assert all(r.instance == good.name for r in results)
    assert sum(bad.calls.values()) == 1  # out of rotation after its first failure
    assert core.dispatcher.instances[0].healthy is False
    retried = [r for r in results if r.attempts == 2]
    assert len(retried) == 1


async def test_no_second_retry_gives_unavailable() -> None:
    core, fakes = make_core([failing("a"), failing("b"), ok_after(1)], policy="round-robin")
    # Keep the good instance out of rotation: both tries land on failing instances.
    core.set_instance_health("r5n.large-2", False)
    with pytest.raises(Unavailable):
        await core.infer(request(0))
    assert sum(f.calls["q0"] for f in fakes) == 2
    assert core.outstanding == 0


async def test_failure_after_the_deadline_is_a_deadline_error() -> None:
    core, _ = make_core([failing("a", after_ms=30), ok_after(1)], policy="round-robin")
    with pytest.raises(DeadlineExceeded):
        await core.infer(request(0, qos_ms=10))


async def test_hanging_instance_times_out_and_query_is_answered() -> None:
    core, _ = make_core([ok_after(10_000)])
    core.backend_timeout_ms = 50
    with pytest.raises(DeadlineExceeded):
        await core.infer(request(0, qos_ms=20))


async def test_admission_refuses_past_the_bound_and_never_hangs() -> None:
    core, _ = make_core([ok_after(20)], max_pending=2)
    outcomes = await asyncio.gather(*(core.infer(request(i)) for i in range(10)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert refused and served and len(refused) + len(served) == 10
    assert core.metrics.gateway.refusals.labels("rm2", "default", "queue_full")._value.get() == len(refused)


async def test_unknown_model_and_no_healthy_instance() -> None:
    core, _ = make_core([ok_after(1)])
    bad = request(0)
    bad.model = "ncf"
    with pytest.raises(ModelNotFound):
        await core.infer(bad)
    core.set_instance_health("r5n.large-0", False)
    assert not core.ready
    with pytest.raises(Unavailable):
        await core.infer(request(1))
    core.set_instance_health("r5n.large-0", True)
    assert core.ready
    assert (await core.infer(request(2))).reply.body == b"q2"


async def test_pending_queries_fail_when_the_last_instance_goes_down() -> None:
    core, _ = make_core([ok_after(50)])
    tasks = [asyncio.ensure_future(core.infer(request(i))) for i in range(3)]
    await asyncio.sleep(0.01)  # q0 in flight, q1 and q2 pending
    core.set_instance_health("r5n.large-0", False)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert not isinstance(outcomes[0], BaseException)
    assert all(isinstance(o, Unavailable) for o in outcomes[1:])


async def test_drain_answers_in_flight_then_refuses() -> None:
    core, _ = make_core([ok_after(20)])
    tasks = [asyncio.ensure_future(core.infer(request(i))) for i in range(4)]
    await asyncio.sleep(0)
    await core.drain()
    assert all(t.done() and not t.exception() for t in tasks)
    with pytest.raises(Overloaded):
        await core.infer(request(9))


async def test_cancelled_client_leaves_the_queue() -> None:
    core, (fake,) = make_core([ok_after(30)])
    first = asyncio.ensure_future(core.infer(request(0)))
    second = asyncio.ensure_future(core.infer(request(1)))
    await asyncio.sleep(0.005)
    second.cancel()
    await first
    await asyncio.sleep(0.05)
    assert "q1" not in fake.calls and core.outstanding == 0


async def test_client_gone_mid_call_holds_the_instance_until_its_estimate() -> None:
    """The instance still serves a query whose client left; nothing else goes there before the
    estimate says it is done."""
    core, (fake,) = make_core([ok_after(10_000)])
    first = asyncio.ensure_future(core.infer(request(0)))
    await asyncio.sleep(0.005)
    inst = core.dispatcher.instances[0]
    (orphan,) = inst.in_flight.values()
    assert orphan.est_ms > 5
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert core.outstanding == 0 and inst.in_flight  # answered (by cancellation), still held

    sent_at: list[float] = []

    async def record(req: RoutedRequest) -> BackendReply:
        sent_at.append(time.monotonic() * 1000.0)
        return await ok_after(1)(req)

    fake.behaviour = record
    result = await core.infer(request(1))
    assert result.reply.body == b"q1" and not inst.in_flight
    assert sent_at[0] >= orphan.started_ms + orphan.est_ms - 2.0  # the loop's timers may fire ~1 ms early


async def test_client_gone_after_its_query_was_placed_gives_the_slot_back() -> None:
    core, (_, spare) = make_core([ok_after(10_000), ok_after(1)])
    core.set_instance_health("r5n.large-1", False)
    first = asyncio.ensure_future(core.infer(request(0)))
    second = asyncio.ensure_future(core.infer(request(1)))
    await asyncio.sleep(0.005)
    assert [q.payload.request.request_id for q in core.dispatcher.pending] == ["q1"]
    core.set_instance_health("r5n.large-1", True)
    await asyncio.sleep(0)  # the decision this schedules places q1 on the spare ...
    assert not core.dispatcher.pending and core.dispatcher.instances[1].in_flight
    second.cancel()  # ... and its client leaves before q1 is sent
    with pytest.raises(asyncio.CancelledError):
        await second
    assert "q1" not in spare.calls and not core.dispatcher.instances[1].in_flight
    assert (await core.infer(request(2))).instance == spare.name
    first.cancel()


async def test_kairos_holds_a_query_for_the_fast_busy_instance_then_times_out_to_the_idle_one() -> None:
    """With kairos, an idle instance may be left idle; the deadline timer re-decides later."""
    core, _ = make_core([ok_after(5), ok_after(5)], policy="kairos", qos_ms=5000)
    results = await asyncio.gather(*(core.infer(request(i, batch=5)) for i in range(8)))
    assert len(results) == 8 and core.outstanding == 0


async def test_the_client_margin_comes_off_every_deadline() -> None:
    """QoS is met at the client: the gateway's deadline leaves the margin to the legs it cannot
    see, for the pool's QoS and for a query's own."""
    seen: list[float] = []

    def recording(core: GatewayCore) -> Behaviour:
        async def run(request: RoutedRequest) -> BackendReply:
            (held,) = core.dispatcher.instances[0].in_flight.values()
            seen.append(held.deadline_ms - held.arrival_ms)
            return BackendReply(body=b"", service_ms=1.0)

        return run

    core, (fake,) = make_core([ok_after(0)], client_margin_ms=2.5, late_queries="serve")
    fake.behaviour = recording(core)
    await core.infer(request(0))
    await core.infer(request(1, qos_ms=20.0))
    await core.infer(request(2, qos_ms=1.0))  # a QoS below the margin: due at once, still served
    assert seen == [pytest.approx(347.5), pytest.approx(17.5), 0.0]


async def test_the_deadline_counts_from_when_the_front_end_saw_the_request() -> None:
    """A front end that stamps ``received_s`` (the HTTP one: once the headers are parsed) starts
    the QoS clock there, not once the body is read; a stamp from the future is ignored."""
    seen: list[float] = []

    def recording(core: GatewayCore) -> Behaviour:
        async def run(request: RoutedRequest) -> BackendReply:
            (held,) = core.dispatcher.instances[0].in_flight.values()
            seen.append(held.deadline_ms - time.monotonic() * 1000.0)
            return BackendReply(body=b"", service_ms=1.0)

        return run

    core, (fake,) = make_core([ok_after(0)], qos_ms=100)
    fake.behaviour = recording(core)
    now = time.monotonic()
    await core.infer(RoutedRequest(protocol=GRPC, model="rm2", batch=1, body=b"", received_s=now - 0.040))
    await core.infer(RoutedRequest(protocol=GRPC, model="rm2", batch=1, body=b"", received_s=now + 10.0))
    await core.infer(request(2))
    assert 50.0 < seen[0] <= 60.0  # 40 ms of the 100 ms QoS were spent before the core saw it
    assert 90.0 < seen[1] <= 100.0 and 90.0 < seen[2] <= 100.0


def answering(status: int) -> Behaviour:
    async def run(request: RoutedRequest) -> BackendReply:
        return BackendReply(body=b'{"error": "bad features"}', status=status, service_ms=1.0)

    return run


async def test_error_answers_pass_back_and_eject_only_runs_of_five_leaving_half_the_pool() -> None:
    """Instances answering 500 (as MLServer does to a wrong feature count) may be answering bad
    requests: each answer goes back, nothing is retried; five in a row eject an instance, but
    never past half the pool."""
    behaviours = [answering(500), answering(500), ok_after(0)]
    core, fakes = make_core(behaviours, policy="round-robin", late_queries="serve")
    statuses = [(await core.infer(request(i))).reply.status for i in range(30)]
    assert statuses.count(500) >= 10 and all(s in (200, 500) for s in statuses)
    healthy = [i.healthy for i in core.dispatcher.instances]
    assert healthy.count(False) == 1 and healthy[2]  # one bad one out; the other stays: 2 of 3 left
    assert sum(sum(f.calls.values()) for f in fakes) == 30  # never retried


def test_a_good_answer_resets_the_run() -> None:
    runs = ConsecutiveErrors(3)
    assert not runs.record(0, True) and not runs.record(0, True)
    assert not runs.record(0, False)  # reset
    assert not runs.record(0, True) and not runs.record(0, True) and runs.record(0, True)
    assert not runs.record(1, True)  # per instance


async def test_outlier_detection_never_empties_the_pool() -> None:
    """One instance, a client sending only bad requests: every answer is the instance's 500,
    and the instance stays in rotation for the next client."""
    core, _ = make_core([answering(500)], late_queries="serve")
    for i in range(20):
        assert (await core.infer(request(i))).reply.status == 500
    assert core.dispatcher.instances[0].healthy


async def test_a_client_error_answer_never_ejects() -> None:
    core, _ = make_core([answering(400)])
    for i in range(20):
        assert (await core.infer(request(i))).reply.status == 400
    assert core.dispatcher.instances[0].healthy


async def test_retries_go_on_past_a_second_dead_instance() -> None:
    """Two instances of one dead process fail in turn: the third attempt reaches the live one."""
    core, _ = make_core([failing("a"), failing("b"), ok_after(1)], policy="round-robin")
    result = await core.infer(request(0))
    assert result.attempts == 3 and result.instance == "r5n.large-2"
    core2, _ = make_core([failing("a"), failing("b"), failing("c")], policy="round-robin")
    with pytest.raises(Unavailable) as exc:
        await core2.infer(request(0))
    assert "tried 3 instances" in str(exc.value)


async def test_a_gateway_bug_in_the_backend_call_fails_the_query_not_the_instance() -> None:
    async def broken(request: RoutedRequest) -> BackendReply:
        raise UnicodeEncodeError("latin-1", "☃", 0, 1, "not latin-1")

    core, (fake,) = make_core([broken])
    with pytest.raises(InternalError):
        await core.infer(request(0))
    assert core.dispatcher.instances[0].healthy
    fake.behaviour = ok_after(0)
    assert (await core.infer(request(1))).reply.ok


async def test_a_failing_decision_fails_its_queries_and_dispatching_goes_on() -> None:
    core, _ = make_core([ok_after(1)])
    real = core.dispatcher.decide
    calls = {"n": 0}

    def once_broken(now: float) -> list:  # type: ignore[type-arg]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OverflowError("Python int too large to convert to C long")
        return real(now)

    core.dispatcher.decide = once_broken  # type: ignore[method-assign]
    with pytest.raises(InternalError):
        await core.infer(request(0))
    assert (await core.infer(request(1))).reply.ok


async def test_batches_outside_the_profile_are_refused_before_the_dispatcher() -> None:
    core, _ = make_core([ok_after(1)], late_queries="serve")  # the largest batch overruns the QoS
    for batch in (0, core.max_batch + 1, 2**63):
        with pytest.raises(BadRequest):
            await core.infer(request(0, batch=batch))
    assert not core.dispatcher.pending
    assert (await core.infer(request(1, batch=core.max_batch))).reply.ok


async def test_hopeless_queries_are_shed_at_once_and_counted() -> None:
    core, _ = make_core([ok_after(300)])
    first = asyncio.ensure_future(core.infer(request(0, batch=10)))
    await asyncio.sleep(0)
    started = time.monotonic()
    # Admitted (the estimate says it ends in time) but the instance overruns: shed when hopeless.
    with pytest.raises(DeadlineExceeded) as exc:
        await core.infer(request(1, batch=10, qos_ms=60))
    assert "shed" in str(exc.value) or "deadline" in str(exc.value)
    assert time.monotonic() - started < 0.2
    await first
    shed = core.metrics.gateway.refusals.labels("rm2", "default", "shed")._value.get()
    refused = core.metrics.gateway.refusals.labels("rm2", "default", "deadline")._value.get()
    assert shed + refused == 1


async def test_abort_pending_answers_every_queued_query() -> None:
    core, _ = make_core([ok_after(200)], late_queries="serve")
    tasks = [asyncio.ensure_future(core.infer(request(i))) for i in range(5)]
    await asyncio.sleep(0.01)
    assert core.abort_pending(Overloaded("the gateway is shutting down")) == 4
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(o, Overloaded) for o in outcomes) == 4
    assert sum(isinstance(o, InferResult) for o in outcomes) == 1


async def test_a_client_may_ask_for_a_late_answer_instead_of_shedding() -> None:
    """With shedding on, a query with the request parameter late_queries="serve" is neither
    refused at admission nor shed: it is served, late."""
    core, _ = make_core([ok_after(300)])
    first = asyncio.ensure_future(core.infer(request(0)))
    await asyncio.sleep(0)
    late = request(1, qos_ms=60)
    late.late = "serve"
    result = await core.infer(late)
    assert result.reply.ok and result.e2e_ms > 60
    await first
    assert core.metrics.gateway.refusals.labels("rm2", "default", "shed")._value.get() == 0


async def test_refusals_are_timed_from_the_front_end() -> None:
    core, _ = make_core([ok_after(20)], max_pending=1, late_queries="serve")
    reqs = [request(i) for i in range(4)]
    for r in reqs:
        r.received_s = time.monotonic()
    outcomes = await asyncio.gather(*(core.infer(r) for r in reqs), return_exceptions=True)
    refused = sum(isinstance(o, Overloaded) for o in outcomes)
    assert refused >= 1
    assert b'kairos_refusal_duration_seconds_count ' + str(float(refused)).encode() in core.metrics.gateway.render()


def restricted(i: int, *names: str) -> RoutedRequest:
    """A request kept to some instances (the picker's subset hint)."""
    return replace(request(i), only=frozenset(names))


async def test_a_restricted_query_whose_instance_fails_is_answered_not_requeued_forever() -> None:
    """It may go nowhere else: another healthy instance is no retry for it."""
    core, (_, other) = make_core([failing("r5n.large-0"), ok_after(1)], late_queries="serve")
    with pytest.raises(Unavailable):
        await asyncio.wait_for(core.infer(restricted(0, "r5n.large-0")), 5)
    assert not other.calls and not core.dispatcher.pending and core.dispatcher.pinned == 0


async def test_queued_restricted_queries_fail_when_their_instances_leave_rotation() -> None:
    core, _ = make_core([ok_after(50), ok_after(1)], late_queries="serve")
    first = asyncio.ensure_future(core.infer(restricted(0, "r5n.large-0")))
    queued = asyncio.ensure_future(core.infer(restricted(1, "r5n.large-0")))  # waits for instance 0
    free = asyncio.ensure_future(core.infer(request(2)))
    await asyncio.sleep(0.01)
    assert [q.id for q in core.dispatcher.pending] == [1]
    core.set_instance_health("r5n.large-0", False)  # instance 1 stays: the pool is not empty
    with pytest.raises(Unavailable, match="subset"):
        await asyncio.wait_for(queued, 1)
    assert (await first).instance == "r5n.large-0" and (await free).instance == "r5n.large-1"
    assert core.dispatcher.pinned == 0


async def test_a_restriction_no_instance_in_rotation_meets_is_refused_at_once() -> None:
    core, _ = make_core([ok_after(1), ok_after(1)])
    core.set_instance_health("r5n.large-0", False)
    with pytest.raises(Unavailable, match="subset"):
        await core.infer(restricted(0, "r5n.large-0"))
    assert (await core.infer(restricted(1, "r5n.large-1"))).instance == "r5n.large-1"


async def test_a_pinned_variant_with_no_instance_in_rotation_is_refused_at_once() -> None:

    est = LatencyEstimator(load_profiles(), "rm2", ["r5n.large", "wnd/r5n.large"])
    d = Dispatcher(make_policy("kairos"), est, [("big", "r5n.large"), ("small", "wnd/r5n.large")], model="rm2",
                   accuracy={"rm2": 0.8, "wnd": 0.7}, overload=OverloadControl.for_mode("serve", 350.0))  # fmt: skip
    fakes = [FakeInstance("big", ok_after(1)), FakeInstance("small", ok_after(1))]
    core = GatewayCore("rm2", 350, d, fakes, variants=[Variant("rm2", 0.8), Variant("wnd", 0.7)])
    core.set_instance_health("small", False)
    with pytest.raises(Unavailable, match="variant 'wnd'"):
        await asyncio.wait_for(core.infer(replace(request(0), variant="wnd")), 1)
    with pytest.raises(Unavailable, match=r"variant 'rm2'.*subset"):  # its variant, and not that instance
        await asyncio.wait_for(core.infer(replace(request(1), variant="rm2", only=frozenset({"small"}))), 1)
    assert (await core.infer(replace(request(2), variant="rm2"))).instance == "big"
    assert not d.pending


async def test_fluid_serves_a_held_back_query_once_it_turns_urgent_with_no_other_event() -> None:
    """Live, as in the simulator: a timer at the moment fluid would serve it (a client margin puts
    the deadline before the instance's estimate)."""
    core, _ = make_core([ok_after(1)], policy="fluid", late_queries="serve", qos_ms=100, client_margin_ms=10.0)
    result = await asyncio.wait_for(core.infer(request(0, batch=500)), 3)
    assert result.instance == "r5n.large-0" and not core.dispatcher.pending


async def test_an_instances_first_round_trips_teach_no_overhead() -> None:
    """An instance's first round trips set up its connection (and, the process's first, load
    code): 40 ms of them taken as the overhead would refuse every query of a tight QoS at
    admission for good, and nothing more would be learned."""
    calls = 0

    async def cold_then_warm(request: RoutedRequest) -> BackendReply:
        nonlocal calls
        calls += 1
        return BackendReply(body=request.request_id.encode(), service_ms=1.0,
                            round_trip_ms=41.0 if calls <= 2 else 1.3)

    core, _ = make_core([cold_then_warm])
    for i in range(5):
        await core.infer(request(i))
    assert core.dispatcher.estimator.overhead_ms == pytest.approx(0.3)
