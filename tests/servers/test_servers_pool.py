"""A real pool (kairos-servers subprocess) answering real V2 clients over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers.inputs import json_body, proto_request, triton_inputs
from helpers.pool import RunningPool, start_pool
from tritonclient.utils import InferenceServerException

from gateway.profiles import load_profiles
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.addresses import InstanceAddress
from gateway.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

pytestmark = pytest.mark.slow  # one pool for the module

MAX_BODY = 512 * 1024  # room for a valid rm2 request of batch 1001 (JSON ~110 kB)
PROFILES = load_profiles()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), args=["--max-body-bytes", str(MAX_BODY)]) as running:
        yield running


def _http(addr: InstanceAddress) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=addr.http.removeprefix("http://"))


def test_address_file_and_ready_line(pool: RunningPool) -> None:
    assert pool.ready_line.startswith(
        "kairos-servers ready: 3 instances of rm2 (1 x g4dn.xlarge, 2 x r5n.large)"
    )
    assert [a.name for a in pool.instances] == ["g4dn.xlarge-0", "r5n.large-0", "r5n.large-1"]
    assert [a.type for a in pool.instances] == ["g4dn.xlarge", "r5n.large", "r5n.large"]
    assert pool.addresses.model == "rm2" and pool.addresses.pid == pool.process.pid
    ports = [a.http.rsplit(":", 1)[1] for a in pool.instances] + [
        a.grpc.rsplit(":", 1)[1] for a in pool.instances
    ]
    assert len(set(ports)) == 6


def test_health_and_metadata(pool: RunningPool) -> None:
    addr = pool.instances[1]
    h = _http(addr)
    assert h.is_server_live() and h.is_server_ready() and h.is_model_ready("rm2")
    assert h.is_model_ready("rm2", "1") and not h.is_model_ready("nope")
    assert h.get_server_metadata()["name"] == "kairos-servers"
    meta = h.get_model_metadata("rm2")
    assert meta["name"] == "rm2" and meta["outputs"][0]["name"] == "output0"
    g = grpcclient.InferenceServerClient(url=addr.grpc)
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready("rm2")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        g.is_model_ready("nope")
    assert g.get_model_metadata("rm2").platform == "kairos-emulated"
    assert "binary_tensor_data" in g.get_server_metadata().extensions


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_service_times_follow_profile(pool: RunningPool, protocol: str) -> None:
    addr, batch = pool.instances[0], 50
    prof = PROFILES.get("rm2", addr.type)
    lo, hi = prof.quantile(batch, 0.0), prof.quantile(batch, 1.0)
    client = _http(addr) if protocol == "http" else grpcclient.InferenceServerClient(url=addr.grpc)
    mod = httpclient if protocol == "http" else grpcclient
    service, wall, errors = [], [], []
    for _ in range(12):
        t0 = time.perf_counter()
        result = client.infer("rm2", triton_inputs(mod, "rm2", batch))
        wall.append((time.perf_counter() - t0) * 1000)
        out = result.as_numpy("output0")
        assert out.shape == (batch, 1) and out.dtype == np.float32
        if protocol == "http":
            params = result.get_response()["parameters"]
        else:
            params = {
                k: getattr(v, v.WhichOneof("parameter_choice"))
                for k, v in result.get_response().parameters.items()
            }
        assert params["instance"] == addr.name and params["instance_type"] == addr.type
        service.append(params["service_us"] / 1000)
        errors.append(abs(params["observed_us"] / 1000 - params["service_us"] / 1000))
    assert all(lo - 1e-6 <= s <= hi + 1e-6 for s in service)
    assert lo <= float(np.mean(service)) <= hi
    assert all(w >= s for w, s in zip(wall, service, strict=True))
    # Precision is the benchmark's business (benchmarks/server_fidelity.py); on a shared machine
    # only gross errors are a test failure.
    assert float(np.median(errors)) < 5.0


def test_json_output_when_not_binary(pool: RunningPool) -> None:
    h = _http(pool.instances[2])
    out = httpclient.InferRequestedOutput("output0", binary_data=False)
    result = h.infer("rm2", triton_inputs(httpclient, "rm2", 3, binary=False), outputs=[out], request_id="abc")
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["outputs"][0]["data"] is not None
    assert result.as_numpy("output0").shape == (3, 1)


async def test_fifo_second_query_waits_for_first(pool: RunningPool) -> None:
    url = f"{pool.instances[1].http}/v2/models/rm2/infer"
    body = json_body("rm2", 100)

    async with aiohttp.ClientSession() as session:

        async def one(delay: float) -> dict:
            await asyncio.sleep(delay)
            async with session.post(url, data=body) as resp:
                assert resp.status == 200
                return (await resp.json())["parameters"]

        first, second = await asyncio.gather(one(0.0), one(0.005))
    assert first["queue_us"] / 1000 < 3.0
    # The second arrived ~5 ms into the first's service and waited for the rest of it.
    assert first["observed_us"] / 1000 - 15.0 <= second["queue_us"] / 1000 <= first["observed_us"] / 1000 + 10.0
    assert second["queue_us"] / 1000 > 10.0


def _inp(shape: list[int], datatype: str = "FP32", data: list | None = None) -> dict:
    n = int(np.prod(shape)) if shape else 1
    return {"name": "dense", "datatype": datatype, "shape": shape, "data": [0.0] * n if data is None else data}


BAD_HTTP = [
    ("rm2", b"{not json", 400, "malformed JSON"),
    ("rm2", b"{}", 400, "no inputs"),
    ("rm2", orjson.dumps({"inputs": [_inp([2, 3], data=[0.0] * 5)]}), 400, "needs 6 elements"),
    ("rm2", orjson.dumps({"inputs": [_inp([2], "FLOAT")]}), 400, "unknown datatype"),
    ("nope", orjson.dumps({"inputs": [_inp([2])]}), 404, "unknown model"),
    ("rm2/versions/9", orjson.dumps({"inputs": [_inp([2])]}), 404, "unknown version"),
    ("rm2", orjson.dumps({"inputs": [_inp([0, 3], data=[])]}), 400, "batch size 0"),
    ("rm2", json_body("rm2", 1001), 400, "expected 1..1000"),
    ("rm2", json_body("rm2", 1, outputs=[{"name": "zzz"}]), 400, "unknown output"),
    ("rm2", b"x" * (MAX_BODY + 1), 413, "limit"),
]


@pytest.mark.parametrize(("model", "body", "status", "message"), BAD_HTTP, ids=[c[3] for c in BAD_HTTP])
async def test_bad_http_requests_get_v2_errors(
    pool: RunningPool, model: str, body: bytes, status: int, message: str
) -> None:
    base = pool.instances[1].http
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v2/models/{model}/infer", data=body) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            doc = await resp.json()
            assert message in doc["error"]
        await _assert_http_serves(session, base)


async def test_http_binary_mismatch_chunked_oversize_and_unknown_path(pool: RunningPool) -> None:
    base = pool.instances[1].http
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 12}}
            ]
        }
    )
    async with aiohttp.ClientSession() as session:
        headers = {"Inference-Header-Content-Length": str(len(head))}
        async with session.post(
            f"{base}/v2/models/rm2/infer", data=head + b"\0" * 12, headers=headers
        ) as resp:
            assert resp.status == 400 and "needs 16 bytes" in (await resp.json())["error"]

        async def chunks():  # no Content-Length: the limit bites while reading
            for _ in range(MAX_BODY // 4096 + 2):
                yield b"y" * 4096

        async with session.post(f"{base}/v2/models/rm2/infer", data=chunks()) as resp:
            assert resp.status == 413 and "error" in await resp.json()
        async with session.get(f"{base}/v3/whatever") as resp:
            assert resp.status == 404 and "error" in await resp.json()
        await _assert_http_serves(session, base)


async def _assert_http_serves(session: aiohttp.ClientSession, base: str) -> None:
    body = json_body("rm2", 1)
    async with session.post(f"{base}/v2/models/rm2/infer", data=body) as resp:
        assert resp.status == 200, await resp.text()


def _proto(model: str, shape: list[int], datatype: str = "FP32", raw: bytes | None = None) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="dense", datatype=datatype, shape=shape)
    n = int(np.prod(shape)) if shape else 1
    req.raw_input_contents.append(b"\0" * (4 * n) if raw is None else raw)
    return req.SerializeToString()


BAD_GRPC = [
    (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed protobuf"),
    (
        pb.ModelInferRequest(model_name="rm2").SerializeToString(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no inputs",
    ),
    (_proto("rm2", [2, 3], raw=b"\0" * 20), grpc.StatusCode.INVALID_ARGUMENT, "needs 24 bytes"),
    (_proto("rm2", [2], "FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype"),
    (_proto("nope", [2]), grpc.StatusCode.NOT_FOUND, "unknown model"),
    (_proto("rm2", [0, 3]), grpc.StatusCode.INVALID_ARGUMENT, "batch size 0"),
    (proto_request("rm2", 1001).SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "expected 1..1000"),
    (_proto("rm2", [MAX_BODY]), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.mark.parametrize(("data", "code", "message"), BAD_GRPC, ids=[c[2] for c in BAD_GRPC])
async def test_bad_grpc_requests_get_v2_errors(
    pool: RunningPool, data: bytes, code: grpc.StatusCode, message: str
) -> None:
    target = pool.instances[2].grpc
    async with grpc.aio.insecure_channel(target) as channel:
        raw_infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_infer(data, timeout=5)
        assert info.value.code() == code
        assert message in (info.value.details() or "")
        # Still serving.
        good = proto_request("rm2", 2)
        reply = await GRPCInferenceServiceStub(channel).ModelInfer(good, timeout=5)
        assert list(reply.outputs[0].shape) == [2, 1]
        assert reply.parameters["service_us"].int64_param > 0
