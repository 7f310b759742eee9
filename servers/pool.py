"""Plan a pool from the config and serve a group of instances on this process's event loop.

Instance ``i`` (pool order) listens on ``http_port + i`` and ``grpc_port + i``; a base port of
0 gives every instance a free port picked by the OS. Each instance has its own aiohttp site
and grpc.aio server, all on the one loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web

from gateway.config import Config
from gateway.errors import ConfigError, KairosError
from gateway.profiles import ProfileSet, load_profiles
from gateway.protocol.addresses import InstanceAddress
from servers.grpc import GrpcFrontEnd
from servers.http import HttpFrontEnd
from servers.instance import Instance

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# How long a stopping server lets in-flight queries finish beyond the work it has queued (rm2's
# largest batch takes near 0.9 s), and the most it waits in all.
STOP_GRACE_S = 1.0
MAX_STOP_WAIT_S = 30.0


def stop_grace_s(instance: Instance) -> float:
    """The queries it has accepted finish: its queued work plus the grace, at most MAX_STOP_WAIT_S."""
    return min(instance.work_left_s() + STOP_GRACE_S, MAX_STOP_WAIT_S)


class StartupError(KairosError):
    """An instance could not start (typically: its port is taken)."""


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything a process needs to start one instance (picklable, for worker processes)."""

    index: int
    name: str
    type: str
    model: str
    host: str
    http_port: int  # 0: any free port
    grpc_port: int
    inputs_of: str | None = None  # the model whose inputs it takes, when ``model`` is its variant


@dataclass(frozen=True, slots=True)
class PoolOptions:
    seed: int = 0
    latency_scale: float = 1.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timers: str = "timerfd"  # how an instance waits out a service time (gateway.precise_timers)
    profiles: str | None = None  # the config's own profiles (a file or directory), over the shipped

    def profile_set(self) -> ProfileSet:
        shipped = load_profiles()
        return shipped.merged(load_profiles(Path(self.profiles))) if self.profiles is not None else shipped


def plan_instances(config: Config) -> list[InstanceSpec]:
    """One spec per instance, model by model in pool order, named ``<type>-<k>`` (k counts within
    the type; with several models, ``<model>-<type>-<k>``)."""
    planned = [(m, t, v) for m in config.models for t, v in m.instance_variants()]
    n = len(planned)
    http0, grpc0 = config.servers.http_port, config.servers.grpc_port
    for key, base in (("http_port", http0), ("grpc_port", grpc0)):
        if base and base + n - 1 > 65535:
            raise ConfigError(f"servers.{key}: {n} instances from port {base} run past 65535")
    if http0 and grpc0 and http0 < grpc0 + n and grpc0 < http0 + n:
        raise ConfigError(
            f"servers.http_port and servers.grpc_port: the ranges {http0}..{http0 + n - 1} and "
            f"{grpc0}..{grpc0 + n - 1} overlap; expected {n} ports each, disjoint"
        )
    several = len(config.models) > 1
    seen: Counter[tuple[str, str]] = Counter()
    specs = []
    for i, (m, t, v) in enumerate(planned):
        k = seen[v, t]
        # An instance of a variant serves the variant's name (and the model's inputs).
        specs.append(
            InstanceSpec(
                index=i,
                name=f"{v}-{t}-{k}" if several or v != m.name else f"{t}-{k}",
                type=t,
                model=v,
                host=config.host,
                http_port=http0 + i if http0 else 0,
                grpc_port=grpc0 + i if grpc0 else 0,
                inputs_of=m.name if v != m.name else None,
            )
        )
        seen[v, t] += 1
    return specs


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"{what}: cannot listen on {host_port(host, port)}: {exc.strerror or exc}"
        ) from None
    return sock


@dataclass(frozen=True)
class Reserved:
    """Ports taken for an instance that starts later: bound, not listening, so a client meanwhile
    gets "connection refused", as from a machine still booting."""

    http: socket.socket
    grpc: socket.socket

    @classmethod
    def on(cls, host: str) -> Reserved:
        return cls(_listen(host, 0, "reserved http"), _listen(host, 0, "reserved grpc"))

    def close(self) -> None:
        self.http.close()
        self.grpc.close()


@dataclass
class _Running:
    instance: Instance
    runner: web.AppRunner
    server: grpc.aio.Server
    address: InstanceAddress


