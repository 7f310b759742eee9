"""A client asking for model metadata or a version's readiness in a loop: the instance hears
one question a second, not one per request (an HTTP instance that counts what it is asked)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from gateway_process import launch_gateway

pytestmark = pytest.mark.slow
MODEL = "rm2"


def _instance(asked: Counter[str]) -> web.Application:
    async def server(_: web.Request) -> web.Response:
        return web.json_response({"name": "fake", "version": "1", "extensions": []})

    async def ready(request: web.Request) -> web.Response:
        version = request.match_info.get("version")
        if version is not None:
            asked[f"ready {version}"] += 1
        return web.json_response({"ready": True}, status=200 if version in (None, "1") else 404)

    async def metadata(request: web.Request) -> web.Response:
        asked["metadata"] += 1
        return web.json_response({"name": MODEL, "versions": ["1"], "platform": "fake", "inputs": [], "outputs": []})

    app = web.Application()
    app.router.add_get("/v2", server)
    app.router.add_get("/v2/models/{model}/ready", ready)
    app.router.add_get("/v2/models/{model}/versions/{version}/ready", ready)
    app.router.add_get("/v2/models/{model}", metadata)
    return app


async def test_a_flood_of_metadata_and_readiness_questions_reaches_the_instance_once(tmp_path: Path) -> None:
    asked: Counter[str] = Counter()
    runner = web.AppRunner(_instance(asked))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "qos_ms": 350, "pool": [{"type": "r5n.large", "count": 1}],
                                  "gateway": {"http_port": 0, "grpc_port": 0, "probe_interval_s": 0.2}}))
    gw = await asyncio.to_thread(
        launch_gateway, config, ["--instance", f"r5n.large=http://127.0.0.1:{port}"], tmp_path
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def get(path: str) -> int:
                async with session.get(f"{gw.url}/v2/models/{MODEL}{path}") as resp:
                    await resp.read()
                    return resp.status

            for path, status in (("", 200), ("/versions/1/ready", 200), ("/versions/9/ready", 503)):
                assert await asyncio.gather(*(get(path) for _ in range(40))) == [status] * 40
                assert [await get(path) for _ in range(20)] == [status] * 20  # one after another too
        assert asked == Counter({"metadata": 1, "ready 1": 1, "ready 9": 1})
    finally:
        gw.stop()
        await runner.cleanup()
