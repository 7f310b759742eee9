"""The embedded pool's actuator: ``kairos-servers``' admin API starts and stops instances, the
gateway's admin API adds them, drains them and removes them.

Start: the servers start an instance (its ports at once, serving after its start-up delay) and the
gateway is told of it at once; the gateway keeps it out of rotation until its probe finds it ready,
so no query reaches an instance still loading. Stop: the gateway drains it (no new query), removes
it once it holds nothing, and only then do the servers stop it, so no query is lost on the way.
Instances started with the pool (not through the admin API) can be drained and removed from the
gateway but keep running: the servers stop only what they started at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from allocator.autoscale.actuator import GroupKey, GroupState
from gateway.errors import KairosError

log = logging.getLogger("kairos.autoscale")


class PoolActuatorError(KairosError):
    """An admin API refused or could not be reached."""


class PoolActuator:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        servers_admin: str,
        gateway_admin: str,
        *,
        startup_delay_s: float | Mapping[str, float] = 0.0,
        token: str | None = None,
        drain_poll_s: float = 0.2,
        drain_timeout_s: float = 120.0,
        release_s: float = 0.0,
    ) -> None:
        """``servers_admin``, ``gateway_admin``: base URLs (``http://HOST:PORT``) of the two admin
        APIs; ``startup_delay_s``: passed to each start (the emulated pool's model loading), one
        for all or per type (a type not named: 0); ``release_s``: a stopped instance still counts
        as held (draining) this long, as a cluster frees a pod's CPU only once it is gone."""
        self.session = session
        self.servers = servers_admin.rstrip("/") + "/admin/instances"
        self.gateway = gateway_admin.rstrip("/") + "/admin/instances"
        self.startup_by_type: dict[str, float] = {}
        self.startup_other_s = 0.0  # a type not named
        if isinstance(startup_delay_s, Mapping):
            self.startup_by_type = dict(startup_delay_s)
        else:
            self.startup_other_s = float(startup_delay_s)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.drain_poll_s, self.drain_timeout_s = drain_poll_s, drain_timeout_s
        self.release_s = release_s
        self.retiring: dict[str, GroupKey] = {}
        self.releasing: list[tuple[float, GroupKey]] = []  # (loop time it is free, group) per stopped instance
        self.tasks: set[asyncio.Task[None]] = set()

    def startup_of(self, type_name: str) -> float:
        return self.startup_by_type.get(type_name, self.startup_other_s)

    async def _call(self, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
        try:
            async with self.session.request(method, url, headers=self.headers, **kw) as resp:
                body = await resp.json(content_type=None)
                if resp.status not in ok:
                    error = body.get("error") if isinstance(body, dict) else body
                    raise PoolActuatorError(f"{method} {url}: {resp.status} {error}")
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PoolActuatorError(f"{method} {url}: {exc or type(exc).__name__}") from exc

    async def _instances(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        servers, gateway = await asyncio.gather(
            self._call("GET", self.servers, (200,)), self._call("GET", self.gateway, (200,))
        )
        return servers["instances"], {i["name"]: i for i in gateway["instances"]}

    async def groups(self) -> dict[GroupKey, GroupState]:
        servers, gateway = await self._instances()
        counts: dict[GroupKey, list[int]] = {}
        for inst in servers:
            key = GroupKey(inst["model"], inst["model"], inst["type"])
            c = counts.setdefault(key, [0, 0, 0])
            seen = gateway.get(inst["name"])
            if inst["name"] in self.retiring or (seen and seen["state"] in ("draining", "removed")):
                c[2] += 1
            elif inst["state"] == "ready" and seen and seen["state"] == "healthy":
                c[0] += 1
            elif inst["state"] in ("starting", "ready") and seen is not None:
                c[1] += 1
        now = asyncio.get_running_loop().time()
        self.releasing = [(at, key) for at, key in self.releasing if at > now]
        for _, key in self.releasing:
            counts.setdefault(key, [0, 0, 0])[2] += 1
        return {k: GroupState(*v) for k, v in counts.items()}

    async def scale(self, key: GroupKey, replicas: int) -> None:
        servers, gateway = await self._instances()
        mine = [i for i in servers if i["model"] == key.model and i["type"] == key.type
                and i["name"] not in self.retiring and i["name"] in gateway
                and gateway[i["name"]]["state"] not in ("draining", "removed")]
        have = len(mine)
        for _ in range(replicas - have):
            started = await self._call("POST", self.servers, (202,), json={
                "model": key.model, "type": key.type, "startup_delay_s": self.startup_of(key.type)})
            try:
                await self._call("POST", self.gateway, (201,), json={
                    "model": key.model, "type": key.type, "name": started["name"],
                    "http": started["http"], "grpc": started["grpc"]})
            except PoolActuatorError:
                # Not in the pool, it would run unseen and uncounted: stop it, then report.
                with contextlib.suppress(PoolActuatorError):
                    await self._call("DELETE", f"{self.servers}/{started['name']}", (200, 202, 404))
                raise
            log.info("started %s for %s", started["name"], key)
        if replicas < have:
            # Those not serving yet go first, then the newest (the servers list them in start order).
            position = {i["name"]: k for k, i in enumerate(servers)}
            order = sorted(mine, key=lambda i: (gateway[i["name"]]["state"] == "healthy", -position[i["name"]]))
            for inst in order[: have - replicas]:
                self.retiring[inst["name"]] = key
                task = asyncio.get_running_loop().create_task(self._retire(inst["name"]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _retire(self, name: str) -> None:
        """Drain, remove from the gateway once empty, then stop."""
        try:
            await self._call("POST", f"{self.gateway}/{name}/drain", (200,))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.drain_timeout_s
            while True:
                body = await self._call("DELETE", f"{self.gateway}/{name}", (200, 202, 404))
                if body.get("state") in ("removed", None) or loop.time() > deadline:
                    break
                await asyncio.sleep(self.drain_poll_s)
            with contextlib.suppress(PoolActuatorError):  # started with the pool: it keeps running
                await self._call("DELETE", f"{self.servers}/{name}", (200, 202, 404))
            if self.release_s > 0:
                self.releasing.append((loop.time() + self.release_s, self.retiring[name]))
            log.info("stopped %s", name)
        except PoolActuatorError as exc:
            log.warning("retiring %s: %s", name, exc)
        finally:
            self.retiring.pop(name, None)

    async def settle(self) -> None:
        """Wait for the retirements under way (tests, and a clean exit)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
