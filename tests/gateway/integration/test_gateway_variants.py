"""A model with two variants behind the gateway, emulated by kairos-servers (rm2's network as the
accurate variant, wnd's as the fast one, both on rm2's inputs): the accurate one while the
deadline allows, the fast one for a tight deadline, pins over HTTP and gRPC, the variant and
the served accuracy reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from gateway_process import RunningGateway, json_request, post_infer, servers_and_gateway
from helpers.inputs import proto_request

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

pytestmark = pytest.mark.slow

CONFIG = {
    "model": "rm2",
    "qos_ms": 350,
    "variants": [{"name": "rm2", "accuracy": 0.80}, {"name": "wnd", "accuracy": 0.70}],
    "pool": [{"type": "r5n.large", "count": 1}, {"type": "r5n.large", "count": 1, "variant": "wnd"}],
    "servers": {"http_port": 0, "grpc_port": 0},
    "gateway": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with servers_and_gateway(tmp_path_factory.mktemp("variants"), CONFIG) as (servers, running):
        assert [(a.model, a.name) for a in servers.instances] == [("rm2", "r5n.large-0"), ("wnd", "wnd-r5n.large-0")]
        yield running


async def test_the_variant_follows_the_deadline_and_pins_hold(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        # Pinned to rm2 (45 ms at batch 100) with 20 ms: late, so served only if the client asks.
        late_pin = {"variant": "rm2", "qos_ms": 20, "late_queries": "serve"}
        cases = (({}, "rm2"), ({"qos_ms": 20}, "wnd"), ({"variant": "wnd"}, "wnd"), (late_pin, "rm2"))
        for params, variant in cases:
            status, doc, _ = await post_infer(s, gw.url, "rm2", json_request(100, "v", model="rm2", **params))
            assert status == 200, doc
            assert doc["parameters"]["gateway_variant"] == variant, params
            assert doc["model_name"] == variant  # the variant's instance answers under its own name
        status, doc, _ = await post_infer(s, gw.url, "rm2", json_request(100, model="rm2", variant="rm2", qos_ms=20))
        assert status == 504 and "even at once" in doc["error"]  # judged on its variant's instances
        status, doc, _ = await post_infer(s, gw.url, "rm2", json_request(1, model="rm2", variant="rm2-xl"))
        assert status == 400 and "unknown variant 'rm2-xl' of model 'rm2': expected one of rm2, wnd" in doc["error"]
        for _ in range(5):  # the instance serving the model itself answers its metadata, whichever is asked first
            async with s.get(f"{gw.url}/v2/models/rm2") as resp:
                assert resp.status == 200 and (await resp.json())["name"] == "rm2"
        async with s.get(f"{gw.url}/metrics") as resp:
            metrics = await resp.text()
        admin = gw.ready_line.rsplit(" admin=", 1)[1].split()[0]
        async with s.get(f"http://{admin}/admin/instances") as resp:
            listed = (await resp.json())["instances"]
    assert 'kairos_served_accuracy_count{class="default",model="rm2"} 4.0' in metrics
    assert 'kairos_served_accuracy_sum{class="default",model="rm2"} 3.0' in metrics  # 0.8 + 0.7 + 0.7 + 0.8
    assert [(i["name"], i["variant"], i["type"]) for i in listed] == [
        ("r5n.large-0", "rm2", "r5n.large"), ("wnd-r5n.large-0", "wnd", "r5n.large"),
    ]  # fmt: skip


async def test_a_pin_over_grpc_reaches_its_variant(gw: RunningGateway) -> None:
    async with grpc.aio.insecure_channel(gw.grpc) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for variant in ("wnd", "rm2"):
            request = proto_request("rm2", 4, id=f"g-{variant}")
            request.parameters["variant"].string_param = variant
            reply = await stub.ModelInfer(request)
            assert reply.parameters["gateway_variant"].string_param == variant
            assert reply.model_name == variant and reply.id == f"g-{variant}"
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="rm2"))
        assert meta.name == "rm2" and [i.name for i in meta.inputs] == ["dense", "sparse"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_the_load_generator_reports_the_variants_and_accuracy_served(gw: RunningGateway, scheme: str) -> None:
    from benchmarks.loadgen import LoadConfig, run_load
    from benchmarks.loadgen.render import render_table

    address = gw.http if scheme == "http" else gw.grpc
    accuracy = (("rm2", 0.8), ("wnd", 0.7))
    pinned = await run_load(
        LoadConfig(url=f"{scheme}://{address}", model="rm2", rate=40, queries=60, variant="wnd", batch_mix="fixed:8",
                   service_class="default", accuracy=accuracy)
    )  # fmt: skip
    assert pinned.ok == 60 and pinned.variants == {"wnd": 60} and pinned.accuracy_served == pytest.approx(0.7)
    doc = pinned.to_json()
    assert doc["variant"] == "wnd" and doc["class"] == "default" and doc["accuracy_served"] == 0.7
    assert "accuracy served 0.7000" in render_table(pinned)
    free = await run_load(
        LoadConfig(url=f"{scheme}://{address}", model="rm2", rate=20, queries=20, batch_mix="fixed:8", accuracy=accuracy)
    )
    assert free.variants.get("rm2", 0) > 0 and free.accuracy_served is not None and free.accuracy_served > 0.7


async def test_variants_without_the_model_itself_need_every_instance_to_name_one(tmp_path: Path) -> None:
    """rm2 served only by its wnd variant: an instance added without a variant would serve the
    model itself, which the config does not list (every query it took was a bare 500)."""
    config = {**CONFIG, "variants": [{"name": "wnd", "accuracy": 0.7}],
              "pool": [{"type": "r5n.large", "count": 1, "variant": "wnd"}]}
    with servers_and_gateway(tmp_path, config) as (servers, running):
        admin = "http://" + running.ready_line.rsplit(" admin=", 1)[1].split()[0] + "/admin/instances"
        inst = servers.instances[0]
        async with aiohttp.ClientSession() as s:
            async with s.post(admin, json={"model": "rm2", "type": "r5n.large", "name": "plain", "http": inst.http}) as resp:
                assert resp.status == 400
                assert "unknown variant 'rm2' of model 'rm2': expected one of wnd" in (await resp.json())["error"]
            status, doc, _ = await post_infer(s, running.url, "rm2", json_request(4, model="rm2"))
            assert status == 200 and doc["model_name"] == "wnd"  # served by the variant
