"""HTTP front end, an instance listed with its gRPC endpoint only: a tritonclient HTTP request
through the gateway gets what the instance itself answers over HTTP (same outputs, fields and
parameters, plus the gateway's), in JSON or binary form as asked; the instance's gRPC errors
come back as V2 HTTP errors; model metadata is translated both ways (a gRPC client asking the
model's metadata of an HTTP-only instance too); a model version's readiness is the instances'."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import grpc
import numpy as np
import orjson
import pytest
import tritonclient.http as th
from gateway_process import RunningGateway, gateway_config, launch_gateway
from helpers.inputs import json_body, triton_inputs
from helpers.pool import RunningPool, start_pool
from tritonclient.utils import InferenceServerException

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
MODEL = "ncf"
GATEWAY_PARAMS = {"gateway_instance", "gateway_queue_us", "gateway_e2e_us"}
VARYING = {"queue_us", "service_us", "observed_us"}  # the instance's timings differ per query


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"r5n.large": 1}, model=MODEL) as p:
        yield p


def _gateway(pool: RunningPool, directory: object, endpoint: str) -> RunningGateway:
    inst = pool.instances[0]
    url = f"grpc://{inst.grpc}" if endpoint == "grpc" else inst.http
    config = gateway_config(pool.config_path, directory, qos_ms=50)  # type: ignore[arg-type]
    return launch_gateway(config, ["--instance", f"{inst.type}={url}"], directory)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gw(pool: RunningPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = _gateway(pool, tmp_path_factory.mktemp("gateway-grpc-only"), "grpc")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http_only(pool: RunningPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = _gateway(pool, tmp_path_factory.mktemp("gateway-http-only"), "http")
    yield running
    running.stop()


def _client(url: str) -> th.InferenceServerClient:
    return th.InferenceServerClient(url.removeprefix("http://"))


def _infer(url: str, batch: int, **kw: object) -> th.InferResult:
    return _client(url).infer(MODEL, triton_inputs(th, MODEL, batch), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [1, 7, 900])
@pytest.mark.parametrize("binary", [True, False])
def test_a_tritonclient_http_request_gets_the_instance_answer(
    gw: RunningGateway, pool: RunningPool, batch: int, binary: bool
) -> None:
    outputs = [th.InferRequestedOutput("output0", binary_data=binary)]
    direct = _infer(pool.instances[0].http, batch, request_id="q1", outputs=outputs)
    through = _infer(gw.http, batch, request_id="q1", outputs=outputs)
    assert np.array_equal(through.as_numpy("output0"), direct.as_numpy("output0"))
    d, t = direct.get_response(), through.get_response()
    assert (t["model_name"], t.get("id")) == (d["model_name"], "q1")
    for o in (*d["outputs"], *t["outputs"]):
        assert ("data" in o) is not binary and ("binary_data_size" in o.get("parameters", {})) is binary
    strip = ("data", "parameters")
    assert [{k: v for k, v in o.items() if k not in strip} for o in t["outputs"]] == [
        {k: v for k, v in o.items() if k not in strip} for o in d["outputs"]
    ]
    dp, tp = d["parameters"], t["parameters"]
    assert set(tp) == set(dp) | GATEWAY_PARAMS
    assert {k: v for k, v in tp.items() if k in dp and k not in VARYING} == {
        k: v for k, v in dp.items() if k not in VARYING
    }
    assert tp["gateway_instance"] == dp["instance"]


async def test_a_plain_json_request_and_the_instance_errors_come_back_as_v2_http(
    gw: RunningGateway, pool: RunningPool
) -> None:
    unknown_output = orjson.loads(json_body(MODEL, 2))
    unknown_output["outputs"] = [{"name": "nope"}]
    too_few = orjson.loads(json_body(MODEL, 2))
    too_few["inputs"][0]["shape"][0] = 3
    text_in_ints = orjson.loads(json_body(MODEL, 2))
    ints = next(i for i in text_in_ints["inputs"] if i["datatype"] == "INT64")
    ints["data"][0] = "one"
    async with aiohttp.ClientSession() as session:

        async def post(base: str, doc: dict[str, object] | bytes) -> tuple[int, dict[str, object]]:
            body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
            async with session.post(f"{base}/v2/models/{MODEL}/infer", data=body) as resp:
                return resp.status, orjson.loads(await resp.read())

        status, answer = await post(gw.url, json_body(MODEL, 3, id="plain"))
        assert status == 200 and answer["id"] == "plain"
        assert answer["outputs"][0]["shape"] == [3, 1] and len(answer["outputs"][0]["data"]) == 3
        # refused by the gateway before it reaches the instance: the field named
        status, answer = await post(gw.url, text_in_ints)
        assert status == 400 and "INT64 data holds text" in str(answer["error"])
        status, answer = await post(gw.url, too_few)
        assert status == 400 and "needs" in str(answer["error"])
        # refused by the instance over gRPC: its message, as a V2 HTTP error
        status, answer = await post(gw.url, unknown_output)
        direct_status, direct = await post(pool.instances[0].http, unknown_output)
        assert (status, direct_status) == (400, 400) and "nope" in str(answer["error"]) and "nope" in str(direct["error"])
        status, answer = await post(gw.url, json_body(MODEL, 2))
        assert status == 200  # the instance is still served after the errors


async def test_model_metadata_is_translated_both_ways(
    gw: RunningGateway, http_only: RunningGateway, pool: RunningPool
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pool.instances[0].http}/v2/models/{MODEL}") as resp:
            direct = orjson.loads(await resp.read())
        async with session.get(f"{gw.url}/v2/models/{MODEL}") as resp:
            assert resp.status == 200
            through = orjson.loads(await resp.read())
    assert through == {k: direct.get(k, [] if k == "versions" else "") for k in through}
    assert through["inputs"] == direct["inputs"] and through["outputs"] == direct["outputs"]

    async with grpc.aio.insecure_channel(http_only.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version="../x"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(pool.instances[0].grpc) as channel:
        direct_reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=MODEL)
        )
    assert reply == direct_reply


@pytest.mark.parametrize("endpoint", ["grpc", "http"])
async def test_metadata_of_a_version_no_instance_serves_is_not_found(
    gw: RunningGateway, http_only: RunningGateway, endpoint: str
) -> None:
    """The instance's own answer about the version, not "no instance answered" (502)."""
    gateway = gw if endpoint == "grpc" else http_only
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/v2/models/{MODEL}/versions/9") as resp:
        assert resp.status == 404, await resp.text()
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version="9"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("endpoint", ["grpc", "http"])
async def test_readiness_of_a_version_is_the_instances(
    gw: RunningGateway, http_only: RunningGateway, endpoint: str
) -> None:
    """The instances serve version 1 only: the gateway's readiness of another is theirs, over
    whichever endpoint they have; a malformed version is the client's error."""
    gateway = gw if endpoint == "grpc" else http_only
    async with aiohttp.ClientSession() as session:

        async def ready(path: str) -> int:
            async with session.get(f"{gateway.url}/v2/models/{MODEL}{path}/ready") as resp:
                return resp.status

        assert [await ready(p) for p in ("", "/versions/1", "/versions/9", "/versions/a%20b")] == [200, 200, 503, 400]
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for version, expected in (("", True), ("1", True), ("9", False)):
            reply = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version=version))
            assert reply.ready is expected, version
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="a b"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_gateway_keeps_serving_after_an_instance_error(gw: RunningGateway) -> None:
    with pytest.raises(InferenceServerException, match="nope"):
        _infer(gw.http, 2, outputs=[th.InferRequestedOutput("nope")])
    assert _infer(gw.http, 2).as_numpy("output0").shape == (2, 1)
