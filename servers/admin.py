"""``kairos-servers``' admin API: start and stop emulated instances at run time, so that a control
loop can actuate the emulated pool for real.

    GET    /admin/instances           {"instances": [{name, model, variant, type, http, grpc, state, origin}]}
    POST   /admin/instances           {"model", "type", "variant"?, "name"?, "startup_delay_s"?} -> 202
    DELETE /admin/instances/{name}    stops it (in-flight queries finish first)

A new instance gets its ports at once (returned in the answer) but listens only after
``startup_delay_s`` (a real instance takes seconds to minutes to load its model): until then
connections are refused and its state is ``starting``, then ``ready`` (or ``failed``). An instance
of a ``variant`` of the model (one the config lists) serves the variant's name with the model's
inputs, as the pool's variant instances do; ``variant`` is the model's own name otherwise. ``origin``
says ``pool`` for the instances started with the pool (they stop only with it; one whose worker
process died is listed ``failed``, and a DELETE forgets it), ``runtime`` for the others. Instances started at run time live in the launcher's process. The same loopback /
bearer-token rules as the gateway's admin API (``gateway.admin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.admin import admin_app, instance_name, json_object, json_response, text_field
from gateway.errors import BadRequest, Conflict, InstanceNotFound, ProfileError
from gateway.profiles import ProfileSet
from gateway.protocol.addresses import InstanceAddress
from gateway.protocol.limits import check_name
from servers.pool import InstanceSpec, LocalGroup, Reserved, host_port

MAX_STARTUP_DELAY_S = 3600.0
log = logging.getLogger("kairos.servers")


@dataclass
class _Managed:
    address: InstanceAddress
    state: str  # starting, ready, failed
    task: asyncio.Task[None] | None = None


class ServersAdmin:
    def __init__(
        self,
        group: LocalGroup,
        profiles: ProfileSet,
        host: str,
        existing: Callable[[], list[InstanceAddress]],
        changed: Callable[[list[InstanceAddress]], None],
        token: str | None,
        lost: dict[str, InstanceAddress] | None = None,
        variants: Mapping[str, Sequence[str]] | None = None,
        max_started: int = 1024,
    ) -> None:
        """``group``: where run-time instances are served; ``existing``: the instances started
        at launch (listed, and their names taken); ``changed``: told the run-time instances after
        every change (the launcher rewrites its address file); ``lost``: the launcher's pool
        instances whose worker died (listed ``failed`` until deleted); ``variants``: per model, its
        variants other than itself (the config's); ``max_started``: run-time instances at once."""
        self.max_started = max_started
        self.group = group
        self.profiles = profiles
        self.host = host
        self.existing = existing
        self.changed = changed
        self.lost = lost if lost is not None else {}
        self.variants = {m: tuple(vs) for m, vs in (variants or {}).items()}
        # An instance of a variant serves the variant's name: the model it belongs to.
        self.model_of = {v: m for m, vs in self.variants.items() for v in vs}
        self.managed: dict[str, _Managed] = {}
        self._next_index = 100_000  # apart from the launch-time instances' indices
        self.app = admin_app(token)
        add = self.app.router.add_route
        add("GET", "/admin/instances", self.list)
        add("POST", "/admin/instances", self.start)
        add("DELETE", "/admin/instances/{name}", self.stop)

    def _describe(self, address: InstanceAddress, state: str, origin: str = "runtime") -> dict[str, Any]:
        return {
            "name": address.name, "model": self.model_of.get(address.model, address.model), "variant": address.model,
            "type": address.type, "http": address.http, "grpc": address.grpc, "state": state, "origin": origin,
        }  # fmt: skip

    async def list(self, request: web.Request) -> web.Response:
        launched = [self._describe(a, "ready", "pool") for a in self.existing()]
        lost = [self._describe(a, "failed", "pool") for a in self.lost.values()]
        managed = [self._describe(m.address, m.state) for m in self.managed.values()]
        return json_response(200, {"instances": launched + lost + managed})

    async def start(self, request: web.Request) -> web.Response:
        doc = json_object(await request.read(), ("model", "variant", "type", "name", "startup_delay_s"))
        model = check_name(text_field(doc, "model", True) or "", "model")
        type_name = check_name(text_field(doc, "type", True) or "", "type")
        variant = text_field(doc, "variant")
        if variant is not None and variant != model and variant not in self.variants.get(model, ()):
            known = ", ".join(self.variants.get(model, ())) or "none"
            raise BadRequest(f"variant: {variant!r} is not a variant of {model!r} in the config (its variants: {known})")
        served = variant or model  # what the instance serves: a variant under its own name
        try:
            self.profiles.get(served, type_name)
        except ProfileError as exc:
            raise BadRequest(f"cannot emulate model {served!r} on {type_name!r}: {exc}") from None
        delay = doc.get("startup_delay_s", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_STARTUP_DELAY_S:
            raise BadRequest(f"startup_delay_s: expected seconds in [0, {MAX_STARTUP_DELAY_S:g}], got {delay!r}")
        taken = {a.name for a in self.existing()} | set(self.lost) | set(self.managed)
        name = text_field(doc, "name")
        if name is None:
            k = 0
            while f"{served}-{type_name}-{k}" in taken:
                k += 1
            name = f"{served}-{type_name}-{k}"
        name = check_name(name, "name")
        if name in taken:
            raise Conflict(f"an instance named {name!r} is already running")
        if len(self.managed) >= self.max_started:  # each holds two sockets from its start
            raise Conflict(f"{len(self.managed)} instances started at run time, servers.max_started; stop one first")
        reserved = Reserved.on(self.host)
        self._next_index += 1
        spec = InstanceSpec(self._next_index, name, type_name, served, self.host, 0, 0,
                            inputs_of=model if served != model else None)
        address = InstanceAddress(
            index=spec.index, name=name, type=type_name, model=served,
            http=f"http://{host_port(self.host, reserved.http.getsockname()[1])}",
            grpc=host_port(self.host, reserved.grpc.getsockname()[1]), pid=self.group.pid,
        )  # fmt: skip
        managed = _Managed(address, "starting")
        self.managed[name] = managed
        managed.task = asyncio.get_running_loop().create_task(self._boot(managed, spec, reserved, float(delay)))
        self._changed()
        return json_response(202, self._describe(address, managed.state))

    async def _boot(self, managed: _Managed, spec: InstanceSpec, reserved: Reserved, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            managed.address = await self.group.start_one(spec, reserved)
            managed.state = "ready"
        except asyncio.CancelledError:
            reserved.close()
            raise
        except Exception as exc:  # a port taken meanwhile, say: reported, the launcher goes on
            reserved.close()
            managed.state = "failed"
            log.warning("instance %s failed to start: %s", spec.name, exc)
        self._changed()

    async def stop(self, request: web.Request) -> web.Response:
        name = instance_name(request)
        gone = self.lost.pop(name, None)
        if gone is not None:  # its worker died: nothing runs, it is forgotten
            return json_response(200, self._describe(gone, "stopped", "pool"))
        managed = self.managed.pop(name, None)
        if managed is None:
            if any(a.name == name for a in self.existing()):
                raise Conflict(f"instance {name!r} was started with the pool; only instances started here stop here")
            raise InstanceNotFound(f"no instance named {name!r}")
        if managed.task is not None and not managed.task.done():
            managed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await managed.task
        await self.group.stop_one(name)
        self._changed()
        return json_response(200, self._describe(managed.address, "stopped"))

    def _changed(self) -> None:
        self.changed([m.address for m in self.managed.values() if m.state == "ready"])

    async def close(self) -> None:
        for m in self.managed.values():
            if m.task is not None and not m.task.done():
                m.task.cancel()
        await asyncio.gather(*(m.task for m in self.managed.values() if m.task), return_exceptions=True)
