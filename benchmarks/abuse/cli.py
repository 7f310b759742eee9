"""``python -m benchmarks.abuse``: the abuse suite against real processes on loopback.

One emulated pool (``kairos-servers``, a small rm2 pool) for the whole run. Per gRPC server kind
(``--servers``), the gRPC attacks; then the HTTP/1.1 attacks once, on the first kind's gateway
(the HTTP front end is the same aiohttp server in both). Every row gets a fresh gateway process,
so that what one attack leaves behind (held streams, memory) does not land on the next row; the
unloaded baseline is the same legitimate client on a fresh gateway with no attack.

Per row: the attacker runs in its own process (``benchmarks.abuse.worker``) for ``--duration``
s, the legitimate client sends the same ``--duration`` s of arrivals beside it, and the gateway's
CPU and memory are sampled from /proc until both are done.

Exit codes: 0 the suite ran (the verdicts are in the table); 2 bad usage; 1 the pool or a gateway
could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

import orjson

from benchmarks.abuse.attacks import ATTACKS, GRPC, HTTP, Target
from benchmarks.abuse.measure import LegitConfig, ProcSampler, Worker, legit_load
from benchmarks.abuse.report import Baseline, Row, SuiteReport, Targets, render_markdown
from benchmarks.loadgen.runner import run_async
from benchmarks.processes import GatewayProcess, ServersProcess, start_gateway, start_servers
from gateway.errors import ConfigError
from gateway.profiles import load_catalogue
from gateway.workload.batch_mix import parse_batch_mix

PROG = "python -m benchmarks.abuse"
SERVER_KINDS = ("native", "grpcio")
HOST = "127.0.0.1"  # loopback only: the attacks never leave this machine
MiB = 1024 * 1024
HARD_SLACK_S = 15.0  # a worker still running this long past duration + grace is killed
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL: a gateway an attack wedged must not stall the suite


@dataclass(frozen=True)
class SuiteSettings:
    servers: tuple[str, ...] = SERVER_KINDS
    attacks: tuple[str, ...] = tuple(ATTACKS)
    duration_s: float = 10.0
    grace_s: float = 1.0
    legit: LegitConfig = field(default_factory=LegitConfig)
    pool: tuple[tuple[str, int], ...] = (("r5n.large", 4),)
    max_body_bytes: int = 16 * MiB  # the gateway's default
    # Each attack also aimed at a second gateway (a decoy) while the legitimate client uses the
    # first: what the attack's traffic alone costs the client on this host.
    control: bool = False
    targets: Targets = field(default_factory=Targets)
    workdir: Path | None = None  # None: a temporary directory, removed afterwards

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": list(self.servers),
            "attacks": list(self.attacks),
            "duration_s": self.duration_s,
            "grace_s": self.grace_s,
            "rate": self.legit.rate,
            "model": self.legit.model,
            "qos_ms": self.legit.qos_ms,
            "batch_mix": self.legit.batch_mix,
            "legit_timeout_s": self.legit.timeout_s,
            "pool": ",".join(f"{t}={n}" for t, n in self.pool),
            "max_body_bytes": self.max_body_bytes,
            "control": self.control,
        }


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """Lines on stderr: which attack, which server, how long; a ticking line while one runs."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def clock(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def say(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + f"[{self.clock()}] {text}\n")
        self.stream.flush()

    @contextlib.asynccontextmanager
    async def ticking(self, label: str, total_s: float) -> Any:
        start = time.monotonic()

        async def tick() -> None:
            interval = 0.5 if self.tty else 5.0
            while True:
                await asyncio.sleep(interval)
                line = f"[{self.clock()}] {label}: {time.monotonic() - start:4.1f} s / {total_s:g} s"
                self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
                self.stream.flush()

        task = asyncio.create_task(tick())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- the run ----------------------------------------------------------------------------------


def write_config(directory: Path, settings: SuiteSettings) -> tuple[Path, Path]:
    address_file = directory / "instances.json"
    doc = {
        "model": settings.legit.model,
        "qos_ms": settings.legit.qos_ms,
        "host": HOST,
        "pool": [{"type": t, "count": n} for t, n in settings.pool],
        "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(address_file)},
        "gateway": {"http_port": 0, "grpc_port": 0, "max_body_bytes": settings.max_body_bytes},
    }
    path = directory / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path, address_file


