"""The pool admin API of a live gateway: instances added, drained and removed while thousands of
queries flow (each answered once, none sent twice), its errors, and its bearer token when bound
off loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_process import RunningGateway, json_request, launch_gateway
from helpers.hanging_grpc import hanging_grpc_server
from helpers.pool import RunningPool, start_pool

from gateway.admin import TOKEN_ENV

pytestmark = pytest.mark.slow
MODEL = "rm2"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"r5n.large": 3, "g4dn.xlarge": 1}, model=MODEL) as p:
        yield p


def endpoint(inst: Any) -> dict[str, str]:
    return {"http": inst.http, "grpc": inst.grpc}


def write_config(directory: Path, pool: RunningPool, first: int, **gateway: Any) -> Path:
    """A config fronting the pool's first ``first`` instances, with the admin API on."""
    doc = {
        "model": MODEL,
        "qos_ms": 5000,
        "instances": [{"name": i.name, "type": i.type, **endpoint(i)} for i in pool.instances[:first]],
        "gateway": {
            "http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2, "late_queries": "serve",
            **gateway,
        },
    }  # fmt: skip
    path = directory / "config.json"
    path.write_text(json.dumps(doc))
    return path


def admin_url(gw: RunningGateway) -> str:
    address = gw.ready_line.rsplit(" admin=", 1)[1].split()[0]
    return f"http://{address}/admin/instances"


async def call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.fixture()
def gw(pool: RunningPool, tmp_path: Path) -> Iterator[RunningGateway]:
    running = launch_gateway(write_config(tmp_path, pool, first=2), [], tmp_path)
    yield running
    assert running.stop(signal.SIGTERM) == 0


async def test_instances_come_and_go_under_load_and_every_query_is_answered_once(
    pool: RunningPool, gw: RunningGateway
) -> None:
    admin = admin_url(gw)
    a0, a1, b0, gpu = pool.instances
    n, results = 2000, []
    async with aiohttp.ClientSession() as s:
        status, doc = await call(s, "GET", admin)
        assert status == 200 and [(i["name"], i["state"]) for i in doc["instances"]] == [
            (a0.name, "healthy"), (a1.name, "healthy"),
        ]  # fmt: skip
        gate = asyncio.Semaphore(24)

        async def one(i: int) -> None:
            async with gate, s.post(
                f"{gw.url}/v2/models/{MODEL}/infer", data=json_request(2, f"r{i}", model=MODEL),
                headers={"Content-Type": "application/json"},
            ) as resp:  # fmt: skip
                body = await resp.json()
                results.append((resp.status, body.get("id"), body.get("parameters", {}).get("gateway_instance")))

        async def churn() -> list[tuple[int, Any]]:
            steps = []
            await asyncio.sleep(0.3)
            steps.append(await call(s, "POST", admin, json={"model": MODEL, "type": b0.type, "name": b0.name, **endpoint(b0)}))
            await asyncio.sleep(0.3)
            steps.append(await call(s, "POST", admin, json={"model": MODEL, "type": gpu.type, "name": gpu.name, **endpoint(gpu)}))
            await asyncio.sleep(0.3)
            steps.append(await call(s, "POST", f"{admin}/{a0.name}/drain"))
            await asyncio.sleep(0.3)
            steps.append(await call(s, "DELETE", f"{admin}/{a1.name}"))
            await asyncio.sleep(0.3)
            steps.append(await call(s, "DELETE", f"{admin}/{a0.name}"))
            return steps

        steps, *_ = await asyncio.gather(churn(), *(one(i) for i in range(n)))
        assert [code for code, _ in steps[:2]] == [201, 201]
        assert steps[0][1]["state"] == "healthy" and steps[1][1]["type"] == "g4dn.xlarge"
        assert steps[2][1]["state"] == "draining"
        assert steps[3][0] in (200, 202) and steps[4][0] in (200, 202)
        await asyncio.sleep(0.5)
        status, doc = await call(s, "GET", admin)
        assert sorted(i["name"] for i in doc["instances"]) == sorted([b0.name, gpu.name])
        async with s.get(f"{gw.url}/metrics") as resp:
            metrics = await resp.text()
    assert len(results) == n
    assert Counter(code for code, _, _ in results) == {200: n}
    assert sorted(rid for _, rid, _ in results) == sorted(f"r{i}" for i in range(n))
    served_by = Counter(inst for _, _, inst in results)
    assert served_by[b0.name] > 0 and served_by[gpu.name] > 0 and served_by[a0.name] > 0
    # Nothing sent twice: one dispatch per answer, no retry. The removed instance's series are
    # gone (names that come and go must not pile up in /metrics).
    dispatched = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("kairos_dispatches_total{")
    )
    assert dispatched == served_by[b0.name] + served_by[gpu.name] == n - served_by[a0.name] - served_by[a1.name]
    assert f'instance="{a0.name}"' not in metrics and f'instance="{a1.name}"' not in metrics
    assert 'kairos_retries_total{model="rm2"} 0.0' in metrics


