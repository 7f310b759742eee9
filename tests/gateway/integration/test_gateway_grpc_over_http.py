"""gRPC front end, HTTP backend (``backend_protocol: http``): a tritonclient gRPC request through
the gateway gets what the instance itself answers over gRPC (same outputs, fields and
parameters, plus the gateway's), and the instance's V2 errors come back as the same gRPC
status. The ``grpc`` backend is checked alongside as the reference."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from gateway_process import RunningGateway, gateway_config, launch_gateway
from helpers.inputs import proto_request, triton_inputs
from helpers.pool import RunningPool, start_pool
from tritonclient.utils import InferenceServerException

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.v2 import GRPC_INFER_METHOD, proto_param_value

pytestmark = pytest.mark.slow
MODEL = "ncf"
GATEWAY_PARAMS = {"gateway_instance", "gateway_queue_us", "gateway_e2e_us"}
VARYING = {"queue_us", "service_us", "observed_us"}  # the instance's timings differ per query


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"r5n.large": 1}, model=MODEL) as p:
        yield p


@pytest.fixture(scope="module", params=["http", "grpc"])
def gw(
    request: pytest.FixtureRequest, pool: RunningPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp(f"gateway-{request.param}")
    config = gateway_config(pool.config_path, directory, qos_ms=50, backend_protocol=request.param)
    running = launch_gateway(config, ["--address-file", str(pool.address_file)], directory)
    yield running
    running.stop()


def infer(url: str, batch: int, **kw: object) -> tg.InferResult:
    return tg.InferenceServerClient(url).infer(MODEL, triton_inputs(tg, MODEL, batch), **kw)  # type: ignore[arg-type]


def params(response: pb.ModelInferResponse) -> dict[str, object]:
    return {k: proto_param_value(v) for k, v in response.parameters.items()}


@pytest.mark.parametrize("batch", [1, 5, 900])
@pytest.mark.parametrize("outputs", [None, [tg.InferRequestedOutput("output0")]])
def test_a_tritonclient_grpc_request_gets_the_instance_answer(
    gw: RunningGateway, pool: RunningPool, batch: int, outputs: list[tg.InferRequestedOutput] | None
) -> None:
    direct = infer(pool.instances[0].grpc, batch, request_id="q1", outputs=outputs)
    through = infer(gw.grpc, batch, request_id="q1", outputs=outputs)
    d, t = direct.get_response(), through.get_response()
    assert np.array_equal(through.as_numpy("output0"), direct.as_numpy("output0"))
    assert (t.model_name, t.model_version, t.id) == (d.model_name, d.model_version, d.id)
    assert [(o.name, o.datatype, list(o.shape), dict(o.parameters)) for o in t.outputs] == [
        (o.name, o.datatype, list(o.shape), dict(o.parameters)) for o in d.outputs
    ]
    dp, tp = params(d), params(t)
    assert set(tp) == set(dp) | GATEWAY_PARAMS
    assert {k: v for k, v in tp.items() if k in dp and k not in VARYING} == {
        k: v for k, v in dp.items() if k not in VARYING
    }
    assert all(type(tp[k]) is type(dp[k]) for k in dp)  # each parameter keeps its protobuf kind
    assert tp["gateway_instance"] == dp["instance"]


async def test_typed_contents_and_instance_errors_match_the_instance(
    gw: RunningGateway, pool: RunningPool
) -> None:
    request = proto_request(MODEL, 2, raw=False, id="typed")
    unknown_output = pb.ModelInferRequest()
    unknown_output.CopyFrom(request)
    unknown_output.outputs.add(name="nope")
    too_few = pb.ModelInferRequest()
    too_few.CopyFrom(request)
    too_few.inputs[0].shape[0] = 3
    not_its_input = pb.ModelInferRequest()  # well formed, but not one of the model's inputs
    not_its_input.CopyFrom(request)
    not_its_input.inputs[1].name = "input0"

    async def call(
        address: str, message: pb.ModelInferRequest
    ) -> pb.ModelInferResponse | tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(address) as channel:
            method = channel.unary_unary(GRPC_INFER_METHOD)
            try:
                return pb.ModelInferResponse.FromString(await method(message.SerializeToString()))
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""

    direct, through = await call(pool.instances[0].grpc, request), await call(gw.grpc, request)
    assert isinstance(direct, pb.ModelInferResponse) and isinstance(through, pb.ModelInferResponse)
    assert through.raw_output_contents == direct.raw_output_contents and through.id == "typed"
    for bad in (unknown_output, too_few, not_its_input):
        expected = await call(pool.instances[0].grpc, bad)
        assert isinstance(expected, tuple) and expected[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert await call(gw.grpc, bad) == expected


def test_the_gateway_keeps_serving_after_errors(gw: RunningGateway) -> None:
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        infer(gw.grpc, 2, outputs=[tg.InferRequestedOutput("nope")])
    assert infer(gw.grpc, 2).as_numpy("output0").shape == (2, 1)
