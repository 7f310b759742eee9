"""The endpoint picker in process, in front of a real ``kairos-servers`` pool, with a gRPC client
that plays Envoy's part of the ext_proc exchange: picks, the dispatcher's accounting from the
pick to the response, the body mode, the subset hint, refusals, and streams that end early."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.inputs import json_body, proto_request
from helpers.pool import RunningPool

from gateway.app import Gateway, GatewaySettings
from gateway.backend.picked import host_port
from gateway.config import load_config, parse_config
from gateway.epp import ext_proc_pb2 as ep
from gateway.epp.processor import METHOD
from gateway.errors import ConfigError
from gateway.pool import load_address_file

pytestmark = pytest.mark.slow
MODEL = "rm2"


def headers(**values: str) -> ep.HttpHeaders:
    pairs = [(k.replace("_", "-") if not k.startswith(":") else k, v) for k, v in values.items()]
    return ep.HttpHeaders(headers=ep.HeaderMap(headers=[ep.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))


def infer_headers(batch: int | None = 1, grpc_call: bool = False, **more: str) -> ep.HttpHeaders:
    values = {":method": "POST", **more}
    if grpc_call:
        values.update({":path": "/inference.GRPCInferenceService/ModelInfer", "content-type": "application/grpc"})
    else:
        values.update({":path": f"/v2/models/{MODEL}/infer", "content-type": "application/json"})
    if batch is not None:
        values["kairos-batch"] = str(batch)
    return headers(**values)


def upstream_answer(status: str = "200", upstream_ms: str | None = "7") -> ep.ProcessingRequest:
    values = {":status": status}
    if upstream_ms is not None:
        values["x-envoy-upstream-service-time"] = upstream_ms
    return ep.ProcessingRequest(response_headers=headers(**values))


def set_headers(response: ep.ProcessingResponse) -> dict[str, str]:
    phase = response.WhichOneof("response")
    common = getattr(response, phase).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


Stub = grpc.aio.StreamStreamMultiCallable


def ext_proc_stub(channel: grpc.aio.Channel) -> Stub:
    return channel.stream_stream(
        METHOD,
        request_serializer=ep.ProcessingRequest.SerializeToString,
        response_deserializer=ep.ProcessingResponse.FromString,
    )


class Stream:
    """One ext_proc stream, as Envoy drives it."""

    def __init__(self, stub: Stub) -> None:
        self.call = stub()

    async def send(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        await self.call.write(request)
        return await asyncio.wait_for(self.call.read(), 10)

    async def close(self) -> None:
        await self.call.done_writing()


@pytest.fixture(params=["native", "grpcio"])
async def picker(
    request: pytest.FixtureRequest, server_pool: Callable[..., RunningPool], tmp_path: Path
) -> AsyncIterator[Any]:
    """Starts a picker on the gateway's own gRPC server, and again on grpc.aio."""
    made: list[Gateway] = []

    async def start(pool: dict[str, int] | None = None, **gateway: Any) -> tuple[Gateway, RunningPool, Stub]:
        running = server_pool(pool=pool or {"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL)
        config = load_config(running.config_path)
        settings = GatewaySettings.from_config(
            config, mode="epp", epp_port=0, http_port=0, grpc_port=0, grpc_server=request.param, **gateway
        )
        gw = Gateway(config, load_address_file(str(running.address_file), MODEL), settings)
        made.append(gw)
        await gw.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.epp_port}")
        channels.append(channel)
        return gw, running, ext_proc_stub(channel)

    channels: list[grpc.aio.Channel] = []
    yield start
    for channel in channels:
        await channel.close()
    for gw in made:
        await gw.stop(1.0)


def streams_ended(gw: Gateway) -> dict[str, float]:
    """The picker's ``kairos_epp_streams_total`` by outcome."""
    text = gw.metrics.render().decode()
    return {k: float(v) for k, v in re.findall(r'^kairos_epp_streams_total\{outcome="(\w+)"\} (\S+)$', text, re.M)}


async def ended_soon(gw: Gateway, outcome: str, n: int) -> bool:
    """Whether ``n`` streams have ended with ``outcome`` within a second (a stream's end is
    counted once Envoy's side of it has closed)."""
    for _ in range(100):
        if streams_ended(gw).get(outcome) == n:
            return True
        await asyncio.sleep(0.01)
    return False


def addresses(running: RunningPool) -> tuple[dict[str, str], dict[str, str]]:
    """Each instance's HTTP and gRPC address, by name."""
    return (
        {i.name: host_port(i.http) for i in running.instances},
        {i.name: host_port(i.grpc) for i in running.instances},
    )


async def test_a_query_holds_its_instance_from_the_pick_to_the_response(picker: Any) -> None:
    gw, running, stub = await picker()
    http, _ = addresses(running)
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10, x_request_id="q1")))
    sent = set_headers(picked)
    name = sent["kairos-instance"]
    assert sent["x-gateway-destination-endpoint"] == http[name]
    lb = picked.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == http[name]
    inst = gw.registry.get(MODEL).core.instance(name)
    assert inst is not None and len(inst.in_flight) == 1
    answered = await stream.send(upstream_answer())
    assert set_headers(answered) == {"kairos-instance": name}
    await stream.close()
    for _ in range(100):
        if not inst.in_flight:
            break
        await asyncio.sleep(0.01)
    assert not inst.in_flight and inst.served == 1
    assert await ended_soon(gw, "answered", 1) and b"kairos_epp_streams_open 0.0" in gw.metrics.render()


