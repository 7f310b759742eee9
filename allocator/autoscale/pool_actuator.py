"""The embedded pool's actuator: ``kairos-servers``' admin API starts and stops instances, the
gateway's admin API adds them, drains them and removes them.

Start: the servers start an instance (its ports at once, serving after its start-up delay) and the
gateway is told of it at once; the gateway keeps it out of rotation until its probe finds it ready,
so no query reaches an instance still loading. Stop: the gateway drains it (no new query), removes
it once it holds nothing, and only then do the servers stop it, so no query is lost on the way.
Instances started with the pool (not through the admin API) can be drained and removed from the
gateway but keep running: the servers stop only what they started at run time.

Every tick, before it counts, the actuator repairs what a failure or a restart left: an instance
started at run time that the gateway does not know (a restarted gateway, a lost answer) is added
to it again; one that failed to boot is stopped; one left draining (a retirement cut short, or
this process restarted) is retired. A retirement retries each stage until it is done.

An instance started at run time that has not served for its start-up delay and
``start_timeout_s`` (it never became ready, or the gateway ejected it since) is reported
``unschedulable``, as Kubernetes' stuck pods are: the policy plans around its type for a while
and drops it, and this actuator retires it (those not serving go first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from allocator.autoscale.actuator import GroupKey, GroupState, PartialScale
from allocator.autoscale.admin_api import AdminApiError, GatewayPool, admin_call, bearer, instance_list

log = logging.getLogger("kairos.autoscale")
RETRY_MAX_S = 30.0  # a retirement's retries back off to this


PoolActuatorError = AdminApiError  # the name this module's callers know


def _key_of(inst: Mapping[str, Any]) -> GroupKey:
    """The group of an instance the servers list (``variant``: what it serves; the model's own
    name when it is no variant, and absent from servers before variants were listed)."""
    return GroupKey(inst["model"], inst.get("variant") or inst["model"], inst["type"])


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
        start_timeout_s: float = 300.0,
    ) -> None:
        """``servers_admin``, ``gateway_admin``: base URLs (``http://HOST:PORT``) of the two admin
        APIs; ``startup_delay_s``: passed to each start (the emulated pool's model loading), one
        for all or per type (a type not named: 0); ``release_s``: a stopped instance still counts
        as held (draining) this long, as a cluster frees a pod's CPU only once it is gone."""
        self.session = session
        self.servers = servers_admin.rstrip("/") + "/admin/instances"
        self.pool = GatewayPool(session, gateway_admin, call=self._call)  # through _call, as the servers'
        self.gateway = self.pool.url
        self.startup_by_type: dict[str, float] = {}
        self.startup_other_s = 0.0  # a type not named
        if isinstance(startup_delay_s, Mapping):
            self.startup_by_type = dict(startup_delay_s)
        else:
            self.startup_other_s = float(startup_delay_s)
        self.headers = bearer(token)
        self.drain_poll_s, self.drain_timeout_s = drain_poll_s, drain_timeout_s
        self.release_s = release_s
        self.start_timeout_s = start_timeout_s
        self.not_serving_since: dict[str, float] = {}  # run-time instances counted as starting
        self.stuck: set[str] = set()  # of them, those past the start timeout (logged once)
        self.retiring: dict[str, GroupKey] = {}
        self.stale: set[str] = set()  # gateway entries of starts rolled back, to remove
        self.releasing: list[tuple[float, GroupKey]] = []  # (loop time it is free, group) per stopped instance
        self.tasks: set[asyncio.Task[None]] = set()

    def startup_of(self, type_name: str) -> float:
        return self.startup_by_type.get(type_name, self.startup_other_s)

    async def _call(self, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
        return await admin_call(self.session, self.headers, method, url, ok, **kw)

    async def _instances(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        servers, gateway = await asyncio.gather(self._call("GET", self.servers, (200,)), self.pool.instances())
        return instance_list("GET", self.servers, servers), gateway

    async def groups(self) -> dict[GroupKey, GroupState]:
        servers, gateway = await self._instances()
        await self._repair(servers, gateway)
        counts: dict[GroupKey, list[int]] = {}  # ready, starting, draining, stuck (of those starting)
        now = asyncio.get_running_loop().time()
        waiting: dict[str, float] = {}
        for inst in servers:
            key, name = _key_of(inst), inst["name"]
            c = counts.setdefault(key, [0, 0, 0, 0])
            seen = gateway.get(name)
            if name in self.retiring or (seen and seen["state"] in ("draining", "removed")):
                c[2] += 1
            elif inst["state"] == "ready" and seen and seen["state"] == "healthy":
                c[0] += 1
            elif inst["state"] in ("starting", "ready") and seen is not None:
                c[1] += 1
                if inst.get("origin") == "runtime":
                    since = waiting[name] = self.not_serving_since.get(name, now)
                    if now - since > self.startup_of(key.type) + self.start_timeout_s:
                        if name not in self.stuck:
                            log.warning("%s has not served for %.0f s: replacing it", name, now - since)
                            self.stuck.add(name)
                        c[3] += 1
        self.not_serving_since = waiting
        self.stuck &= waiting.keys()
        self.releasing = [(at, key) for at, key in self.releasing if at > now]
        for _, key in self.releasing:
            counts.setdefault(key, [0, 0, 0, 0])[2] += 1
        return {k: GroupState(*v) for k, v in counts.items()}

    async def _repair(self, servers: list[dict[str, Any]], gateway: dict[str, dict[str, Any]]) -> None:
        """What a failure or a restart left, put right (the module's docstring); ``gateway`` is
        updated with the instances added back."""
        listed = {i["name"] for i in servers}
        for name in [n for n in self.stale if n not in listed]:
            try:  # a start rolled back whose gateway entry stayed: its name would clash
                await self.pool.remove(name)
                self.stale.discard(name)
            except PoolActuatorError as exc:
                log.warning("removing %s from the gateway: %s", name, exc)
        for inst in servers:
            name = inst["name"]
            if name in self.retiring or (inst.get("origin") == "pool" and name not in gateway):
                continue  # a pool instance out of the gateway was retired there: it runs on, uncounted
            seen = gateway.get(name)
            key = _key_of(inst)
            if inst["state"] == "failed":
                log.warning("%s failed to start: stopping it", name)
                self._retire_later(name, key)
            elif seen is not None and seen["state"] == "draining":
                log.info("%s was left draining: retiring it", name)
                self._retire_later(name, key)
            elif seen is None and inst.get("origin") == "runtime":
                try:
                    await self._add_to_gateway(inst)
                except PoolActuatorError as exc:
                    log.warning("%s runs but the gateway refused it back (%s): stopping it", name, exc)
                    self._retire_later(name, key)
                    continue
                log.info("%s runs but the gateway did not know it: added back", name)
                gateway[name] = {"name": name, "state": "unhealthy"}  # serving once its probe passes

    async def _add_to_gateway(self, inst: dict[str, Any]) -> None:
        await self.pool.add(inst["model"], inst["type"], inst["name"], inst["http"], inst["grpc"],
                            variant=inst.get("variant"))

    async def scale(self, key: GroupKey, replicas: int) -> None:
        servers, gateway = await self._instances()
        mine = [i for i in servers if _key_of(i) == key
                and i["name"] not in self.retiring and i["name"] in gateway and i["state"] != "failed"
                and gateway[i["name"]]["state"] not in ("draining", "removed")]
        have = len(mine)
        for started_now in range(replicas - have):
            try:
                await self._start(key)
            except PoolActuatorError as exc:
                if started_now:
                    raise PartialScale(str(exc), started_now) from exc
                raise
        if replicas < have:
            # Stuck ones first, then those not serving yet, then the newest (the servers list them
            # in start order).
            position = {i["name"]: k for k, i in enumerate(servers)}
            order = sorted(mine, key=lambda i: (i["name"] not in self.stuck, gateway[i["name"]]["state"] == "healthy",
                                                -position[i["name"]]))
            for inst in order[: have - replicas]:
                self._retire_later(inst["name"], key)

    async def _start(self, key: GroupKey) -> None:
        doc: dict[str, Any] = {"model": key.model, "type": key.type, "startup_delay_s": self.startup_of(key.type)}
        if key.variant != key.model:
            doc["variant"] = key.variant
        started = await self._call("POST", self.servers, (202,), json=doc)
        try:
            await self._add_to_gateway({**started, "model": key.model, "variant": key.variant, "type": key.type})
        except PoolActuatorError:
            # Not in the pool, it would run unseen and uncounted: stop it, then report. The add may
            # have been applied with its answer lost: the gateway's entry goes too.
            name = started["name"]
            try:
                await self.pool.remove(name)
            except PoolActuatorError:
                self.stale.add(name)  # removed at a later tick
            with contextlib.suppress(PoolActuatorError):  # if not, the next tick adds it back
                await self._call("DELETE", f"{self.servers}/{name}", (200, 202, 404))
            raise
        log.info("started %s for %s", started["name"], key)

    def _retire_later(self, name: str, key: GroupKey) -> None:
        self.retiring[name] = key
        task = asyncio.get_running_loop().create_task(self._retire(name))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _retire(self, name: str) -> None:
        """Drain, remove from the gateway once empty (or after ``drain_timeout_s``), then stop;
        each stage again after a failure, backing off, until it is done."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        drained = stopped = False
        backoff = self.drain_poll_s
        try:
            while not stopped:
                try:
                    if not drained:
                        try:
                            await self.pool.drain(name)
                        except PoolActuatorError as exc:
                            if exc.status != 404:
                                raise
                        drained, deadline = True, loop.time() + self.drain_timeout_s
                    assert deadline is not None
                    body = await self.pool.remove(name)
                    if body.get("state") not in ("removed", None):
                        if loop.time() <= deadline:
                            await asyncio.sleep(self.drain_poll_s)
                            continue
                        log.warning("%s still holds %s queries after the drain timeout (%.0f s): stopping it", name,
                                    body.get("in_flight", "some"), self.drain_timeout_s)
                    try:
                        await self._call("DELETE", f"{self.servers}/{name}", (200, 202, 404))
                    except PoolActuatorError as exc:
                        if not exc.refused:
                            raise
                        log.info("%s keeps running: %s", name, exc)  # started with the pool
                    stopped = True
                except PoolActuatorError as exc:
                    log.warning("retiring %s: %s; again in %.1f s", name, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
            if self.release_s > 0:
                self.releasing.append((loop.time() + self.release_s, self.retiring[name]))
            log.info("stopped %s", name)
        finally:
            self.retiring.pop(name, None)

    async def settle(self, timeout_s: float | None = None) -> None:
        """Wait for the retirements under way (tests, and a clean exit); past ``timeout_s``,
        leave them (named in the log: the next run finds them draining and retires them)."""
        loop = asyncio.get_running_loop()
        end = None if timeout_s is None else loop.time() + timeout_s
        while self.tasks:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                log.warning("left unfinished: retiring %s", ", ".join(sorted(self.retiring)))
                for task in list(self.tasks):
                    task.cancel()
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
                return
            await asyncio.wait(list(self.tasks), timeout=left)
