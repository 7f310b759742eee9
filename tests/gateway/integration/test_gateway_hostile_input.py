"""One bad request must hurt no one: the exact requests that froze dispatching, emptied the pool
or smuggled a second request to an instance, sent to a live gateway (both gRPC servers) in front
of a live pool, with a legitimate client checked after each. rm2 (QoS 350 ms)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from gateway_process import RunningGateway, gateway_config, json_request, launch_gateway, post_infer
from helpers.inputs import proto_request
from helpers.pool import RunningPool, start_pool

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.v2 import GRPC_INFER_METHOD

pytestmark = pytest.mark.slow
MODEL = "rm2"
POOL_SIZE = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(
        tmp_path_factory.mktemp("pool"), pool={"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL
    ) as p:
        yield p


@pytest.fixture(scope="module", params=["native", "grpcio"])
def gw(
    pool: RunningPool, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("gateway")
    config = gateway_config(
        pool.config_path,
        directory,
        grpc_server=request.param,
        header_timeout_s=1.0,
        body_timeout_s=1.0,
        probe_interval_s=30.0,  # an instance taken out stays out: a probe cannot hide an ejection
    )
    running = launch_gateway(config, ["--address-file", str(pool.address_file)], directory)
    yield running
    assert running.stop(signal.SIGTERM) == 0
    assert "Traceback" not in running.stderr()


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def assert_pool_whole_and_serving(gw: RunningGateway) -> None:
    """No instance left the rotation, and a legitimate query is answered, as itself."""
    assert await metric(gw.url, "kairos_instance_healthy") == POOL_SIZE
    assert await metric(gw.url, "kairos_health_changes_total") == 0
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(10, "legit"))
    assert status == 200 and doc["id"] == "legit"


def raw_http(gw: RunningGateway, data: bytes, read_s: float = 5.0) -> bytes:
    """Send bytes as they are on a fresh connection; everything the gateway answers until it
    closes or ``read_s`` passes."""
    host, port = gw.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_s) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + read_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and re.search(rb"content-length: (\d+)", out, re.I):
                length = int(re.search(rb"content-length: (\d+)", out, re.I).group(1))  # type: ignore[union-attr]
                if len(out.split(b"\r\n\r\n", 1)[1]) >= length:
                    break
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def grpc_infer(gw: RunningGateway, request: pb.ModelInferRequest) -> grpc.aio.AioRpcError | bytes:
    async with grpc.aio.insecure_channel(gw.grpc) as channel:
        call = channel.unary_unary(GRPC_INFER_METHOD)
        try:
            return bytes(await call(request.SerializeToString(), timeout=10))
        except grpc.aio.AioRpcError as exc:
            return exc


def rm2_request(**fields: object) -> pb.ModelInferRequest:
    return proto_request(MODEL, 2, **fields)


async def test_a_first_dimension_past_int64_is_refused_and_dispatching_goes_on(gw: RunningGateway) -> None:
    body = b'{"inputs":[{"name":"dense","datatype":"FP32","shape":[9223372036854775808,13],"data":[0.5]}]}'
    async with aiohttp.ClientSession() as s:
        for shape in ("[9223372036854775808,13]", "[100000,1]", "[1099511627777,1]"):
            status, doc, _ = await post_infer(
                s, gw.url, MODEL, body.replace(b"[9223372036854775808,13]", shape.encode())
            )
            assert status == 400 and "error" in doc, doc
    await assert_pool_whole_and_serving(gw)
    r = pb.ModelInferRequest(model_name=MODEL)
    r.inputs.add(name="dense", datatype="FP32", shape=[2**62, 1])
    err = await grpc_infer(gw, r)
    assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    await assert_pool_whole_and_serving(gw)


async def test_requests_that_made_instances_fail_are_client_errors_and_eject_nothing(
    gw: RunningGateway,
) -> None:
    infer = f"/v2/models/{MODEL}/infer"
    body = json_request(2)
    head = f"POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
    # A Content-Type with a byte outside Latin-1's printable range.
    answer = raw_http(gw, head + b"Content-Type: application/json; charset=\xe9\r\n\r\n" + body)
    assert status_of(answer) == 400 and b"Content-Type" in answer
    async with aiohttp.ClientSession() as s:
        # A version that is not a safe path segment.
        async with s.post(f"{gw.url}/v2/models/{MODEL}/versions/%E2%98%83/infer", data=body) as resp:
            assert resp.status == 400 and "version" in (await resp.json())["error"]
        # Tensor data nested far deeper than its shape: the gateway refuses it before any instance.
        deep = (
            b'{"inputs":[{"name":"dense","datatype":"FP32","shape":[1,1],"data":'
            + b"[" * 800
            + b"1"
            + b"]" * 800
            + b"}]}"
        )
        status, doc, _ = await post_infer(s, gw.url, MODEL, deep)
        assert status == 400 and "nested" in doc["error"]
        # Well formed but not rm2's inputs: the instance refuses it (400), and that is the client's error.
        status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(2, model="other"))
        assert status == 400 and "unknown input 'input0'" in doc["error"], doc
    # gRPC: typed contents out of their datatype's range, a version outside the safe characters.
    r = pb.ModelInferRequest(model_name=MODEL)
    t = r.inputs.add(name="dense", datatype="UINT8", shape=[1, 1])
    t.contents.uint_contents.append(300)
    wrong_datatype = rm2_request()
    wrong_datatype.inputs[1].datatype = "FP64"  # the same 8 bytes per element: only the instance objects
    for bad in (r, rm2_request(model_version="☃"), wrong_datatype):
        err = await grpc_infer(gw, bad)
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    await assert_pool_whole_and_serving(gw)


async def test_an_encoded_crlf_never_reaches_an_instance_and_answers_stay_with_their_clients(
    gw: RunningGateway,
) -> None:
    smuggle = "1%0D%0AContent-Length:%200%0D%0A%0D%0AGET%20x%20HTTP%0D%0AX:%20"
    async with aiohttp.ClientSession() as s:
        for path in (
            f"/v2/models/{MODEL}/versions/{smuggle}/infer",
            f"/v2/models/{MODEL}/versions/{smuggle}",
        ):
            method = s.post if path.endswith("infer") else s.get
            async with method(f"{gw.url}{path}", data=json_request(2)) as resp:
                assert resp.status == 400, await resp.text()
        err = await grpc_infer(
            gw, rm2_request(model_version="1\r\nContent-Length: 0\r\n\r\nGET /v2 HTTP/1.1")
        )
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Legitimate clients beside the smuggler: each gets its own answer.
        async def legit(i: int) -> None:
            status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(5, f"c{i}"))
            assert status == 200 and doc["id"] == f"c{i}"

        async def smuggler() -> None:
            async with s.post(
                f"{gw.url}/v2/models/{MODEL}/versions/{smuggle}/infer", data=json_request(2)
            ) as r:
                assert r.status == 400

        await asyncio.gather(*(legit(i) for i in range(60)), *(smuggler() for _ in range(20)))
    await assert_pool_whole_and_serving(gw)


async def test_a_long_model_name_gets_a_short_error(gw: RunningGateway) -> None:
    r = rm2_request()
    r.model_name = "m" * 10_000
    err = await grpc_infer(gw, r)
    assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.details() or "") < 200
    async with aiohttp.ClientSession() as s:
        status, doc, _ = await post_infer(s, gw.url, "m" * 4_000, json_request(1))
        assert status == 404 and len(doc["error"]) < 200
        # Past aiohttp's 8 KB request line the HTTP parser refuses it before any route.
        async with s.post(f"{gw.url}/v2/models/{'m' * 10_000}/infer", data=json_request(1)) as resp:
            assert 400 <= resp.status < 500


async def test_slow_and_short_requests_are_timed_out(gw: RunningGateway) -> None:
    host, port = gw.http.rsplit(":", 1)
    # A head that never ends: closed after header_timeout_s (1 s here).
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/rm2/infer HTTP/1.1\r\nHost: x\r\n")
        for _ in range(30):
            try:
                sock.sendall(b"X-a: b\r\n")
            except OSError:
                break
            time.sleep(0.1)
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                pass
        assert time.monotonic() - started < 2.9
    # A body shorter than its Content-Length: 408 after body_timeout_s.
    body = json_request(2)
    answer = raw_http(
        gw,
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 10}\r\n\r\n".encode()
        + body,
    )
    assert status_of(answer) == 408 and b"error" in answer
    await assert_pool_whole_and_serving(gw)


async def test_malformed_http_is_answered_without_a_traceback(gw: RunningGateway) -> None:
    for junk in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET /v2 HTTP/9.9\r\n\r\n"):
        answer = raw_http(gw, junk, read_s=2.0)
        assert answer == b"" or 400 <= status_of(answer) < 500, answer[:100]
    await assert_pool_whole_and_serving(gw)
    assert "Traceback" not in gw.stderr()


async def test_errors_do_not_expose_backend_addresses(pool: RunningPool, tmp_path: Path) -> None:
    """Every instance gone: the client hears which instance failed, not its address or request."""
    config = gateway_config(pool.config_path, tmp_path, probe_interval_s=30.0)
    flags = ["--instance", "r5n.large=http://127.0.0.1:1"]
    gw = launch_gateway(config, flags, tmp_path)
    try:
        async with aiohttp.ClientSession() as s:
            status, doc, _ = await post_infer(
                s,
                gw.url,
                MODEL,
                json_request(1),
            )
        assert status in (502, 503, 504)
        assert "127.0.0.1" not in doc["error"] and "POST" not in doc["error"]
    finally:
        gw.stop(signal.SIGKILL)


async def test_unfinished_bodies_across_connections_are_bounded(pool: RunningPool, tmp_path: Path) -> None:
    """Connections that each send most of a large body and stop hold at most the gateway-wide
    budget; a client that sends its body at once evicts the largest of them (408) and is served."""
    config = gateway_config(
        pool.config_path, tmp_path, max_body_bytes=65536, max_buffered_bytes=150_000, body_timeout_s=30.0
    )
    gw = launch_gateway(config, ["--address-file", str(pool.address_file)], tmp_path)
    host, port = gw.http.rsplit(":", 1)
    try:
        stalled = []
        for _ in range(3):  # the third fits only by evicting one of the first two
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 65000\r\n\r\n".encode())
            sock.sendall(b"x" * 60_000)
            stalled.append(sock)
            time.sleep(0.6)
        async with aiohttp.ClientSession() as s:
            started = time.monotonic()
            status, doc, _ = await post_infer(s, gw.url, MODEL, b" " * 50_000 + json_request(2, "big"))
            assert status == 200 and doc["id"] == "big"
            assert time.monotonic() - started < 5.0  # not after the stalled bodies time out (30 s)
        answers = []
        for sock in stalled:
            sock.settimeout(1.0)
            try:
                answers.append(status_of(sock.recv(4096)))
            except TimeoutError:
                answers.append(None)
        assert sorted(answers, key=str) == [408, 408, None]  # two evicted, one still within budget
        for sock in stalled:
            sock.close()
        assert "Traceback" not in gw.stderr()
    finally:
        gw.stop(signal.SIGKILL)


async def test_large_bodies_together_are_paced_and_all_served(pool: RunningPool, tmp_path: Path) -> None:
    """Three large bodies at once share the pace (1 MB/s past their first 10 kB): each is served,
    the gateway counts the wait, and a small query beside them is not held back."""
    config = gateway_config(
        pool.config_path, tmp_path, qos_ms=10_000.0,  # the deadline counts from the head: the bodies take ~1 s
        body_pace_bytes_per_s=1_000_000, body_pace_after_bytes=10_000, body_timeout_s=30.0,
    )  # fmt: skip
    gw = launch_gateway(config, ["--address-file", str(pool.address_file)], tmp_path)
    try:
        async with aiohttp.ClientSession() as s:
            large = [asyncio.ensure_future(post_infer(s, gw.url, MODEL, b" " * 300_000 + json_request(2, f"big{i}")))
                     for i in range(3)]  # fmt: skip
            await asyncio.sleep(0.2)  # the large bodies are being paced
            started = time.monotonic()
            status, doc, _ = await post_infer(s, gw.url, MODEL, json_request(2, "small"))
            small_s = time.monotonic() - started
            assert status == 200 and doc["id"] == "small"
            answers = await asyncio.gather(*large)
            assert [(st, d.get("id", d)) for st, d, _ in answers] == [(200, f"big{i}") for i in range(3)]
        paced = await metric(gw.url, "kairos_http_body_paced_seconds_total")
        # ~0.87 MB past the free bytes at 1 MB/s: most of a second of waiting in all.
        assert paced > 0.3
        assert small_s < paced  # the small query did not wait its turn behind them
        assert "Traceback" not in gw.stderr()
    finally:
        gw.stop(signal.SIGKILL)
