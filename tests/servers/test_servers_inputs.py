"""The emulated instances advertise their model's real inputs and refuse any other, over HTTP
(400, V2 error JSON) and gRPC (INVALID_ARGUMENT), with the input named (the check itself:
test_servers_schema.py)."""

from __future__ import annotations

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

from gateway.protocol import grpc_predict_v2_pb2 as pb

pytestmark = pytest.mark.slow  # one pool for the module

MODEL = "rm2"  # dense FP32 [batch, 13], sparse INT64 [batch, 26]
ITEMSIZE = {"FP32": 4, "INT64": 8, "FP64": 8}

# (id, the request's inputs as (name, datatype, shape), what the error must say)
BAD_INPUTS = [
    (
        "wrong name",
        [("dense", "FP32", [2, 13]), ("x", "INT64", [2, 26])],
        "unknown input 'x': this model's inputs are dense, sparse",
    ),
    (
        "wrong datatype",
        [("dense", "FP32", [2, 13]), ("sparse", "FP32", [2, 26])],
        "input 'sparse': expected datatype INT64, got FP32",
    ),
    (
        "wrong width",
        [("dense", "FP32", [4, 12]), ("sparse", "INT64", [4, 26])],
        "input 'dense': expected shape [batch, 13], got [4, 12]",
    ),
    ("wrong rank", [("dense", "FP32", [26]), ("sparse", "INT64", [2, 26])], "input 'dense': expected shape [batch, 13], got [26]"),
    ("missing input", [("dense", "FP32", [2, 13])], "input 'sparse' is missing"),
    (
        "mismatched batch",
        [("dense", "FP32", [2, 13]), ("sparse", "INT64", [3, 26])],
        "input 'sparse': batch 3 differs from input 'dense''s batch 2",
    ),
]
IDS = [c[0] for c in BAD_INPUTS]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"r5n.large": 1}, model=MODEL) as running:
        yield running


def _json(tensors: list[tuple[str, str, list[int]]]) -> bytes:
    inputs = [
        {"name": name, "datatype": datatype, "shape": shape, "data": [0] * int(np.prod(shape))}
        for name, datatype, shape in tensors
    ]
    return orjson.dumps({"inputs": inputs})


def _proto(tensors: list[tuple[str, str, list[int]]]) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(b"\0" * (ITEMSIZE[datatype] * int(np.prod(shape))))
    return request.SerializeToString()


def test_metadata_lists_the_models_inputs(pool: RunningPool) -> None:
    addr = pool.instances[0]
    expected = [
        {"name": "dense", "datatype": "FP32", "shape": [-1, 13]},
        {"name": "sparse", "datatype": "INT64", "shape": [-1, 26]},
    ]
    assert httpclient.InferenceServerClient(url=addr.http.removeprefix("http://")).get_model_metadata(MODEL)[
        "inputs"
    ] == expected
    meta = grpcclient.InferenceServerClient(url=addr.grpc).get_model_metadata(MODEL)
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs] == expected


@pytest.mark.parametrize(("tensors", "message"), [c[1:] for c in BAD_INPUTS], ids=IDS)
async def test_http_refuses_inputs_that_do_not_match(
    pool: RunningPool, tensors: list[tuple[str, str, list[int]]], message: str
) -> None:
    url = f"{pool.instances[0].http}/v2/models/{MODEL}/infer"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=_json(tensors)) as resp:
            assert resp.status == 400 and resp.content_type == "application/json"
            assert message in (await resp.json())["error"]
        async with session.post(url, data=json_body(MODEL, 2)) as resp:  # still serving
            assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(("tensors", "message"), [c[1:] for c in BAD_INPUTS], ids=IDS)
async def test_grpc_refuses_inputs_that_do_not_match(
    pool: RunningPool, tensors: list[tuple[str, str, list[int]]], message: str
) -> None:
    async with grpc.aio.insecure_channel(pool.instances[0].grpc) as channel:
        raw_infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_infer(_proto(tensors), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
        reply = await raw_infer(proto_request(MODEL, 2).SerializeToString(), timeout=5)
        assert list(reply.outputs[0].shape) == [2, 1]


@pytest.mark.parametrize("client_module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_tritonclient_gets_the_error_and_the_real_inputs_pass(pool: RunningPool, client_module: object) -> None:
    addr = pool.instances[0]
    url = addr.http.removeprefix("http://") if client_module is httpclient else addr.grpc
    client = client_module.InferenceServerClient(url=url)  # type: ignore[attr-defined]
    good = triton_inputs(client_module, MODEL, 3)
    assert client.infer(MODEL, good).as_numpy("output0").shape == (3, 1)
    wrong = client_module.InferInput("dense", [3, 13], "FP64")  # type: ignore[attr-defined]
    wrong.set_data_from_numpy(np.zeros((3, 13), np.float64))
    with pytest.raises(InferenceServerException, match="input 'dense': expected datatype FP32, got FP64"):
        client.infer(MODEL, [wrong, good[1]])