class Suite:
    def __init__(self, settings: SuiteSettings, directory: Path, progress: Progress) -> None:
        self.s = settings
        self.dir = directory
        self.progress = progress
        self.config, self.address_file = write_config(directory, settings)
        self.servers: ServersProcess | None = None
        self.report = SuiteReport(settings.to_json(), targets=settings.targets)

    async def gateway(self, kind: str) -> GatewayProcess:
        args = ["--address-file", str(self.address_file), "--grpc-server", kind,
                "--http-port", "0", "--grpc-port", "0"]  # fmt: skip
        return await asyncio.to_thread(start_gateway, self.config, args, self.dir, 30.0)

    @staticmethod
    async def stop(gw: GatewayProcess) -> str:
        started = time.monotonic()
        rc = await asyncio.to_thread(gw.stop, signal.SIGTERM, STOP_TIMEOUT_S)
        if rc == -signal.SIGKILL:
            return f"killed after {STOP_TIMEOUT_S:g} s (no exit on SIGTERM)"
        return f"exit {rc} in {time.monotonic() - started:.1f} s"

    def url(self, gw: GatewayProcess, front: str) -> str:
        return f"grpc://{gw.grpc}" if front == GRPC else f"http://{gw.http}"

    async def baseline(self, kind: str, front: str) -> Baseline:
        server = kind if front == GRPC else "aiohttp"
        gw = await self.gateway(kind)
        try:
            sampler = ProcSampler(gw.pid)
            sampler.start()
            async with self.progress.ticking(f"baseline {server} {front}", self.s.duration_s):
                legit = await legit_load(self.url(gw, front), self.s.duration_s, self.s.legit)
            usage = await sampler.stop()
        finally:
            await self.stop(gw)
        b = Baseline(front, server, legit, usage)
        self.progress.say(
            f"baseline {server} {front}: p99 {legit.p99_ms or 0:.2f} ms, {legit.errors} errors of {legit.scheduled}"
        )
        self.report.baselines.append(b)
        return b

    async def row(self, name: str, kind: str, baseline_p99: float | None, label: str, control: bool = False) -> Row:
        cls = ATTACKS[name]
        front = cls.front
        server = kind if front == GRPC else "aiohttp"
        started = time.monotonic()
        gw = await self.gateway(kind)
        decoy = await self.gateway(kind) if control else None
        gateway_exit: int | None = None
        try:
            attacked = decoy or gw
            grpc_port = int(attacked.grpc.rsplit(":", 1)[1])
            http_port = int(attacked.http.rsplit(":", 1)[1])
            target = Target(HOST, grpc_port, http_port, self.s.legit.model, self.s.max_body_bytes)
            worker = await Worker.start(
                ["--attack", name, "--host", target.host, "--grpc-port", str(grpc_port),
                 "--http-port", str(http_port), "--model", target.model,
                 "--max-message-bytes", str(target.max_message_bytes),
                 "--duration", str(self.s.duration_s), "--grace", str(self.s.grace_s)],
                self.dir / f"worker-{name}-{kind}.stderr",
            )  # fmt: skip
            sampler = ProcSampler(gw.pid)
            sampler.start()
            worker.go()
            hard_s = self.s.duration_s + self.s.grace_s + HARD_SLACK_S
            try:
                async with self.progress.ticking(label, self.s.duration_s):
                    legit, outcome = await asyncio.gather(
                        legit_load(self.url(gw, front), self.s.duration_s, self.s.legit),
                        worker.outcome(name, front, hard_s),
                    )
            finally:
                await worker.kill()
            usage = await sampler.stop()
            gateway_exit = gw.returncode
        finally:
            stop = await self.stop(gw)
            if decoy is not None:
                await self.stop(decoy)
        r = Row(
            attack=name, front=front, server=server, gateway_grpc_server=kind, legit=legit,
            baseline_p99_ms=baseline_p99, usage=usage, abuser=outcome, gateway_exit=gateway_exit,
            gateway_stop=stop, elapsed_s=time.monotonic() - started, targets=self.s.targets, control=control,
            attacked=f"{HOST}:{grpc_port if front == GRPC else http_port}",
        )  # fmt: skip
        self.report.rows.append(r)
        return r

    async def run(self) -> SuiteReport:
        started = time.monotonic()
        self.report.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.report.host = {"cpus": os.cpu_count(), "load_start": round(os.getloadavg()[0], 2)}
        self.servers = await asyncio.to_thread(
            start_servers, self.config, self.address_file, (), self.dir, 60.0
        )
        try:
            grpc_attacks = [a for a in self.s.attacks if ATTACKS[a].front == GRPC]
            http_attacks = [a for a in self.s.attacks if ATTACKS[a].front == HTTP]
            plan = [(a, kind) for kind in self.s.servers for a in grpc_attacks]
            plan += [(a, self.s.servers[0]) for a in http_attacks]
            done = 0
            for front, kinds, names in (
                (GRPC, self.s.servers, grpc_attacks),
                (HTTP, self.s.servers[:1], http_attacks),
            ):
                if not names:
                    continue
                for kind in kinds:
                    base = await self.baseline(kind, front)
                    for name in names:
                        done += 1
                        server = kind if front == GRPC else "aiohttp"
                        label = f"[{done}/{len(plan)}] {name} on {server}"
                        self.progress.say(f"{label}: attacking for {self.s.duration_s:g} s")
                        r = await self.row(name, kind, base.legit.p99_ms, label)
                        verdict = "pass" if r.passed else "FAIL: " + ", ".join(r.failures())
                        self.progress.say(f"{label}: {verdict} ({r.elapsed_s:.1f} s)")
                        if self.s.control:
                            self.progress.say(f"{label}: the same attack at a decoy gateway (control)")
                            c = await self.row(name, kind, base.legit.p99_ms, label + " (control)", control=True)
                            self.progress.say(f"{label} (control): legit p99 {c.legit.p99_ms or 0:.2f} ms "
                                              f"({c.elapsed_s:.1f} s)")
        finally:
            await asyncio.to_thread(self.servers.stop)
        self.report.wall_s = time.monotonic() - started
        self.report.host["load_end"] = round(os.getloadavg()[0], 2)
        return self.report


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="kairos-abuse-") as tmp:
            yield Path(tmp)


