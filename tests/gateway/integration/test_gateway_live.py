"""A live gateway in front of a live ncf pool (1 GPU + 2 CPU instances), over HTTP and gRPC with
tritonclient: traffic, routing, responses, metadata, metrics and bad input; once with each gRPC
server (the gateway's own and grpc.aio)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from gateway_process import RunningGateway, gateway_config, json_request, launch_gateway, post_infer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.inputs import triton_inputs
from helpers.pool import RunningPool, start_pool
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow
MODEL = "ncf"
GATEWAY_PARAMS = ("gateway_instance", "gateway_queue_us", "gateway_e2e_us")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL) as p:
        yield p


@pytest.fixture(scope="module", params=["native", "grpcio"])
def gw(
    pool: RunningPool, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("gateway")
    # ncf's QoS in the paper (5 ms): with a loose QoS, the heterogeneity-weighted slack
    # (c x -estimate) may rightly prefer a CPU for a large batch.
    config = gateway_config(
        pool.config_path, directory, qos_ms=5, max_body_bytes=65536, grpc_server=request.param
    )
    running = launch_gateway(config, ["--address-file", str(pool.address_file), "--policy", "kairos"], directory)
    yield running
    assert running.stop(signal.SIGTERM) == 0


def http_inputs(batch: int, binary: bool) -> list[th.InferInput]:
    return triton_inputs(th, MODEL, batch, binary)


def grpc_inputs(batch: int) -> list[tg.InferInput]:
    return triton_inputs(tg, MODEL, batch)


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_returns_the_instance_response_plus_gateway_parameters(gw: RunningGateway, binary: bool) -> None:
    client = th.InferenceServerClient(gw.http)
    result = client.infer(MODEL, http_inputs(3, binary), request_id="h1",
                          outputs=[th.InferRequestedOutput("output0", binary_data=binary)])
    response = result.get_response()
    assert response["id"] == "h1" and response["model_name"] == MODEL
    params = response["parameters"]
    assert all(k in params for k in GATEWAY_PARAMS)
    assert params["gateway_instance"] == params["instance"]  # the instance's own parameters are kept
    assert "service_us" in params and params["gateway_e2e_us"] >= params["gateway_queue_us"] >= 0
    assert result.as_numpy("output0").shape == (3, 1)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_grpc_infer_returns_the_instance_response_plus_gateway_parameters(gw: RunningGateway,
                                                                          compression: str | None) -> None:
    client = tg.InferenceServerClient(gw.grpc)
    result = client.infer(MODEL, grpc_inputs(4), request_id="g1", compression_algorithm=compression)
    response = result.get_response()
    assert response.id == "g1"
    p = response.parameters
    assert p["gateway_instance"].string_param == p["instance"].string_param
    assert p["gateway_e2e_us"].int64_param > 0 and "service_us" in p
    assert result.as_numpy("output0").shape == (4, 1)


def test_kairos_sends_a_batch_of_900_to_the_gpu_when_all_are_idle(gw: RunningGateway) -> None:
    h = th.InferenceServerClient(gw.http).infer(MODEL, http_inputs(900, True))
    assert h.get_response()["parameters"]["gateway_instance"].startswith("g4dn.xlarge")
    g = tg.InferenceServerClient(gw.grpc).infer(MODEL, grpc_inputs(900))
    assert g.get_response().parameters["gateway_instance"].string_param.startswith("g4dn.xlarge")


def test_per_request_qos_is_accepted(gw: RunningGateway) -> None:
    client = th.InferenceServerClient(gw.http)
    result = client.infer(MODEL, http_inputs(2, True), parameters={"qos_ms": 50})
    assert "gateway_instance" in result.get_response()["parameters"]


def test_health_and_metadata_over_both_protocols(gw: RunningGateway) -> None:
    h = th.InferenceServerClient(gw.http)
    assert h.is_server_live() and h.is_server_ready() and h.is_model_ready(MODEL)
    assert not h.is_model_ready("dien")
    assert h.get_server_metadata()["name"] == "kairos-gateway"
    # Both protocols list what the gateway takes from clients: binary tensors over HTTP.
    assert h.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert [t["name"] for t in h.get_model_metadata(MODEL)["inputs"]] == ["user_id", "item_id"]
    g = tg.InferenceServerClient(gw.grpc)
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready(MODEL)
    assert [t.name for t in g.get_model_metadata(MODEL).inputs] == ["user_id", "item_id"]
    assert list(g.get_server_metadata().extensions) == ["binary_tensor_data"]
    with pytest.raises(InferenceServerException):
        g.get_model_metadata("dien")


def test_grpc_health_checks_answer_for_the_gateway_and_its_model(gw: RunningGateway) -> None:
    """What Kubernetes ``grpc:`` probes and gRPC load balancers ask, on both gRPC servers."""
    with grpc.insecure_channel(gw.grpc) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", MODEL, "inference.GRPCInferenceService"):
            reply = check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            check(health_pb2.HealthCheckRequest(service="dien"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_input_gets_v2_errors_and_the_gateway_keeps_serving(gw: RunningGateway) -> None:
    infer = f"{gw.url}/v2/models/{MODEL}/infer"
    async with aiohttp.ClientSession() as s:
        cases: list[tuple[bytes, dict[str, str], int]] = [
            (b"{not json", {}, 400),
            (orjson.dumps({"inputs": []}), {}, 400),
            (orjson.dumps({"inputs": [{"name": "user_id", "shape": [], "datatype": "INT64", "data": []}]}), {}, 400),
            # shape says 3 rows, data has 2: the instance rejects it, its 400 comes back
            (orjson.dumps({"inputs": [{"name": "user_id", "shape": [3, 1], "datatype": "INT64", "data": [1, 2]}]}), {}, 400),
            # well formed, but not ncf's inputs: the instance's 400 comes back
            (json_request(2, model="other"), {}, 400),
            (json_request(2, model=MODEL), {"Inference-Header-Content-Length": "999999"}, 400),
            (b"x" * 70_000, {}, 413),
        ]
        for body, headers, status in cases:
            async with s.post(infer, data=body, headers=headers) as resp:
                assert resp.status == status, (body[:80], await resp.text())
                assert "error" in orjson.loads(await resp.read())
        # Chunked, no Content-Length: the limit holds while reading, and a body that arrives in
        # pieces is read whole.
        async def pieces(body: bytes, n: int) -> AsyncIterator[bytes]:
            step = -(-len(body) // n)
            for k in range(0, len(body), step):
                yield body[k : k + step]
                await asyncio.sleep(0.005)

        async with s.post(infer, data=pieces(b"x" * 70_000, 7)) as resp:
            assert resp.status == 413 and "error" in orjson.loads(await resp.read())
        # (a QoS that leaves time for the pieces: ncf's 5 ms would have it shed)
        async with s.post(infer, data=pieces(json_request(2, "in-pieces", qos_ms=1000, model=MODEL), 3)) as resp:
            assert resp.status == 200 and orjson.loads(await resp.read())["id"] == "in-pieces"
        async with s.post(infer, data=b"") as resp:
            assert resp.status == 400 and "empty" in orjson.loads(await resp.read())["error"]
        status, doc, _ = await post_infer(s, gw.url, "no-such-model", json_request(1, model=MODEL))
        assert status == 404 and "error" in doc
        # routes that are not served: V2 error JSON, not plain text
        async with s.get(f"{gw.url}/v3/nothing/here") as resp:
            assert resp.status == 404 and "no such route" in orjson.loads(await resp.read())["error"]
        async with s.delete(f"{gw.url}/v2/health/live") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "GET"
            assert "not allowed" in orjson.loads(await resp.read())["error"]
        status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(2, "still-ok", model=MODEL))
        assert status == 200 and doc["id"] == "still-ok"

    channel = grpc.aio.insecure_channel(gw.grpc)
    infer_raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await infer_raw(b"\xff\xff\xff garbage")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await channel.close()
    g = tg.InferenceServerClient(gw.grpc)
    with pytest.raises(InferenceServerException) as missing:
        g.infer("no-such-model", grpc_inputs(1))
    assert "StatusCode.NOT_FOUND" in str(missing.value.status())
    assert g.infer(MODEL, grpc_inputs(1)).as_numpy("output0").shape == (1, 1)


async def test_metrics_are_prometheus_with_one_prefix(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            await post_infer(s, gw.url, MODEL, json_request(5, f"m{i}", model=MODEL))
        async with s.get(f"{gw.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    for name in (
        'kairos_requests_total{code="200",model="ncf",protocol="http"}',
        'kairos_request_duration_seconds_bucket{class="default",le="0.005",model="ncf",protocol="http"}',
        "kairos_queue_duration_seconds_bucket",
        "kairos_qos_violations_total",
        "kairos_pending_queries",
        'kairos_instance_in_flight{instance="g4dn.xlarge-0",model="ncf",type="g4dn.xlarge",variant="ncf"}',
        "kairos_instance_busy_seconds_total",
        "kairos_instance_served_total",
        "kairos_decision_duration_seconds_count",
        "kairos_dispatches_total",
        "kairos_retries_total",
        "kairos_refusals_total",
        "kairos_health_changes_total",
        "kairos_transport_overhead_p75_seconds",
        "kairos_transport_overhead_p99_seconds",
        "kairos_transport_overhead_mean_seconds",
        "kairos_pipelined_dispatches_total",
        'kairos_build_info{python="',
        "process_cpu_seconds_total",
    ):
        assert name in text, name
    metric_lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all(ln.startswith(("kairos_", "process_", "python_")) for ln in metric_lines)
    # The instances report their service time, so the gateway has learned the round trip around it.
    values = dict(ln.rsplit(" ", 1) for ln in metric_lines)
    mean = float(values['kairos_transport_overhead_mean_seconds{model="ncf"}'])
    p99 = float(values['kairos_transport_overhead_p99_seconds{model="ncf"}'])
    assert 0.0 < mean <= p99 < 1.0
    assert 0.0 < float(values['kairos_transport_overhead_p75_seconds{model="ncf"}']) <= p99  # the estimates' share


def test_the_live_benchmark_reads_the_measured_transport(gw: RunningGateway) -> None:
    from benchmarks.live import measured_transport_ms

    client = th.InferenceServerClient(gw.http)
    for i in range(3):
        client.infer(MODEL, http_inputs(2, True), request_id=f"t{i}")
    mean, p99 = measured_transport_ms(gw.url)
    assert mean is not None and p99 is not None and 0.0 < mean <= p99 < 1000.0


def test_config_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess

    from gateway_process import gateway_command

    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "rm2", "pool": [{"type": "nope", "count": 1}]}')
    for args in (["--config", str(tmp_path / "missing.json")], ["--config", str(bad)]):
        proc = subprocess.run([*gateway_command(), *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
