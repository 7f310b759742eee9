"""Spread instances over worker processes (``kairos-servers --workers K``).

The launcher spawns K workers, each serving every K-th instance on its own event loop, and
collects their addresses over a pipe. A worker stops on SIGTERM (the launcher forwards its
own SIGINT/SIGTERM as SIGTERM) and also when the pipe to the launcher closes, so a launcher
killed with SIGKILL does not leave orphans serving its ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from gateway.errors import KairosError
from gateway.gc_freeze import freeze_startup_objects
from gateway.protocol.addresses import InstanceAddress
from servers.pool import InstanceSpec, LocalGroup, PoolOptions, StartupError

# Workers are started with "spawn": forking a process that already runs gRPC threads is unsafe.
_CTX = multiprocessing.get_context("spawn")
START_TIMEOUT_S = 60.0
T = TypeVar("T")


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool) -> T:
    """Run the coroutine function ``main`` on uvloop when asked and available, else asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            use_uvloop = False
    if use_uvloop:
        return uvloop.run(main())
    return asyncio.run(main())


def worker_main(specs: list[InstanceSpec], options: PoolOptions, conn: Connection, use_uvloop: bool) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group; only the launcher acts on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(run_loop(lambda: _worker(specs, options, conn), use_uvloop))


async def _worker(specs: list[InstanceSpec], options: PoolOptions, conn: Connection) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def launcher_gone() -> None:
        # The launcher never writes to us; readable means it closed its end (it died).
        loop.remove_reader(conn.fileno())
        stop.set()

    loop.add_reader(conn.fileno(), launcher_gone)
    group = LocalGroup(specs, options, options.profile_set(), pid=os.getpid())
    try:
        addresses = await group.start()
    except KairosError as exc:
        conn.send(("error", str(exc)))
        return 1
    freeze_startup_objects()
    conn.send(("ok", [asdict(a) for a in addresses]))
    await stop.wait()
    await group.stop()
    return 0


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection
    specs: list[InstanceSpec]


class WorkerSet:
    """The launcher's side: start, watch and stop the worker processes."""

    def __init__(
        self, specs: list[InstanceSpec], options: PoolOptions, workers: int, use_uvloop: bool
    ) -> None:
        k = max(1, min(workers, len(specs)))
        self.workers: list[Worker] = []
        self._child_ends: list[Connection] = []
        for w in range(k):
            ours, theirs = _CTX.Pipe()
            part = specs[w::k]
            proc = _CTX.Process(
                target=worker_main,
                args=(part, options, theirs, use_uvloop),
                name=f"kairos-servers-worker-{w}",
            )
            self.workers.append(Worker(proc, ours, part))
            self._child_ends.append(theirs)

    async def start(self) -> list[InstanceAddress]:
        """Start every worker and return all addresses in pool order; StartupError if any fails."""
        for w in self.workers:
            w.process.start()
        for c in self._child_ends:
            c.close()  # so that a dead worker shows as EOF on our end
        results = await asyncio.gather(*(asyncio.to_thread(self._receive, w) for w in self.workers))
        addresses = [a for part in results for a in part]
        return sorted(addresses, key=lambda a: a.index)

    @staticmethod
    def _receive(w: Worker) -> list[InstanceAddress]:
        what = f"worker {w.process.name} (pid {w.process.pid})"
        if not w.conn.poll(START_TIMEOUT_S):
            raise StartupError(f"{what} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            status, payload = w.conn.recv()
        except EOFError:
            raise StartupError(f"{what} exited during start-up") from None
        if status != "ok":
            raise StartupError(str(payload))
        return [InstanceAddress(**a) for a in payload]

    def watch(self, on_exit: Callable[[Worker], None]) -> None:
        """Call ``on_exit(worker)`` when a worker process ends (event-driven, via its sentinel)."""
        loop = asyncio.get_running_loop()
        for w in self.workers:

            def fire(w: Worker = w) -> None:
                loop.remove_reader(w.process.sentinel)
                on_exit(w)

            loop.add_reader(w.process.sentinel, fire)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM every worker, wait for them, SIGKILL any that hang."""
        loop = asyncio.get_running_loop()
        for w in self.workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(w.process.sentinel)
            if w.process.is_alive():
                w.process.terminate()
        for w in self.workers:
            if w.process.pid is None:
                continue
            await asyncio.to_thread(w.process.join, timeout_s)
            if w.process.is_alive():
                w.process.kill()
                await asyncio.to_thread(w.process.join, 1.0)
            w.conn.close()