async def test_admin_errors_are_clear(pool: RunningPool, gw: RunningGateway) -> None:
    admin = admin_url(gw)
    a0 = pool.instances[0]
    async with aiohttp.ClientSession() as s:
        for body, message in (
            (b"[1]", "expected a JSON object"),
            (b"{", "expected a JSON object"),
            (json.dumps({"model": MODEL, "type": "r5n.large"}).encode(), "an http URL, a grpc address"),
            (json.dumps({"model": MODEL, "type": "r5n.large", "http": "ftp://x"}).encode(), "http: expected"),
            (json.dumps({"model": MODEL, "type": "r5n.large", "grpc": "nohost"}).encode(), "grpc: expected HOST:PORT"),
            (json.dumps({"model": MODEL, "type": "bad type", "http": "http://a:1"}).encode(), "type"),
            (json.dumps({"model": MODEL, "type": "r5n.large", "http": "http://a:1", "colour": 1}).encode(), "unknown field"),
            (b"x" * 20_000, "larger than"),
            *((json.dumps({"model": MODEL, "type": "r5n.large", "http": url}).encode(), "http: expected")
              for url in ("http://127.0.0.1", "http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://a:1/?q",
                          "http://:80", "http://a:0")),
            (json.dumps({"model": MODEL, "type": "t" * 256, "http": "http://a:1"}).encode(), "give a name"),
            # Each type is a column of every estimate and a set of series: the catalogue's only.
            (json.dumps({"model": MODEL, "type": "p9.huge", "name": "x", "http": "http://a:1"}).encode(),
             "type 'p9.huge' is not in the catalogue"),
            (json.dumps({"model": MODEL, "variant": "wnd", "type": "r5n.large", "http": "http://a:1"}).encode(),
             "unknown variant 'wnd' of model 'rm2'"),
        ):
            status, doc = await call(s, "POST", admin, data=body)
            assert status in (400, 413) and message in doc["error"], (body[:40], doc)
        status, doc = await call(s, "POST", admin, json={"model": "ncf", "type": "r5n.large", "http": "http://a:1"})
        assert status == 404 and "unknown model 'ncf'" in doc["error"]
        status, doc = await call(s, "POST", admin, json={"model": MODEL, "type": "r5n.large", "name": a0.name, **endpoint(a0)})
        assert status == 409
        status, doc = await call(s, "POST", admin, json={"model": MODEL, "type": "r5n.large", "name": "twin", **endpoint(a0)})
        assert status == 409 and f"{a0.name} of model {MODEL!r} is that server already" in doc["error"]
        for junk in ("http://a b:80", "http://0.0.0.0:80", "http://u:pw@h:80", "http://h:80/a\r\nX: y"):
            status, doc = await call(s, "POST", admin, json={"model": MODEL, "type": "r5n.large", "http": junk})
            assert status == 400 and "expected http://HOST:PORT" in doc["error"], junk
        status, doc = await call(s, "POST", f"{admin}/nope/drain")
        assert status == 404 and "no instance named 'nope'" in doc["error"]
        status, _ = await call(s, "DELETE", f"{admin}/nope")
        assert status == 404
        # aiohttp's own answers as JSON too; a body that does not decode as its encoding is a 400.
        status, doc = await call(s, "GET", f"{admin}/nope/more/path")
        assert status in (404, 405) and doc["error"]
        async with aiohttp.ClientSession() as other:  # the server closes that connection after it
            status, doc = await call(other, "POST", admin, data=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert status == 400 and "Content-Encoding" in doc["error"]
        # An instance that is not there yet is added out of rotation and waits for its probe.
        status, doc = await call(s, "POST", admin, json={"model": MODEL, "type": "r5n.large", "http": "http://127.0.0.1:9"})
        assert status == 201 and doc["state"] == "unhealthy" and doc["name"] == "r5n.large-2"
        status, doc = await call(s, "DELETE", f"{admin}/r5n.large-2")
        assert status == 200 and doc["state"] == "removed"
        # The gateway still serves.
        async with s.post(f"{gw.url}/v2/models/{MODEL}/infer", data=json_request(1, model=MODEL)) as resp:
            assert resp.status == 200


async def test_the_pools_hold_at_most_max_instances(pool: RunningPool, tmp_path: Path) -> None:
    # 10,000 unreachable instances added through the admin API took the gateway's loop (probes,
    # decisions over them all): another client's queries fell to 17.5% within QoS.
    config = write_config(tmp_path, pool, first=1, max_instances=2)
    gw = launch_gateway(config, [], tmp_path)
    try:
        url = admin_url(gw)
        async with aiohttp.ClientSession() as s:
            second = pool.instances[1]
            status, _ = await call(s, "POST", url, json={"model": MODEL, "type": second.type, "name": "two",
                                                         **endpoint(second)})
            assert status == 201
            status, doc = await call(s, "POST", url, json={"model": MODEL, "type": second.type, "name": "junk",
                                                           "http": "http://127.0.0.1:1"})
            assert status == 409 and "gateway.max_instances" in doc["error"]
            status, _ = await call(s, "DELETE", f"{url}/two")
            assert status in (200, 202)
            status, _ = await call(s, "POST", url, json={"model": MODEL, "type": second.type, "name": "three",
                                                         **endpoint(second)})
            assert status == 201  # room again once one left
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    many = write_config(tmp_path, pool, first=2, max_instances=1)
    with pytest.raises(RuntimeError, match=r"instances: 2, more than gateway.max_instances \(1\)"):
        launch_gateway(many, [], tmp_path, timeout_s=15)


async def test_off_loopback_the_admin_api_needs_its_token(
    pool: RunningPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, pool, first=1, admin_host="0.0.0.0")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(RuntimeError, match=f"set {TOKEN_ENV}"):
        launch_gateway(config, [], tmp_path, timeout_s=15)
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    gw = launch_gateway(config, [], tmp_path)
    try:
        url = admin_url(gw).replace("0.0.0.0", "127.0.0.1")
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                async with s.get(url, headers=headers) as resp:
                    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "Bearer <token>" in (await resp.json())["error"]
            async with s.post(f"{url}/{pool.instances[0].name}/drain") as resp:
                assert resp.status == 401  # nothing changes without the token
            # A token that is not ASCII (the raw bytes): a 500 from the check itself before.
            host, port = url.removeprefix("http://").split("/")[0].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /admin/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                         b"Connection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            status, doc = await call(s, "GET", url, headers={"Authorization": "Bearer s3cret"})
            assert status == 200 and doc["instances"][0]["state"] == "healthy"
    finally:
        assert gw.stop(signal.SIGTERM) == 0


async def test_a_control_loop_actuates_the_emulated_pool_through_both_admin_apis(tmp_path: Path) -> None:
    """kairos-servers starts an instance that takes a second to boot; the gateway is told of it at
    once, keeps it out of rotation while it refuses connections, and routes to it once ready."""
    with start_pool(tmp_path / "pool", pool={"r5n.large": 1}, model=MODEL, admin_port=0) as pool:
        servers_admin = pool.ready_line.rsplit("; admin ", 1)[1].strip() + "/admin/instances"
        gw = launch_gateway(write_config(tmp_path, pool, first=1), [], tmp_path)
        try:
            async with aiohttp.ClientSession() as s:
                status, booting = await call(
                    s, "POST", servers_admin, json={"model": MODEL, "type": "g4dn.xlarge", "startup_delay_s": 1.0}
                )
                assert status == 202
                status, added = await call(
                    s, "POST", admin_url(gw),
                    json={"model": MODEL, "type": "g4dn.xlarge", "name": booting["name"], **endpoint_of(booting)},
                )  # fmt: skip
                assert status == 201 and added["state"] == "unhealthy"
                started = time.monotonic()
                while True:  # out of rotation while it boots, in once a probe finds it ready
                    status, listed = await call(s, "GET", admin_url(gw))
                    state = {i["name"]: i["state"] for i in listed["instances"]}[booting["name"]]
                    if state == "healthy":
                        break
                    assert state == "unhealthy" and time.monotonic() - started < 10
                    await asyncio.sleep(0.05)
                assert time.monotonic() - started > 0.5
                # Scale the old instance down: the queries move to the new one.
                status, _ = await call(s, "POST", f"{admin_url(gw)}/r5n.large-0/drain")
                assert status == 200
                served: Counter[str] = Counter()
                for i in range(20):
                    async with s.post(
                        f"{gw.url}/v2/models/{MODEL}/infer", data=json_request(8, f"c{i}", model=MODEL)
                    ) as resp:
                        assert resp.status == 200
                        served[(await resp.json())["parameters"]["gateway_instance"]] += 1
                assert served == {booting["name"]: 20}
        finally:
            assert gw.stop(signal.SIGTERM) == 0


def endpoint_of(doc: dict[str, Any]) -> dict[str, str]:
    return {"http": doc["http"], "grpc": doc["grpc"]}


async def test_an_instance_removed_during_its_first_probe_answers_both_calls(
    pool: RunningPool, gw: RunningGateway
) -> None:
    """A gRPC-only instance whose readiness never answers: its first probe (0.2 s) hangs; a
    DELETE meanwhile closes its channel. The add still answers (the instance is gone)
    and the gateway serves on."""
    admin = admin_url(gw)
    silent, port = await hanging_grpc_server()
    try:
        async with aiohttp.ClientSession() as s:
            add = asyncio.ensure_future(call(s, "POST", admin, json={
                "model": MODEL, "type": "r5n.large", "name": "silent", "grpc": f"127.0.0.1:{port}"}))
            await asyncio.sleep(0.08)
            status, doc = await call(s, "DELETE", f"{admin}/silent")
            assert status == 200 and doc["state"] == "removed"
            status, doc = await add
            assert status == 201 and doc["name"] == "silent"
            status, doc = await call(s, "GET", admin)
            assert "silent" not in [i["name"] for i in doc["instances"]]
            async with s.post(f"{gw.url}/v2/models/{MODEL}/infer", data=json_request(1, model=MODEL)) as resp:
                assert resp.status == 200
        assert "Traceback" not in gw.stderr()
    finally:
        await silent.stop(None)