async def test_grpc_calls_go_to_the_grpc_port(picker: Any) -> None:
    _, running, stub = await picker()
    _, grpc_addresses = addresses(running)
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=4, grpc_call=True, kairos_model=MODEL)))
    sent = set_headers(picked)
    assert sent["x-gateway-destination-endpoint"] == grpc_addresses[sent["kairos-instance"]]
    await stream.send(upstream_answer())
    await stream.close()


async def test_with_the_body_sent_the_batch_comes_from_the_body(picker: Any) -> None:
    gw, _, stub = await picker()
    stream = Stream(stub)
    first = ep.ProcessingRequest(
        request_headers=infer_headers(batch=None),
        protocol_config=ep.ProtocolConfiguration(request_body_mode=ep.BUFFERED),
    )
    went_on = await stream.send(first)
    assert went_on.WhichOneof("response") == "request_headers" and not set_headers(went_on)
    picked = await stream.send(ep.ProcessingRequest(request_body=ep.HttpBody(body=json_body(MODEL, 37), end_of_stream=True)))
    assert picked.WhichOneof("response") == "request_body"
    inst = gw.registry.get(MODEL).core.instance(set_headers(picked)["kairos-instance"])
    assert inst is not None and [q.batch for q in inst.in_flight.values()] == [37]
    await stream.send(upstream_answer())
    await stream.close()

    grpc_stream = Stream(stub)  # gRPC: the model and batch from the framed protobuf
    message = proto_request(MODEL, 23).SerializeToString()
    first = ep.ProcessingRequest(
        request_headers=infer_headers(batch=None, grpc_call=True),
        protocol_config=ep.ProtocolConfiguration(request_body_mode=ep.BUFFERED),
    )
    await grpc_stream.send(first)
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    picked = await grpc_stream.send(ep.ProcessingRequest(request_body=ep.HttpBody(body=framed, end_of_stream=True)))
    inst = gw.registry.get(MODEL).core.instance(set_headers(picked)["kairos-instance"])
    assert inst is not None and [q.batch for q in inst.in_flight.values()] == [23]
    await grpc_stream.send(upstream_answer())
    await grpc_stream.close()


def subset_hint(*endpoints: str) -> ep.Metadata:
    metadata = ep.Metadata()
    listed = metadata.filter_metadata["envoy.lb.subset_hint"].fields["x-gateway-destination-endpoint-subset"]
    listed.list_value.values.extend(ep.Value(string_value=e) for e in endpoints)
    return metadata


