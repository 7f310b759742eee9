"""``kairos-servers``: start the pool of emulated V2 instances described by ``config.json``.

Writes the instance addresses to ``servers.address_file`` (see ``gateway.protocol.addresses``),
prints one ``kairos-servers ready: ...`` line on stdout once every instance answers ready on
HTTP and gRPC, and serves until SIGINT or SIGTERM, then stops cleanly and exits 0.
Exit 2: a configuration or flag error (one line on stderr). Exit 1: start-up failed (a port is
taken, an instance never became ready).
"""

from __future__ import annotations

from gateway.grpc_runtime import apply_defaults

apply_defaults()  # this entry point's process setting, before anything imports grpc

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.admin import admin_token
from gateway.config import Config, load_config
from gateway.errors import ConfigError, KairosError, ProfileError
from gateway.gc_freeze import freeze_startup_objects
from gateway.precise_timers import TIMERS
from gateway.profiles import ProfileSet
from gateway.protocol.addresses import AddressList, InstanceAddress, remove_address_file, write_address_file
from servers.admin import ServersAdmin
from servers.pool import DEFAULT_MAX_BODY_BYTES, LocalGroup, PoolOptions, describe, host_port, plan_instances
from servers.ready import wait_ready
from servers.workers import Worker, WorkerSet, run_loop

PROG = "kairos-servers"


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


MAX_LATENCY_SCALE = 1000.0  # beyond it a batch takes hours: an instance that never answers


def _latency_scale(text: str) -> float:
    expected = f"expected a number in [0, {MAX_LATENCY_SCALE:g}]"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not 0 <= value <= MAX_LATENCY_SCALE:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return value


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Start a pool of emulated V2 inference instances.")
    p.add_argument("--config", default="config.json", help="pool description (default: %(default)s)")
    p.add_argument(
        "--address-file", help="where to write the instance addresses (default: servers.address_file)"
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        help="spread instances over K processes (default: servers.workers)",
    )
    p.add_argument("--seed", type=_int_at_least(0), help="service-time seed (default: servers.seed)")
    p.add_argument(
        "--http-port",
        type=_int_at_least(0),
        help="first HTTP port; 0 = free ports (default: servers.http_port)",
    )
    p.add_argument(
        "--grpc-port",
        type=_int_at_least(0),
        help="first gRPC port; 0 = free ports (default: servers.grpc_port)",
    )
    lat = p.add_mutually_exclusive_group()
    lat.add_argument(
        "--latency-scale", type=_latency_scale, default=1.0, help="multiply service times (default: 1)"
    )
    lat.add_argument(
        "--zero-latency", action="store_true", help="serve instantly (same as --latency-scale 0)"
    )
    p.add_argument(
        "--timers",
        choices=TIMERS,
        default="timerfd",
        help="how an instance waits out a service time: a Linux timerfd, to tens of µs, or the "
        "event loop's timers, in whole ms (the fallback where there is no timerfd) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_int_at_least(1024),
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request accepted, HTTP body or gRPC message (default: %(default)s)",
    )
    p.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default: %(default)s)"
    )
    p.add_argument(
        "--ready-timeout", type=_non_negative_float, default=30.0, help="seconds to wait for readiness"
    )
    return p


