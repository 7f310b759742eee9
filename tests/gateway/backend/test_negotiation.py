"""What the gateway learns from an instance's server metadata, over real sockets: the emulated
instances list the binary tensor extension; a server that does not (MLServer) gets JSON."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway.backend import InstanceClient
from gateway.backend.base import HTTP, RoutedRequest
from gateway.backend.negotiation import ServerInfo


def test_server_info_is_read_with_bounds() -> None:
    info = ServerInfo.from_json({"name": "triton", "version": "2.50", "extensions": ["binary_tensor_data", "x" * 999]})
    assert info is not None and info.binary_tensors and max(map(len, info.extensions)) == 256
    mlserver = ServerInfo.from_json({"name": "mlserver", "version": "1.7.1", "extensions": []})
    assert mlserver is not None and not mlserver.binary_tensors
    assert "JSON tensors only" in mlserver.describe()
    for bad in ([], {"extensions": "binary_tensor_data"}, None):
        assert ServerInfo.from_json(bad) is None
    many = ServerInfo.from_json({"extensions": [str(i) for i in range(1000)]})
    assert many is not None and len(many.extensions) == 64


async def _server(extensions: list[str], seen: list[tuple[str, bytes]]) -> web.AppRunner:
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": "s", "version": "1", "extensions": extensions})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def infer(request: web.Request) -> web.Response:
        seen.append((request.content_type, await request.read()))
        return web.json_response({"model_name": "m", "outputs": []})

    app = web.Application()
    app.add_routes([web.get("/v2", metadata), web.get("/v2/models/m/ready", ready), web.post("/v2/models/m/infer", infer)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize(("extensions", "binary"), [(["binary_tensor_data"], True), ([], False)])
async def test_binary_requests_go_binary_only_to_a_server_that_lists_the_extension(
    extensions: list[str], binary: bool
) -> None:
    seen: list[tuple[str, bytes]] = []
    runner = await _server(extensions, seen)
    port = runner.addresses[0][1]
    client = InstanceClient("i0", f"http://127.0.0.1:{port}", None, HTTP)
    try:
        assert client.server is None and not client.binary_tensors  # JSON until it is known
        assert await client.ready("m", 1.0)
        assert client.server is not None and client.binary_tensors is binary
        head = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2],"parameters":{"binary_data_size":8}}]}'
        body = head + (7).to_bytes(4, "little") + (9).to_bytes(4, "little")
        request = RoutedRequest(
            HTTP, "m", 2, body, content_type="application/octet-stream", header_length=len(head)
        )
        reply = await client.infer(request, 2.0)
        assert reply.ok
        content_type, sent = seen[-1]
        if binary:
            assert content_type == "application/octet-stream" and sent == body
        else:
            assert content_type == "application/json"
            assert b'"data":[7,9]' in sent and b"binary_data_size" not in sent
    finally:
        await client.close()
        await runner.cleanup()