async def test_the_subset_hint_is_honoured_and_an_empty_one_is_503(picker: Any) -> None:
    _, running, stub = await picker()
    http, _ = addresses(running)
    cpu = next(n for n in http if n.startswith("r5n"))  # kairos prefers the GPU when it is free
    for _ in range(3):
        stream = Stream(stub)
        picked = await stream.send(
            ep.ProcessingRequest(request_headers=infer_headers(batch=50), metadata_context=subset_hint(http[cpu]))
        )
        assert set_headers(picked)["x-gateway-destination-endpoint"] == http[cpu]
        await stream.send(upstream_answer())
        await stream.close()
    stream = Stream(stub)
    refused = await stream.send(
        ep.ProcessingRequest(request_headers=infer_headers(), metadata_context=subset_hint("10.9.9.9:1"))
    )
    assert refused.immediate_response.status.code == 503
    assert "subset" in orjson.loads(refused.immediate_response.body)["error"]
    # A gRPC call is sent to the instance's gRPC address: an instance whose HTTP address alone is
    # listed is not in the subset for it.
    _, grpc_of = addresses(running)
    stream = Stream(stub)
    refused = await stream.send(
        ep.ProcessingRequest(request_headers=infer_headers(grpc_call=True, kairos_model=MODEL),
                             metadata_context=subset_hint(http[cpu]))
    )
    assert refused.immediate_response.grpc_status.status == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "subset" in refused.immediate_response.body.decode()
    stream = Stream(stub)
    picked = await stream.send(
        ep.ProcessingRequest(request_headers=infer_headers(grpc_call=True, kairos_model=MODEL),
                             metadata_context=subset_hint(grpc_of[cpu]))
    )
    assert set_headers(picked)["x-gateway-destination-endpoint"] == grpc_of[cpu]
    await stream.send(upstream_answer())
    await stream.close()


async def test_bad_requests_are_answered_at_once_with_the_protocols_errors(picker: Any) -> None:
    gw, _, stub = await picker()
    cases = [
        (infer_headers(batch=None, kairos_batch="0"), 400, "kairos-batch"),
        (infer_headers(kairos_class="a b"), 400, "kairos-class"),
        (infer_headers(kairos_qos_ms="-5"), 400, "kairos-qos-ms"),
        (headers(**{":method": "POST", ":path": "/v2/models/nosuch/infer"}), 404, "unknown model"),
        (infer_headers(batch=10**6), 400, "batch size"),
    ]
    for request_headers, status, text in cases:
        refused = await Stream(stub).send(ep.ProcessingRequest(request_headers=request_headers))
        assert refused.immediate_response.status.code == status, text
        assert text in orjson.loads(refused.immediate_response.body)["error"]
    refused = await Stream(stub).send(ep.ProcessingRequest(request_headers=infer_headers(grpc_call=True)))
    assert refused.immediate_response.grpc_status.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert b"kairos-model" in refused.immediate_response.body
    assert gw.plane.outstanding == 0
    assert await ended_soon(gw, "refused", len(cases) + 1)