@dataclass
class LocalGroup:
    """A group of instances served by the running event loop."""

    specs: list[InstanceSpec]
    options: PoolOptions
    profiles: ProfileSet
    pid: int = 0
    running: list[_Running] = field(default_factory=list)

    async def start(self) -> list[InstanceAddress]:
        """Start every instance; on any failure stop those already started and raise StartupError."""
        try:
            for spec in self.specs:
                self.running.append(await self._start_one(spec))
        except BaseException:
            await self.stop()
            raise
        return [r.address for r in self.running]

    async def start_one(self, spec: InstanceSpec, reserved: Reserved | None = None) -> InstanceAddress:
        """Start one more instance (on ``reserved`` ports, if given) while the others serve."""
        running = await self._start_one(spec, reserved)
        self.running.append(running)
        return running.address

    async def stop_one(self, name: str) -> bool:
        """Stop the instance named ``name`` (in-flight queries finish first); False if none."""
        for r in self.running:
            if r.address.name == name:
                self.running.remove(r)
                await self._stop(r)
                return True
        return False

    async def _start_one(self, spec: InstanceSpec, reserved: Reserved | None = None) -> _Running:
        opts = self.options
        instance = Instance(
            index=spec.index,
            name=spec.name,
            model=spec.model,
            instance_type=spec.type,
            profile=self.profiles.get(spec.model, spec.type),
            seed=opts.seed,
            latency_scale=opts.latency_scale,
            timers=opts.timers,
            inputs_of=spec.inputs_of,
        )
        what = f"instance {spec.index} ({spec.name})"
        sock = reserved.http if reserved is not None else _listen(spec.host, spec.http_port, f"{what} http")
        # No access log: one line per query would cost more CPU than serving it.
        runner = web.AppRunner(
            HttpFrontEnd(instance, opts.max_body_bytes).app(), access_log=None, shutdown_timeout=MAX_STOP_WAIT_S
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        http_port = sock.getsockname()[1]

        server = grpc.aio.server(
            options=[
                # Without this, gRPC on Linux binds a port that is already in use and splits traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", opts.max_body_bytes),
                ("grpc.max_send_message_length", opts.max_body_bytes),
            ]
        )
        server.add_generic_rpc_handlers((GrpcFrontEnd(instance).handler(),))
        grpc_wanted = spec.grpc_port
        if reserved is not None:
            grpc_wanted = reserved.grpc.getsockname()[1]
            reserved.grpc.close()  # the port was held (refusing connections) until now
        try:
            grpc_port = server.add_insecure_port(host_port(spec.host, grpc_wanted))
        except RuntimeError as exc:
            await runner.cleanup()
            raise StartupError(
                f"{what} grpc: cannot listen on {host_port(spec.host, spec.grpc_port)}: {exc}"
            ) from None
        await server.start()
        address = InstanceAddress(
            index=spec.index,
            name=spec.name,
            type=spec.type,
            model=spec.model,
            http=f"http://{host_port(spec.host, http_port)}",
            grpc=host_port(spec.host, grpc_port),
            pid=self.pid,
        )
        return _Running(instance, runner, server, address)

    async def stop(self) -> None:
        """Stop accepting, let the queries accepted finish (``stop_grace_s``), close everything."""
        running, self.running = self.running, []
        await asyncio.gather(*(self._stop(r) for r in running), return_exceptions=True)

    @staticmethod
    async def _stop(r: _Running) -> None:
        # Both return once what they hold has finished; aiohttp's wait is bounded by the runner's
        # shutdown_timeout (MAX_STOP_WAIT_S), gRPC's by the grace.
        await asyncio.gather(r.server.stop(stop_grace_s(r.instance)), r.runner.cleanup(), return_exceptions=True)


def describe(specs: list[InstanceSpec]) -> str:
    """``1 x g4dn.xlarge, 13 x r5n.large`` (pool order); with several models, per model:
    ``rm2: 1 x g4dn.xlarge; dien: 2 x r5n.large``."""
    models = list(dict.fromkeys(s.model for s in specs))
    parts = []
    for model in models:
        counts = Counter(s.type for s in specs if s.model == model)
        pool = ", ".join(f"{n} x {t}" for t, n in counts.items())
        parts.append(pool if len(models) == 1 else f"{model}: {pool}")
    return "; ".join(parts)
