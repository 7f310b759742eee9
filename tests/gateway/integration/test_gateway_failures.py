"""The gateway under failure: an instance killed mid-load, a pool that goes away, a full
queue, and SIGTERM with queries in flight (HTTP, and gRPC on either server). rm2 pools (service times of tens of ms)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from gateway_process import (
    RunningGateway,
    gateway_config,
    instance_flags,
    json_request,
    launch_gateway,
    post_infer,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.inputs import proto_request, triton_inputs
from helpers.pool import RunningPool

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.v2 import GRPC_INFER_METHOD

pytestmark = pytest.mark.slow
MODEL = "rm2"


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def test_instance_killed_mid_load_every_query_answered_exactly_once(
    server_pool: Callable[..., RunningPool], tmp_path: Any
) -> None:
    main = server_pool(pool={"g4dn.xlarge": 1, "r5n.large": 1}, model=MODEL)
    victim = server_pool(pool={"r5n.large": 1}, model=MODEL)  # its own process, to kill
    config = gateway_config(main.config_path, tmp_path)
    gw = launch_gateway(config, ["--policy", "round-robin", *instance_flags(main, victim)], tmp_path)
    try:
        n, rate = 90, 60.0
        answers: Counter[str] = Counter()
        statuses: Counter[int] = Counter()

        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> None:
                await asyncio.sleep(i / rate)
                status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(100, f"q{i}"))
                statuses[status] += 1
                answers[doc.get("id", f"q{i}") if status == 200 else f"q{i}"] += 1

            load = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(n))))
            await asyncio.sleep(0.5)
            victim.stop(signal.SIGKILL)
            await asyncio.wait_for(load, 30)
        assert set(answers) == {f"q{i}" for i in range(n)}
        assert all(c == 1 for c in answers.values()), "a query was answered twice"
        assert set(statuses) <= {200, 502, 504}
        assert statuses[200] >= 0.9 * n, statuses
        assert await metric(gw.url, "kairos_health_changes_total") >= 1
        assert await metric(gw.url, "kairos_instance_failures_total") >= 1
    finally:
        assert gw.stop() == 0


async def test_not_ready_while_every_instance_is_down(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway]
) -> None:
    pool = server_pool(pool={"r5n.large": 1}, model=MODEL)
    gw = gateway_proc(pool)
    g = tg.InferenceServerClient(gw.grpc)
    assert g.is_server_ready()
    pool.stop()
    deadline = time.monotonic() + 5
    while g.is_server_ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not g.is_server_ready() and not g.is_model_ready(MODEL)
    with grpc.insecure_channel(gw.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/v2/health/ready") as resp:
            assert resp.status == 503
        status, doc, headers = await post_infer(s, gw.url, MODEL, json_request(1))
        # Unavailable for now, not a bad gateway: 503 with Retry-After; gRPC UNAVAILABLE.
        assert status == 503 and "no healthy instance" in doc["error"] and headers["Retry-After"] == "1"
    x = tg.InferInput("dense", [1, 13], "FP32")
    x.set_data_from_numpy(np.zeros((1, 13), dtype=np.float32))
    with pytest.raises(tg.InferenceServerException, match="no healthy instance") as err:
        g.infer(MODEL, [x])
    assert err.value.status() == "StatusCode.UNAVAILABLE"


async def test_full_queue_refuses_at_once_with_retry_after(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway]
) -> None:
    pool = server_pool(pool={"r5n.large": 1}, model=MODEL)
    gw = gateway_proc(pool, "--max-pending", "2")
    async with aiohttp.ClientSession() as s:
        start = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(post_infer(s, gw.url, MODEL, json_request(50, f"b{i}")) for i in range(30))), 20
        )
    refused = [r for r in results if r[0] == 503]
    assert refused and any(r[0] == 200 for r in results)
    assert {r[0] for r in results} <= {200, 503}
    assert all(int(h["Retry-After"]) >= 1 and "error" in d for _, d, h in refused)
    assert time.monotonic() - start < 20

    channel = tg.InferenceServerClient(gw.grpc)
    errors: list[str] = []
    answered: list[bool] = []

    def done(result: Any, error: Any) -> None:
        answered.append(True)
        if error is not None:
            errors.append(str(error.status()))

    inputs = triton_inputs(tg, MODEL, 50)
    for _ in range(20):
        channel.async_infer(MODEL, inputs, done)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(answered) < 20:
        await asyncio.sleep(0.05)
    assert len(answered) == 20, "a gRPC query was left hanging"
    assert any("RESOURCE_EXHAUSTED" in e for e in errors), errors
    assert await metric(gw.url, "kairos_refusals_total") >= len(refused)


async def test_sigterm_answers_queries_in_flight_then_exits_0(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway]
) -> None:
    pool = server_pool(pool={"r5n.large": 2}, model=MODEL)
    # Late answers served: the 8th of these may end past its deadline, and shedding would refuse it.
    gw = gateway_proc(pool, gateway={"late_queries": "serve"})
    async with aiohttp.ClientSession() as s:
        load = asyncio.ensure_future(
            asyncio.gather(*(post_infer(s, gw.url, MODEL, json_request(200, f"s{i}")) for i in range(8)))
        )
        await asyncio.sleep(0.15)
        gw.process.send_signal(signal.SIGTERM)
        results = await asyncio.wait_for(load, 20)
    assert [r[0] for r in results] == [200] * 8
    assert sorted(r[1]["id"] for r in results) == sorted(f"s{i}" for i in range(8))
    assert await asyncio.get_running_loop().run_in_executor(None, gw.process.wait, 15) == 0


async def test_a_stalled_gateway_keeps_its_instances_and_answers_what_they_sent_meanwhile(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway]
) -> None:
    """The gateway stopped (SIGSTOP: a long GC pause, a spent CPU quota) past its backend timeout
    (1.05 s for rm2) while instances serve its queries: the answers wait in its sockets, and on
    waking it must read them, not time the queries out and take every instance out of rotation."""
    pool = server_pool(pool={"r5n.large": 2}, model=MODEL)
    gw = gateway_proc(pool, gateway={"late_queries": "serve"})
    async with aiohttp.ClientSession() as s:
        assert (await post_infer(s, gw.url, MODEL, json_request(8)))[0] == 200  # connections open
        load = asyncio.ensure_future(
            asyncio.gather(*(post_infer(s, gw.url, MODEL, json_request(200, f"p{i}")) for i in range(2)))
        )
        deadline = time.monotonic() + 10
        while await metric(gw.url, "kairos_dispatches_total") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        assert await metric(gw.url, "kairos_dispatches_total") == 3, "not both sent: the stop would test nothing"
        gw.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(1.6)
        gw.process.send_signal(signal.SIGCONT)
        results = await asyncio.wait_for(load, 20)
    assert [r[0] for r in results] == [200, 200], results
    assert await metric(gw.url, "kairos_instance_failures_total") == 0
    assert await metric(gw.url, "kairos_health_changes_total") == 0


@pytest.mark.parametrize("grpc_server", ["native", "grpcio"])
async def test_sigterm_answers_grpc_queries_in_flight_then_exits_0(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway], grpc_server: str
) -> None:
    pool = server_pool(pool={"r5n.large": 2}, model=MODEL)
    gw = gateway_proc(pool, gateway={"grpc_server": grpc_server, "late_queries": "serve"})
    channel = grpc.aio.insecure_channel(gw.grpc)
    call = channel.unary_unary(GRPC_INFER_METHOD)
    requests = []
    for i in range(8):
        requests.append(proto_request(MODEL, 200, id=f"s{i}").SerializeToString())
    load = asyncio.gather(*(call(body, timeout=20) for body in requests), return_exceptions=True)
    await asyncio.sleep(0.15)
    gw.process.send_signal(signal.SIGTERM)
    replies = await asyncio.wait_for(load, 20)
    await channel.close()
    assert all(isinstance(r, bytes) for r in replies), replies
    assert sorted(pb.ModelInferResponse.FromString(r).id for r in replies) == sorted(f"s{i}" for i in range(8))
    assert await asyncio.get_running_loop().run_in_executor(None, gw.process.wait, 15) == 0


async def test_grpc_clients_that_give_up_mid_query_leave_the_gateway_serving(
    server_pool: Callable[..., RunningPool], gateway_proc: Callable[..., RunningGateway]
) -> None:
    """Clients whose deadline passes: one query in flight on the only instance, the rest in the
    gateway's queue. Each gets DEADLINE_EXCEEDED; the queue and the instance are freed; the next
    client is served. Late queries served: shedding would refuse the queued ones first."""
    pool = server_pool(pool={"r5n.large": 1}, model=MODEL)
    gw = gateway_proc(pool, gateway={"late_queries": "serve"})
    client = tg.InferenceServerClient(gw.grpc)
    inputs = triton_inputs(tg, MODEL, 500)  # ~200 ms on the instance
    errors: list[str] = []

    def done(result: Any, error: Any) -> None:
        errors.append("ok" if error is None else str(error.status()))

    for i in range(4):
        client.async_infer(MODEL, inputs, done, request_id=f"gone{i}", client_timeout=0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(errors) < 4:
        await asyncio.sleep(0.01)
    assert errors == ["StatusCode.DEADLINE_EXCEEDED"] * 4
    sent = await metric(gw.url, "kairos_dispatches_total")
    assert sent <= 1  # the first, if it reached the gateway in time; the queued ones never left
    result = await asyncio.get_running_loop().run_in_executor(
        None, lambda: client.infer(MODEL, inputs, request_id="after", client_timeout=10)
    )
    assert result.get_response().id == "after"
    assert await metric(gw.url, "kairos_dispatches_total") == sent + 1
    while time.monotonic() < deadline and await metric(gw.url, "kairos_instance_in_flight") > 0:
        await asyncio.sleep(0.05)
    assert await metric(gw.url, "kairos_instance_in_flight") == 0
    assert await metric(gw.url, "kairos_pending_queries") == 0