async def test_a_full_queue_is_429_and_the_queue_moves_on(picker: Any) -> None:
    gw, _, stub = await picker(pool={"r5n.large": 1}, max_pending=1, pipeline=False)
    holding = Stream(stub)
    picked = await holding.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    assert set_headers(picked)["kairos-instance"]
    waiting = Stream(stub)
    await waiting.call.write(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    await asyncio.sleep(0.1)  # queued: the only instance is busy
    refused = await Stream(stub).send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    assert refused.immediate_response.status.code == 429
    sent = {h.header.key: h.header.raw_value for h in refused.immediate_response.headers.set_headers}
    assert sent == {"content-type": b"application/json", "retry-after": b"1"}
    await holding.send(upstream_answer())
    await holding.close()
    picked = await asyncio.wait_for(waiting.call.read(), 5)  # the instance is free: it goes
    assert set_headers(picked)["kairos-instance"]
    await waiting.send(upstream_answer())
    await waiting.close()
    assert gw.plane.outstanding == 0


async def test_a_stream_that_ends_before_the_answer_frees_its_instance(picker: Any) -> None:
    gw, _, stub = await picker(pool={"r5n.large": 1}, pipeline=False)
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    inst = gw.registry.get(MODEL).core.instance(set_headers(picked)["kairos-instance"])
    assert inst is not None
    stream.call.cancel()  # the client went away
    for _ in range(200):
        if not inst.in_flight:
            break
        await asyncio.sleep(0.01)
    assert not inst.in_flight and inst.healthy  # freed in time, and not blamed
    assert await ended_soon(gw, "abandoned", 1)
    again = Stream(stub)
    picked = await again.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    assert set_headers(picked)["kairos-instance"] == inst.name
    await again.send(upstream_answer())
    await again.close()


async def test_an_answer_envoy_made_itself_takes_the_instance_out_of_rotation(picker: Any) -> None:
    gw, _, stub = await picker(pool={"r5n.large": 2})
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    name = set_headers(picked)["kairos-instance"]
    await stream.send(upstream_answer("503", upstream_ms=None))  # connect failure: a local reply
    await stream.close()
    inst = gw.registry.get(MODEL).core.instance(name)
    for _ in range(100):
        if inst is not None and not inst.healthy:
            break
        await asyncio.sleep(0.01)
    assert inst is not None and not inst.healthy
    assert b"kairos_instance_failures_total{" in gw.metrics.render()
    assert await ended_soon(gw, "local_reply", 1)


async def test_answers_without_envoys_headers_are_the_instances(picker: Any) -> None:
    """An Envoy that suppresses its x-envoy-* headers (the inference extension's reference config
    does) reports the instance's answers without the upstream time: a 200, a 4xx, a gRPC error
    other than UNAVAILABLE are the instance's own (they took it out of rotation, and the pool
    emptied); a 503 or a gRPC UNAVAILABLE without it is still taken for Envoy's own reply."""
    gw, _, stub = await picker(pool={"r5n.large": 2})
    core = gw.registry.get(MODEL).core
    for status in ("200", "400", "500"):
        stream = Stream(stub)
        picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
        await stream.send(upstream_answer(status, upstream_ms=None))
        await stream.close()
        inst = core.instance(set_headers(picked)["kairos-instance"])
        await asyncio.sleep(0.05)
        assert inst is not None and inst.healthy and not inst.in_flight, status
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    await stream.send(ep.ProcessingRequest(response_headers=headers(**{":status": "200", "grpc-status": "14"})))
    await stream.close()
    inst = core.instance(set_headers(picked)["kairos-instance"])
    for _ in range(100):
        if inst is not None and not inst.healthy:
            break
        await asyncio.sleep(0.01)
    assert inst is not None and not inst.healthy


def test_an_ipv6_instance_is_handed_to_envoy_in_brackets() -> None:
    assert host_port("http://[fd00::1]:9100") == "[fd00::1]:9100"
    assert host_port("http://10.0.0.7:9100") == "10.0.0.7:9100"
    assert host_port("[fd00::1]:9300") == "[fd00::1]:9300"


async def test_other_calls_go_to_a_ready_instance_without_queueing(picker: Any) -> None:
    gw, running, stub = await picker()
    http, _ = addresses(running)
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=headers(**{":method": "GET", ":path": "/v2/health/ready"})))
    assert set_headers(picked)["x-gateway-destination-endpoint"] in http.values()
    went_on = await stream.send(upstream_answer())
    assert went_on.WhichOneof("response") == "response_headers"
    await stream.close()
    assert all(not i.in_flight for i in gw.registry.get(MODEL).core.dispatcher.instances)
    assert await ended_soon(gw, "other_call", 1)


async def test_health_services(picker: Any) -> None:
    gw, _, _ = await picker()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.epp_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor", ""):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="nosuch"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        service = gw.registry.get(MODEL)
        assert service.prober is not None
        await service.prober.stop()  # no probe puts them back
        for inst in list(service.core.dispatcher.instances):
            service.core.set_instance_health(inst.name, False)
        await asyncio.sleep(0.6)  # grpc.aio's servicer is told every 0.5 s
        reply = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_instances_must_be_ip_addresses_for_envoy() -> None:
    config = parse_config({"model": MODEL, "qos_ms": 350, "instances": [{"type": "r5n.large", "http": "http://localhost:9100"}]})
    settings = GatewaySettings.from_config(config, mode="epp")
    with pytest.raises(ConfigError, match=r"needs an IP address.*'localhost'"):
        Gateway(config, config.primary.instances, settings)
    Gateway(config, config.primary.instances, GatewaySettings.from_config(config))  # the V2 mode resolves names


