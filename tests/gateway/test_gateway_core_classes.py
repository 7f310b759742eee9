"""GatewayCore with service classes: each request's class sets its deadline and priority, an
unknown class is the client's error, and a full queue refuses the lower class first."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ServiceClass
from gateway.errors import BadRequest, DeadlineExceeded, Overloaded
from tests.helpers.fake_instances import make_core, ok_after, request

CLASSES = (
    ServiceClass("premium", 60.0, 0.99, 2),
    ServiceClass("standard", 350.0, 0.99, 1),
    ServiceClass("batch", 5000.0, 0.9, 0),
)


async def test_the_class_sets_the_deadline_and_none_means_the_first_class() -> None:
    core, _ = make_core([ok_after(100)], classes=CLASSES, late_queries="serve")
    assert core.default_class.name == "premium" and core.qos_ms == 60.0
    result = await core.infer(request(0, service_class="batch"))
    assert result.reply.ok
    violations = core.metrics.gateway.violations
    assert violations.labels("rm2", "batch")._value.get() == 0
    await core.infer(request(1))  # premium by default: 100 ms is past its 60 ms
    assert violations.labels("rm2", "premium")._value.get() == 1
    text = core.metrics.gateway.render().decode()
    assert 'kairos_request_duration_seconds_count{class="batch",model="rm2",protocol="grpc"} 1.0' in text


async def test_an_unknown_class_is_a_bad_request_naming_the_classes() -> None:
    core, (fake,) = make_core([ok_after(1)], classes=CLASSES)
    with pytest.raises(BadRequest, match=r"unknown class 'gold' for model 'rm2': expected one of premium, standard, batch"):
        await core.infer(request(0, service_class="gold"))
    assert not fake.calls and core.outstanding == 0


async def test_without_classes_the_model_has_one_default_class() -> None:
    core, _ = make_core([ok_after(1)])
    assert list(core.classes) == ["default"]
    assert (await core.infer(request(0, service_class="default"))).reply.ok
    with pytest.raises(BadRequest):
        await core.infer(request(1, service_class="premium"))


async def test_a_full_queue_refuses_the_lower_class_to_admit_a_higher_one() -> None:
    core, _ = make_core([ok_after(50)], max_pending=1, classes=CLASSES, late_queries="serve")
    busy = asyncio.ensure_future(core.infer(request(0, service_class="batch")))
    await asyncio.sleep(0.005)  # q0 on the instance
    queued = asyncio.ensure_future(core.infer(request(1, service_class="batch")))
    await asyncio.sleep(0)
    premium = asyncio.ensure_future(core.infer(request(2, service_class="standard")))
    with pytest.raises(Overloaded, match="a query of a higher class took this one's place") as exc:
        await queued
    assert exc.value.reason == "displaced" and exc.value.retry_after_s > 0
    assert (await premium).reply.body == b"q2" and (await busy).reply.ok
    refusals = core.metrics.gateway.refusals
    assert refusals.labels("rm2", "batch", "displaced")._value.get() == 1
    with pytest.raises(Overloaded, match="queue is full"):  # the same class cannot displace its own
        blocker = asyncio.ensure_future(core.infer(request(3, service_class="standard")))
        await asyncio.sleep(0.005)
        second = asyncio.ensure_future(core.infer(request(4, service_class="standard")))
        await asyncio.sleep(0)
        await core.infer(request(5, service_class="standard"))
    await asyncio.gather(blocker, second)
    assert core.outstanding == 0


async def test_a_per_request_qos_still_overrides_the_class_target() -> None:
    core, _ = make_core([ok_after(100)], classes=CLASSES)
    assert (await core.infer(request(0, qos_ms=20, service_class="batch"))).reply.ok  # served, late
    assert core.metrics.gateway.violations.labels("rm2", "batch")._value.get() == 1
    with pytest.raises(DeadlineExceeded):  # 1 ms: not even the fastest instance could make it
        await core.infer(request(1, qos_ms=1, service_class="batch"))
