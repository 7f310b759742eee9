"""kairos-servers' admin API: instances started at run time (after a start-up delay, refusing
connections until then), served, listed, written to the address file, stopped; and its errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from helpers.inputs import json_body
from helpers.pool import RunningPool, start_pool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPool]:
    with start_pool(tmp_path_factory.mktemp("pool"), pool={"r5n.large": 1}, model="rm2", admin_port=0) as p:
        yield p


def admin(pool: RunningPool) -> str:
    return pool.ready_line.rsplit("; admin ", 1)[1].strip() + "/admin/instances"


async def call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def reachable(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with s.get(f"{url}/v2/health/ready", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_an_instance_started_at_run_time_listens_after_its_delay_then_stops(pool: RunningPool) -> None:
    url = admin(pool)
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, doc = await call(s, "POST", url, json={"model": "rm2", "type": "g4dn.xlarge", "startup_delay_s": 1.0})
        assert status == 202 and doc["state"] == "starting" and doc["name"] == "rm2-g4dn.xlarge-0"
        assert not await reachable(s, doc["http"])  # still booting: connection refused
        while not await reachable(s, doc["http"]):
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 1.0
        status, listed = await call(s, "GET", url)
        assert [(i["name"], i["state"]) for i in listed["instances"]] == [
            ("r5n.large-0", "ready"), ("rm2-g4dn.xlarge-0", "ready"),
        ]  # fmt: skip
        written = json.loads(pool.address_file.read_text())
        assert [i["name"] for i in written["instances"]] == ["r5n.large-0", "rm2-g4dn.xlarge-0"]
        async with s.post(f"{doc['http']}/v2/models/rm2/infer", data=json_body("rm2", 4)) as resp:
            answer = await resp.json()
            assert resp.status == 200 and answer["parameters"]["instance_type"] == "g4dn.xlarge"
        status, stopped = await call(s, "DELETE", f"{url}/{doc['name']}")
        assert status == 200 and stopped["state"] == "stopped"
        assert not await reachable(s, doc["http"])
        assert [i["name"] for i in json.loads(pool.address_file.read_text())["instances"]] == ["r5n.large-0"]


async def test_stopping_an_instance_answers_every_query_it_has_queued(pool: RunningPool) -> None:
    """A stop lets the queries it accepted finish, however long its queue (it gave them 1 s)."""
    url = admin(pool)
    async with aiohttp.ClientSession() as s:
        status, doc = await call(s, "POST", url, json={"model": "rm2", "type": "r5n.large", "name": "queued"})
        assert status == 202
        deadline = time.monotonic() + 10
        while not await reachable(s, doc["http"]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        async def infer() -> int:
            async with s.post(f"{doc['http']}/v2/models/rm2/infer", data=json_body("rm2", 1000)) as resp:
                await resp.read()
                return resp.status

        queries = [asyncio.create_task(infer()) for _ in range(10)]  # ~4 s of work on one r5n.large
        await asyncio.sleep(0.5)
        started = time.monotonic()
        status, _ = await call(s, "DELETE", f"{url}/queued")
        assert status == 200 and time.monotonic() - started > 2.0  # it waited for its queue
        assert await asyncio.gather(*queries) == [200] * 10


async def test_stopping_an_instance_that_is_still_starting_frees_its_ports(pool: RunningPool) -> None:
    url = admin(pool)
    async with aiohttp.ClientSession() as s:
        status, doc = await call(s, "POST", url, json={"model": "rm2", "type": "r5n.large", "name": "slow", "startup_delay_s": 60})
        assert status == 202 and doc["state"] == "starting"
        status, _ = await call(s, "DELETE", f"{url}/slow")
        assert status == 200
        status, listed = await call(s, "GET", url)
        assert [i["name"] for i in listed["instances"]] == ["r5n.large-0"]


async def test_admin_errors(pool: RunningPool) -> None:
    url = admin(pool)
    async with aiohttp.ClientSession() as s:
        for body, code, message in (
            ({"model": "rm2", "type": "t9.huge"}, 400, "cannot emulate model 'rm2' on 't9.huge'"),
            ({"model": "rm2", "type": "r5n.large", "startup_delay_s": -1}, 400, "startup_delay_s"),
            ({"model": "rm2", "type": "r5n.large", "startup_delay_s": "soon"}, 400, "startup_delay_s"),
            ({"model": "rm2"}, 400, "type: expected a non-empty string"),
            ({"model": "rm2", "type": "r5n.large", "gpu": True}, 400, "unknown field"),
            ({"model": "rm2", "type": "r5n.large", "variant": "wnd"}, 400, "'wnd' is not a variant of 'rm2' in the config (its variants: none)"),
            ({"model": "rm2", "type": "r5n.large", "name": "r5n.large-0"}, 409, "already running"),
        ):
            status, doc = await call(s, "POST", url, json=body)
            assert status == code and message in doc["error"], (body, doc)
        status, doc = await call(s, "DELETE", f"{url}/r5n.large-0")
        assert status == 409 and "started with the pool" in doc["error"]
        status, doc = await call(s, "DELETE", f"{url}/nope")
        assert status == 404


async def test_at_most_max_started_instances_run_at_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Each start holds two sockets: 300 took 600 file descriptors, 10,000 would run out of them.
    with start_pool(tmp_path_factory.mktemp("capped"), pool={"r5n.large": 1}, model="rm2", admin_port=0,
                    max_started=2) as capped:
        url = admin(capped)
        async with aiohttp.ClientSession() as s:
            names = []
            for _ in range(2):
                status, doc = await call(s, "POST", url, json={"model": "rm2", "type": "r5n.large", "startup_delay_s": 60})
                assert status == 202
                names.append(doc["name"])
            status, doc = await call(s, "POST", url, json={"model": "rm2", "type": "r5n.large"})
            assert status == 409 and "servers.max_started" in doc["error"]
            status, _ = await call(s, "DELETE", f"{url}/{names[0]}")
            assert status in (200, 202)
            status, _ = await call(s, "POST", url, json={"model": "rm2", "type": "r5n.large"})
            assert status == 202  # room again