def _apply_flags(config: Config, args: argparse.Namespace) -> Config:
    s = config.servers
    servers = dataclasses.replace(
        s,
        address_file=args.address_file if args.address_file is not None else s.address_file,
        workers=args.workers if args.workers is not None else s.workers,
        seed=args.seed if args.seed is not None else s.seed,
        http_port=args.http_port if args.http_port is not None else s.http_port,
        grpc_port=args.grpc_port if args.grpc_port is not None else s.grpc_port,
    )
    return dataclasses.replace(config, servers=servers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _apply_flags(load_config(args.config), args)
        specs = plan_instances(config)
        profiles = config.profile_set()
        for spec in specs:  # a missing profile is a config error: say so before starting anything
            profiles.get(spec.model, spec.type)
    except (ConfigError, ProfileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    options = PoolOptions(
        seed=config.servers.seed,
        latency_scale=0.0 if args.zero_latency else args.latency_scale,
        max_body_bytes=args.max_body_bytes,
        timers=args.timers,
        profiles=str(config.profiles) if config.profiles is not None else None,
    )
    try:
        launcher = Launcher(config, options, args.loop == "uvloop", args.ready_timeout)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_loop(launcher.run, args.loop == "uvloop")
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


class Launcher:
    def __init__(
        self, config: Config, options: PoolOptions, use_uvloop: bool, ready_timeout_s: float
    ) -> None:
        self.config = config
        self.options = options
        self.use_uvloop = use_uvloop
        self.ready_timeout_s = ready_timeout_s
        self.specs = plan_instances(config)
        self.address_file = Path(config.servers.address_file)
        self.local: LocalGroup | None = None
        self.workers: WorkerSet | None = None
        self.launched: list[InstanceAddress] = []
        self.lost: dict[str, InstanceAddress] = {}  # pool instances whose worker died
        self._added: list[InstanceAddress] = []  # run-time instances serving
        self._reaping: set[asyncio.Task[None]] = set()
        self.admin: ServersAdmin | None = None
        self._admin_runner: web.AppRunner | None = None
        # Checked before anything starts: an admin API off loopback needs its token.
        self.admin_token = admin_token(config.servers.admin_host) if config.servers.admin_port is not None else None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self._start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done() and not stopping.done():
                starting.result()  # re-raise a start-up failure
                await stopping
            else:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            return 0
        except (KairosError, OSError) as exc:  # OSError: the admin port taken, say
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        finally:
            stopping.cancel()
            await self._stop()
            remove_address_file(self.address_file, os.getpid())

    async def _start(self) -> None:
        workers = min(self.config.servers.workers, len(self.specs))
        addresses: list[InstanceAddress]
        profiles = self.options.profile_set()
        if workers <= 1:
            self.local = LocalGroup(self.specs, self.options, profiles, pid=os.getpid())
            addresses = await self.local.start()
        else:
            self.workers = WorkerSet(self.specs, self.options, workers, self.use_uvloop)
            addresses = await self.workers.start()
            self.workers.watch(self._worker_exited)
        freeze_startup_objects()
        missing = await wait_ready(addresses, self.ready_timeout_s)
        if missing:
            names = ", ".join(a.name for a in missing)
            raise KairosError(f"not ready after {self.ready_timeout_s:g} s: {names}")
        self.launched = list(addresses)
        self._write_addresses([])
        admin = await self._start_admin(profiles)
        scale = "" if self.options.latency_scale == 1.0 else f", latency x{self.options.latency_scale:g}"
        print(
            f"{PROG} ready: {len(addresses)} instances of {self._models} ({describe(self.specs)}) "
            f"in {workers} process{'es' if workers > 1 else ''}{scale}; addresses in {self.address_file}{admin}",
            flush=True,
        )

    @property
    def _models(self) -> str:
        return ",".join(m.name for m in self.config.models)

    def _write_addresses(self, added: list[InstanceAddress]) -> None:
        self._added = list(added)
        instances = (*self.launched, *added)
        write_address_file(self.address_file, AddressList(model=self._models, pid=os.getpid(), instances=instances))

    async def _start_admin(self, profiles: ProfileSet) -> str:
        """The admin API, when configured; returns what the ready line says of it."""
        s = self.config.servers
        if s.admin_port is None:
            return ""
        # Run-time instances live in this process: with the pool in workers, in a group of their own.
        group = self.local or LocalGroup([], self.options, profiles, pid=os.getpid())
        self.local = group
        self.admin = ServersAdmin(
            group, profiles, self.config.host, lambda: self.launched, self._write_addresses, self.admin_token,
            lost=self.lost, variants={m.name: [v for v in m.variant_names if v != m.name] for m in self.config.models},
            max_started=s.max_started,
        )
        self._admin_runner = web.AppRunner(self.admin.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._admin_runner.setup()
        await web.TCPSite(self._admin_runner, s.admin_host, s.admin_port, reuse_address=True).start()
        port = int(self._admin_runner.addresses[0][1])
        return f"; admin http://{host_port(s.admin_host, port)}"

    def _worker_exited(self, worker: Worker) -> None:
        # Keep serving with the rest: tests kill workers on purpose to emulate failed instances.
        # Its instances leave the address file and are listed ``failed`` by the admin API.
        names = {s.name for s in worker.specs}
        self.lost.update((a.name, a) for a in self.launched if a.name in names)
        self.launched = [a for a in self.launched if a.name not in names]
        self._write_addresses(self._added)
        self._reaping.add(asyncio.get_running_loop().create_task(self._reap(worker, sorted(names))))

    async def _reap(self, worker: Worker, names: list[str]) -> None:
        await asyncio.to_thread(worker.process.join, 5.0)  # it has exited: this collects its code
        print(
            f"{PROG}: worker pid {worker.process.pid} exited (code {worker.process.exitcode}); "
            f"instances gone: {', '.join(names)}",
            file=sys.stderr,
            flush=True,
        )
        self._reaping.discard(asyncio.current_task())

    async def _stop(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.local is not None:
            await self.local.stop()
        if self.workers is not None:
            await self.workers.stop()


if __name__ == "__main__":
    sys.exit(main())