async def test_an_answer_never_reported_is_the_instances_timeout(picker: Any) -> None:
    gw, _, stub = await picker(pool={"r5n.large": 2}, backend_timeout_ms=200.0)
    stream = Stream(stub)
    picked = await stream.send(ep.ProcessingRequest(request_headers=infer_headers(batch=10)))
    inst = gw.registry.get(MODEL).core.instance(set_headers(picked)["kairos-instance"])
    assert inst is not None and inst.healthy
    for _ in range(100):  # no response headers on the stream: after 200 ms the instance has failed
        if not inst.healthy:
            break
        await asyncio.sleep(0.02)
    assert not inst.healthy and not inst.in_flight
    stream.call.cancel()


def duplex_headers(**more: str) -> ep.ProcessingRequest:
    """Request headers in full duplex (FULL_DUPLEX_STREAMED both ways): a body follows."""
    message = ep.ProcessingRequest(request_headers=infer_headers(batch=None, **more))
    message.request_headers.end_of_stream = False
    config = message.protocol_config
    config.request_body_mode = ep.FULL_DUPLEX_STREAMED
    config.response_body_mode = ep.FULL_DUPLEX_STREAMED
    return message


def streamed(response: ep.ProcessingResponse) -> tuple[bytes, bool]:
    phase = response.WhichOneof("response")
    chunk = getattr(response, phase).response.body_mutation.streamed_response
    return chunk.body, chunk.end_of_stream


async def test_full_duplex_holds_the_body_then_picks_and_streams_it_back(picker: Any) -> None:
    """Envoy forwards only what the picker streams back: the pick on the headers, then the whole
    body in chunks (after trailers, the trailers' answer); a response body is echoed chunk by chunk."""
    gw, _, stub = await picker(pool={"r5n.large": 2})
    body = json_body(MODEL, 700)  # past one 64 KiB chunk
    for trailers in (False, True):
        call = stub()
        await call.write(duplex_headers())
        half = len(body) // 2
        await call.write(ep.ProcessingRequest(request_body=ep.HttpBody(body=body[:half])))
        await call.write(ep.ProcessingRequest(request_body=ep.HttpBody(body=body[half:], end_of_stream=not trailers)))
        if trailers:
            await call.write(ep.ProcessingRequest(request_trailers=ep.HttpTrailers()))
        picked = await asyncio.wait_for(call.read(), 10)
        assert picked.WhichOneof("response") == "request_headers" and "x-gateway-destination-endpoint" in set_headers(picked)
        back, ended = b"", False
        while not ended:
            chunk, ended = streamed(await asyncio.wait_for(call.read(), 10))
            back += chunk
            if trailers and len(back) == len(body):
                break
        assert back == body
        if trailers:
            assert (await asyncio.wait_for(call.read(), 10)).WhichOneof("response") == "request_trailers"
        # The batch came from the body: the instance holds a query of 700.
        inst = gw.registry.get(MODEL).core.instance(set_headers(picked)["kairos-instance"])
        assert inst is not None and [q.batch for q in inst.in_flight.values()] == [700]
        await call.write(upstream_answer())
        assert (await asyncio.wait_for(call.read(), 10)).WhichOneof("response") == "response_headers"
        await call.write(ep.ProcessingRequest(response_body=ep.HttpBody(body=b"abc", end_of_stream=True)))
        assert streamed(await asyncio.wait_for(call.read(), 10)) == (b"abc", True)
        await call.done_writing()
        assert not inst.in_flight


async def test_full_duplex_refuses_a_body_past_the_limit(picker: Any) -> None:
    gw, _, stub = await picker(pool={"r5n.large": 1})
    assert gw._epp is not None
    gw._epp.picker.max_body_bytes = 1000  # the config's max_body_bytes, lowered for the test
    call = stub()
    await call.write(duplex_headers())
    await call.write(ep.ProcessingRequest(request_body=ep.HttpBody(body=b"x" * 600)))
    await call.write(ep.ProcessingRequest(request_body=ep.HttpBody(body=b"x" * 600)))
    refused = await asyncio.wait_for(call.read(), 10)
    assert refused.immediate_response.status.code == 413
    assert all(not i.in_flight for i in gw.registry.get(MODEL).core.dispatcher.instances)
    call.cancel()
