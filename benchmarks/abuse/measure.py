"""What the suite measures: the gateway process from /proc (CPU seconds, resident memory), the
legitimate client (``kairos-loadgen``'s own runner, open loop), and the attacker's process.

* CPU: utime + stime of ``/proc/PID/stat`` (every thread of the process), after minus before.
* Memory: VmRSS of ``/proc/PID/status``, sampled every 50 ms: the peak during the attack minus
  the value just before it.
* The legitimate client: ``run_load`` at a steady Poisson rate; errors are every query that did
  not get a V2 answer (error answers, timeouts, refused connections); p99 is over the answered ones
  (nearest rank, from the scheduled send time: see ``benchmarks.loadgen.report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.abuse.attacks import AttackOutcome
from benchmarks.abuse.worker import READY
from benchmarks.loadgen.config import LoadConfig, build_workload
from benchmarks.loadgen.report import Samples
from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.transport import TargetUnreachable

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3..
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS


@dataclass
class ProcUsage:
    cpu_s: float | None = None
    rss_before_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_after_mb: float | None = None
    exited: bool = False  # the process was gone before the measurement ended

    @property
    def growth_mb(self) -> float | None:
        if self.rss_peak_mb is None or self.rss_before_mb is None:
            return None
        return round(self.rss_peak_mb - self.rss_before_mb, 1)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "growth_mb": self.growth_mb}


class ProcSampler:
    """CPU and peak RSS of one process between ``start()`` and ``stop()``."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._cpu0 = 0.0
        self._cpu1 = 0.0
        self._rss0 = 0
        self._peak = 0
        self._last = 0
        self._exited = False
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        try:
            rss = rss_bytes(self.pid)
            self._cpu1 = cpu_seconds(self.pid)
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            self._exited = True
            return
        self._last = rss
        self._peak = max(self._peak, rss)

    def start(self) -> None:
        try:
            self._cpu0 = self._cpu1 = cpu_seconds(self.pid)
            self._rss0 = self._peak = self._last = rss_bytes(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            self._exited = True
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._exited:
            await asyncio.sleep(self.interval_s)
            self._sample()

    async def stop(self) -> ProcUsage:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self._exited:
            self._sample()
        mb = 1 / MB
        return ProcUsage(
            cpu_s=round(self._cpu1 - self._cpu0, 2),
            rss_before_mb=round(self._rss0 * mb, 1),
            rss_peak_mb=round(self._peak * mb, 1),
            rss_after_mb=round(self._last * mb, 1),
            exited=self._exited,
        )


# -- the legitimate client --------------------------------------------------------------------


@dataclass
class LegitResult:
    url: str
    scheduled: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    # The slowest answered queries: [seconds from the start when sent, latency ms], slowest first
    # (where in the attack the tail comes from).
    slowest: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LegitConfig:
    rate: float = 50.0
    model: str = "rm2"
    qos_ms: float = 350.0
    batch_mix: str = "fixed:20"
    timeout_s: float = 5.0
    seed: int = 0


async def legit_load(url: str, duration_s: float, cfg: LegitConfig) -> LegitResult:
    """The legitimate client for ``duration_s`` s of arrivals against ``url`` (grpc:// or http://)."""
    load = LoadConfig(
        url=url, model=cfg.model, rate=cfg.rate, duration_s=duration_s, qos_ms=cfg.qos_ms,
        seed=cfg.seed, batch_mix=cfg.batch_mix, timeout_s=cfg.timeout_s, connections=64,
    )  # fmt: skip
    try:
        report = await run_load(load)
    except TargetUnreachable as exc:
        # Every query it would have sent fails: a gateway that refuses everyone is no success.
        n = len(build_workload(load.validate()))
        return LegitResult(url, scheduled=n, errors=n, error_kinds={f"unreachable: {exc}": n})
    lat = report.latency_ms or {}
    return LegitResult(
        url,
        scheduled=report.scheduled,
        ok=report.ok,
        errors=report.scheduled - report.ok,  # unsent (never happens without abort) count too
        error_kinds=dict(report.errors),
        p50_ms=lat.get("p50"),
        p99_ms=lat.get("p99"),
        max_ms=lat.get("max"),
        slowest=_slowest(report.samples),
    )


def _slowest(samples: Samples | None, n: int = 5) -> list[tuple[float, float]]:
    if samples is None:
        return []
    sent, done = np.asarray(samples.sent_s, dtype=float), np.asarray(samples.done_s, dtype=float)
    ok = np.array([e is None for e in samples.error], dtype=bool) & np.isfinite(sent) & np.isfinite(done)
    idx = np.flatnonzero(ok)
    worst = idx[np.argsort(done[idx] - sent[idx])[::-1][:n]]
    return [(round(float(sent[i]), 3), round(float(done[i] - sent[i]) * 1000.0, 2)) for i in worst]


# -- the attacker's process -------------------------------------------------------------------


class Worker:
    """``benchmarks.abuse.worker`` as a child process: ``start`` (until it is ready), ``go``,
    ``outcome`` (bounded: killed past its hard timeout)."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path

    @classmethod
    async def start(cls, args: list[str], stderr_path: Path, timeout_s: float = 30.0) -> Worker:
        # stderr to a file: a pipe nobody reads could fill and stall the worker.
        with open(stderr_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.abuse.worker", *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        worker = cls(proc, stderr_path)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"attack worker exited: {worker.stderr()}")
                    if line.decode().strip() == READY:
                        return worker
        except BaseException:
            await worker.kill()
            raise

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    async def outcome(self, name: str, front: str, timeout_s: float) -> AttackOutcome:
        """The worker's report; an ``error`` outcome if it fails or outlives ``timeout_s``."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                async for line in self.proc.stdout:
                    if line.startswith(b"{"):
                        doc = orjson.loads(line)
                        await self.proc.wait()
                        return AttackOutcome.from_json(doc["outcome"])
        except TimeoutError:
            await self.kill()
            return AttackOutcome(
                name, front, ended_by="error", error=f"killed after the hard timeout ({timeout_s:g} s)"
            )
        await self.proc.wait()
        return AttackOutcome(
            name, front, ended_by="error", error=f"worker exited {self.proc.returncode}: {self.stderr()}"
        )

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