async def run_suite(settings: SuiteSettings, stream: TextIO | None = None) -> SuiteReport:
    """Run the suite (the Python API behind the command); progress on ``stream`` (stderr)."""
    with _workdir(settings.workdir) as directory:
        return await Suite(settings, directory, Progress(stream or sys.stderr)).run()


# -- the command ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(f"{n} ({c.front})" for n, c in ATTACKS.items())
    p = _Parser(
        prog=PROG,
        description="Bounded, loopback-only abuse of the gateway's front ends, with a legitimate client "
        "beside each attack. Attacks: " + names + ".",
    )
    p.add_argument(
        "--servers", default=",".join(SERVER_KINDS), help="gRPC servers to attack (default: native,grpcio)"
    )
    p.add_argument("--attacks", default="all", help="comma-separated attack names (default: all)")
    p.add_argument("--list", action="store_true", help="list the attacks and exit")
    p.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="seconds per attack (default 10)"
    )
    p.add_argument("--grace", type=float, default=1.0, metavar="S",
                   help="after an attack, seconds to watch for the server cutting the attacker off (default 1)")  # fmt: skip
    p.add_argument("--rate", type=float, default=50.0, help="legitimate client, queries/s (default 50)")
    p.add_argument("--batch-mix", default="fixed:20", help="legitimate client's batches (default fixed:20)")
    p.add_argument(
        "--legit-timeout", type=float, default=5.0, metavar="S", help="per-query timeout (default 5)"
    )
    p.add_argument(
        "--pool", default="r5n.large=4", help="TYPE=N,... of the emulated pool (default r5n.large=4)"
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=16 * MiB, help="the gateway's max_body_bytes (default 16 MiB, as the gateway's)"
    )
    p.add_argument(
        "--workdir", type=Path, help="keep config and process logs here (default: a temporary directory)"
    )
    p.add_argument("--control", action="store_true",
                   help="after each attack, run it again at a second (decoy) gateway while the legitimate client "
                        "uses the first: what the attack's traffic alone costs it on this host")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the table to PATH too")
    return p


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def settings_from_args(args: argparse.Namespace) -> SuiteSettings:
    """Raise ConfigError naming the flag on any bad value."""
    servers = _split(args.servers)
    bad = [s for s in servers if s not in SERVER_KINDS]
    if not servers or bad:
        raise ConfigError(f"--servers {args.servers!r}: expected a comma-separated subset of native,grpcio")
    attacks = list(ATTACKS) if args.attacks == "all" else _split(args.attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if not attacks or unknown:
        raise ConfigError(
            f"--attacks: unknown {', '.join(unknown) or '(none)'}; expected some of: {', '.join(ATTACKS)}"
        )
    for flag, value, lo, hi in (("--duration", args.duration, 0.5, 300.0), ("--grace", args.grace, 0.0, 60.0),
                                ("--rate", args.rate, 0.1, 2000.0), ("--legit-timeout", args.legit_timeout, 0.1, 60.0)):  # fmt: skip
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ConfigError(f"{flag} {value:g}: expected a number in [{lo:g}, {hi:g}]")
    parse_batch_mix(args.batch_mix)
    pool: list[tuple[str, int]] = []
    for part in _split(args.pool):
        kind, sep, count = part.partition("=")
        if not sep or not count.isdigit() or not 1 <= int(count) <= 64:
            raise ConfigError(f"--pool {args.pool!r}: expected TYPE=N,... with 1 <= N <= 64")
        load_catalogue().type(kind)  # ConfigError naming the known types
        pool.append((kind, int(count)))
    if not pool:
        raise ConfigError(f"--pool {args.pool!r}: expected TYPE=N,...")
    if not 1024 <= args.max_body_bytes <= 1024 * MiB:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes}: expected 1024 .. 1 GiB")
    legit = replace(LegitConfig(), rate=args.rate, batch_mix=args.batch_mix, timeout_s=args.legit_timeout)
    return SuiteSettings(
        servers=tuple(dict.fromkeys(servers)),
        attacks=tuple(dict.fromkeys(attacks)),
        duration_s=args.duration,
        grace_s=args.grace,
        legit=legit,
        pool=tuple(pool),
        max_body_bytes=args.max_body_bytes,
        control=args.control,
        workdir=args.workdir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, cls in ATTACKS.items():
            print(f"{name:24} {cls.front:5} {cls.summary}")
        return 0
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_async(run_suite(settings))
    except RuntimeError as exc:  # a process that did not become ready
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    table = render_markdown(report)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0
