"""The pool the gateway fronts: where each instance listens, and active readiness probes.

Instances come from the address file that ``kairos-servers`` writes (a JSON list with, per
instance, its name, type, model, HTTP URL and gRPC address) or from explicit V2 URLs
(``--instance TYPE=URL[,URL]``, ``http://host:port`` and/or ``grpc://host:port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from gateway.backend import Backend
from gateway.backend.base import cancelled_from_within
from gateway.config import Endpoint, check_instance_type, check_model_name
from gateway.endpoint_urls import instance_urls
from gateway.errors import ConfigError
from gateway.protocol.addresses import read_address_file


def load_address_file(path: str | Path, model: str, variants: Sequence[str] = ()) -> list[Endpoint]:
    """Instances serving ``model`` (or one of its ``variants``) listed in a ``kairos-servers``
    address file."""
    listed = read_address_file(path)
    names = {model, *variants}
    out = [
        Endpoint(a.name, a.type, a.http.rstrip("/"), a.grpc, a.model if a.model != model else None)
        for a in listed.instances
        if a.model in names
    ]
    if not out:
        raise ConfigError(f"{path}: no instance serves model {model!r}")
    return out


def parse_instance_flags(specs: Sequence[str], type_names: Collection[str] | None = None) -> list[Endpoint]:
    """``TYPE=URL[,URL]`` per instance: ``http://host:port`` and/or ``grpc://host:port``, at most
    one of each, checked as the config's are; ``type_names``: the catalogue's, when known."""
    out = []
    for i, spec in enumerate(specs):
        where = f"--instance {spec!r}"
        type_name, sep, urls = spec.partition("=")
        if not sep or not type_name or not urls:
            raise ConfigError(f"{where}: expected TYPE=URL, e.g. r5n.large=grpc://127.0.0.1:9300")
        check_model_name(type_name, f"{where}: the type")
        if type_names is not None:
            check_instance_type(type_name, type_names, f"{where}: ")
        found: dict[str, str] = {}
        for url in urls.split(","):
            scheme = "http" if url.startswith("http://") else "grpc" if url.startswith("grpc://") else None
            if scheme is None:
                raise ConfigError(f"{where}: URL {url!r} must start with http:// or grpc://")
            if scheme in found:
                raise ConfigError(f"{where}: two {scheme} URLs ({found[scheme]!r}, {url!r}); one instance has one of each")
            found[scheme] = url
        http_url, grpc_address = instance_urls(found.get("http"), found.get("grpc"), where)
        out.append(Endpoint(f"{type_name}-{i}", type_name, http_url, grpc_address))
    return out


ProbeResult = Callable[[str, bool], None]
log = logging.getLogger("kairos.gateway")


async def probe(client: Backend, model: str, timeout_s: float) -> bool:
    """Readiness of ``model`` on ``client``; False, never an exception, when the probe fails in
    any way, including a client closed under it (the instance was removed meanwhile). Only the
    caller's own cancellation goes through."""
    try:
        return await client.ready(model, timeout_s)
    except asyncio.CancelledError:
        if cancelled_from_within():
            raise
        return False  # not ours: the client's channel closed under the call
    except Exception as exc:
        log.debug("probe failed: %r", exc)
        return False


MAX_SKIP = 4  # rounds between probes of an instance that keeps failing


class HealthProber:
    """Probes every instance's readiness on a timer and reports each result by instance name.
    ``clients`` is read at each round: the pool's own live mapping, as instances come and go; a
    result is reported only while its instance still has the client it probed (not one removed,
    nor a new one of the same name). An instance that keeps failing is probed 1, 2, then every
    ``MAX_SKIP`` rounds after its last failure: unreachable ones cost the loop a fraction of a
    connect a round each."""

    def __init__(
        self,
        clients: Mapping[str, Backend],
        model: str,
        interval_s: float,
        on_result: ProbeResult,
    ) -> None:
        self.clients = clients
        self.model = model
        self.interval_s = interval_s
        self.timeout_s = min(interval_s, 1.0)
        self.on_result = on_result
        self._task: asyncio.Task[None] | None = None
        self._round = 0
        self._failing: dict[Backend, tuple[int, int]] = {}  # client -> (failures in a row, next round to probe)

    async def probe_all(self) -> None:
        self._round += 1
        probed = [(n, c) for n, c in self.clients.items() if self._failing.get(c, (0, 0))[1] <= self._round]
        results = await asyncio.gather(*(probe(c, self.model, self.timeout_s) for _, c in probed))
        for (name, client), ready in zip(probed, results, strict=True):
            if self.clients.get(name) is not client:
                continue
            if ready:
                self._failing.pop(client, None)
            else:
                failures = self._failing.get(client, (0, 0))[0] + 1
                self._failing[client] = (failures, self._round + min(1 << (failures - 1), MAX_SKIP))
            self.on_result(name, ready)
        if len(self._failing) > len(self.clients):  # clients removed
            present = set(map(id, self.clients.values()))
            self._failing = {c: f for c, f in self._failing.items() if id(c) in present}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.probe_all()
            except Exception:  # a bug in a result's handling: the probes must go on, or no instance returns
                log.exception("probe round for %s failed", self.model)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
