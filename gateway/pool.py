"""The pool the gateway fronts: where each instance listens, and active readiness probes.

Instances come from the address file that ``kairos-servers`` writes (a JSON list with, per
instance, its name, type, model, HTTP URL and gRPC address) or from explicit V2 URLs
(``--instance TYPE=URL[,URL]``, ``http://host:port`` and/or ``grpc://host:port``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway.backend import Backend
from gateway.config import Endpoint, check_model_name
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


def parse_instance_flags(specs: Sequence[str]) -> list[Endpoint]:
    """``TYPE=URL[,URL]`` per instance: ``http://host:port`` and/or ``grpc://host:port``."""
    out = []
    for i, spec in enumerate(specs):
        type_name, sep, urls = spec.partition("=")
        if not sep or not type_name or not urls:
            raise ConfigError(f"--instance {spec!r}: expected TYPE=URL, e.g. r5n.large=grpc://127.0.0.1:9300")
        check_model_name(type_name, f"--instance {spec!r}: the type")
        http_url = grpc_address = None
        for url in urls.split(","):
            if url.startswith(("http://", "https://")):
                http_url = url.rstrip("/")
            elif url.startswith("grpc://"):
                grpc_address = url.removeprefix("grpc://")
            else:
                raise ConfigError(f"--instance {spec!r}: URL {url!r} must start with http:// or grpc://")
        out.append(Endpoint(f"{type_name}-{i}", type_name, http_url, grpc_address))
    return out


ProbeResult = Callable[[str, bool], None]


class HealthProber:
    """Probes every instance's readiness on a timer and reports each result by instance name.
    ``clients`` is read at each round: the pool's own live mapping, as instances come and go."""

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

    async def probe_all(self) -> None:
        names = list(self.clients)
        results = await asyncio.gather(*(self.clients[n].ready(self.model, self.timeout_s) for n in names))
        for name, ready in zip(names, results, strict=True):
            self.on_result(name, ready)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_all()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
