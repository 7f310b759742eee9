"""Two models behind one gateway (rm2 with three service classes and two variants, dien with two
classes), served by one ``kairos-servers`` started from the same multi-model config: infer,
readiness, metadata, health and metrics per model over HTTP and gRPC, and the errors for an
unknown model, class or variant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from gateway_process import RunningGateway, json_request, launch_gateway, post_infer, servers_and_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.inputs import proto_request

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

pytestmark = pytest.mark.slow

CONFIG = {
    "models": [
        {
            "name": "rm2",
            "classes": [
                {"name": "premium", "qos_ms": 300, "priority": 2},
                {"name": "standard", "qos_ms": 350, "priority": 1},
                {"name": "batch", "qos_ms": 2000},
            ],
            "default_class": "standard",
            "variants": [{"name": "rm2", "accuracy": 0.8}, {"name": "wnd", "accuracy": 0.7}],
            "pool": [{"type": "g4dn.xlarge", "count": 1}, {"type": "r5n.large", "count": 1, "variant": "wnd"}],
        },
        {
            "name": "dien",
            "classes": [{"name": "interactive", "qos_ms": 35, "priority": 1}, {"name": "bulk", "qos_ms": 500}],
            "pool": [{"type": "r5n.large", "count": 2}],
        },
    ],
    "servers": {"http_port": 0, "grpc_port": 0},
    "gateway": {"http_port": 0, "grpc_port": 0, "probe_interval_s": 0.2},
}


INSTANCES = {"rm2": ("rm2-g4dn.xlarge-0", "wnd-r5n.large-0"), "dien": ("dien-r5n.large-0", "dien-r5n.large-1")}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with servers_and_gateway(tmp_path_factory.mktemp("many"), CONFIG) as (servers, running):
        assert servers.ready_line.startswith(
            "kairos-servers ready: 4 instances of rm2,dien (rm2: 1 x g4dn.xlarge; wnd: 1 x r5n.large; "
            "dien: 2 x r5n.large)"
        )
        assert [(a.model, a.name) for a in servers.instances] == [
            ("rm2", "rm2-g4dn.xlarge-0"), ("wnd", "wnd-r5n.large-0"),
            ("dien", "dien-r5n.large-0"), ("dien", "dien-r5n.large-1"),
        ]  # fmt: skip
        assert "model=rm2,dien instances=4 healthy=4" in running.ready_line
        yield running


async def test_both_models_answer_over_http_with_their_classes(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        for model, cls in (("rm2", "premium"), ("rm2", "batch"), ("rm2", None), ("dien", "bulk"), ("dien", None)):
            params = {"class": cls} if cls else {}
            status, doc, _ = await post_infer(s, gw.url, model, json_request(3, f"{model}-{cls}", model=model, **params))
            assert status == 200, doc
            assert doc["id"] == f"{model}-{cls}"
            assert doc["parameters"]["gateway_instance"] in INSTANCES[model]
        async with s.get(f"{gw.url}/metrics") as resp:
            metrics = await resp.text()
    for series in (
        'kairos_request_duration_seconds_count{class="premium",model="rm2",protocol="http"} 1.0',
        'kairos_request_duration_seconds_count{class="batch",model="rm2",protocol="http"} 1.0',
        'kairos_request_duration_seconds_count{class="bulk",model="dien",protocol="http"} 1.0',
        'kairos_request_duration_seconds_bucket{class="premium",le="0.3",model="rm2",protocol="http"}',
        'kairos_request_duration_seconds_bucket{class="interactive",le="0.03",model="dien",protocol="http"}',
        'kairos_instance_healthy{instance="dien-r5n.large-1",model="dien",type="r5n.large",variant="dien"} 1.0',
        'kairos_instance_served_total{instance="wnd-r5n.large-0",model="rm2",type="r5n.large",variant="wnd"}',
        'kairos_pending_queries{model="rm2"} 0.0',
    ):
        assert series in metrics, series
    standard = 'kairos_request_duration_seconds_count{class="standard",model="rm2",protocol="http"}'
    assert standard in metrics  # the default class
    assert 'le="0.035"' not in metrics  # the same buckets for every model: gateways' histograms add up


async def test_unknown_class_and_model_are_named_over_http(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await post_infer(s, gw.url, "rm2", json_request(1, model="rm2", **{"class": "gold"}))
        assert status == 400
        assert "unknown class 'gold'" in doc["error"] and "premium, standard, batch" in doc["error"]
        status, doc, _ = await post_infer(s, gw.url, "rm2", json_request(1, model="rm2", **{"class": 7}))
        assert status == 400 and "parameter class" in doc["error"]
        status, doc, _ = await post_infer(s, gw.url, "ncf", json_request(1, model="ncf"))
        assert status == 404 and "'rm2', 'dien'" in doc["error"]
        for model in ("rm2", "dien"):
            async with s.get(f"{gw.url}/v2/models/{model}/ready") as resp:
                assert resp.status == 200
            async with s.get(f"{gw.url}/v2/models/{model}") as resp:
                assert resp.status == 200 and (await resp.json())["name"] == model
        async with s.get(f"{gw.url}/v2/models/ncf/ready") as resp:
            assert resp.status == 404
        async with s.get(f"{gw.url}/v2/health/ready") as resp:
            assert resp.status == 200


async def test_both_models_over_grpc_with_classes_and_health(gw: RunningGateway) -> None:
    async with grpc.aio.insecure_channel(gw.grpc) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for model, cls in (("dien", "interactive"), ("rm2", "premium")):
            request = proto_request(model, 2, id=f"g-{model}")
            request.parameters["class"].string_param = cls
            reply = await stub.ModelInfer(request)
            assert reply.id == f"g-{model}"
            assert reply.parameters["gateway_instance"].string_param in INSTANCES[model]
        pinned = proto_request("rm2", 2, id="pinned")
        pinned.parameters["variant"].string_param = "wnd"
        pinned.parameters["class"].string_param = "batch"
        reply = await stub.ModelInfer(pinned)
        assert reply.parameters["gateway_variant"].string_param == "wnd" and reply.model_name == "wnd"
        unknown = proto_request("dien", 1)
        unknown.parameters["variant"].string_param = "wnd"  # rm2's variant, not dien's
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.ModelInfer(unknown)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown variant 'wnd'" in str(exc.value.details())
        bad = proto_request("dien", 1)
        bad.parameters["class"].string_param = "premium"  # rm2's, not dien's
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.ModelInfer(bad)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "interactive, bulk" in str(exc.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.ModelReady(pb.ModelReadyRequest(name="ncf"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="dien"))).ready
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="dien"))
        assert meta.name == "dien"
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rm2", "dien"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await health.Check(health_pb2.HealthCheckRequest(service="ncf"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    # one code vocabulary: gRPC answers counted by their HTTP equivalent
    assert 'kairos_requests_total{code="200",model="dien",protocol="grpc"}' in metrics
    assert 'kairos_requests_total{code="400",model="dien",protocol="grpc"}' in metrics
    assert 'code="OK"' not in metrics and 'code="INVALID_ARGUMENT"' not in metrics


def test_instance_flags_are_refused_for_several_models(gw: RunningGateway, tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**CONFIG, "servers": {"address_file": str(tmp_path / "none.json")}}))
    with pytest.raises(RuntimeError, match="--instance: only for a one-model config"):
        launch_gateway(config, ["--instance", "r5n.large=http://127.0.0.1:9"], tmp_path, timeout_s=10)
