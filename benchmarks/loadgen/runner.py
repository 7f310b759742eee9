"""The open-loop sender: ``run_load(config) -> LoadReport``.

Query i is sent at t0 + arrival_ms[i] (an absolute deadline on the monotonic clock, reached with
``gateway.precise_timers``, within tens of µs and never earlier, where uvloop's whole-ms timers
sent at a median 0.56 ms late) in its own task, whatever happened to earlier queries: the sender
never waits on a response. If it falls behind (a busy machine), it sends the
overdue queries at once, still in order, and the lag is reported. Latency is measured from the
scheduled time. The run ends by itself when every sent query has answered, failed or timed out.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO, TypeVar

import numpy as np

from benchmarks.loadgen.config import LoadConfig, build_workload
from benchmarks.loadgen.inputs import resolve_inputs
from benchmarks.loadgen.payloads import PayloadFactory
from benchmarks.loadgen.report import LoadReport, RunInfo, Samples
from benchmarks.loadgen.transport import Target, make_target
from gateway.gc_freeze import freeze_startup_objects
from gateway.precise_timers import clock, sleep_until
from gateway.workload import QueryTrace

T = TypeVar("T")

START_DELAY_S = 0.02  # t0 is this far after the connection check: the schedule starts clean
YIELD_EVERY = 32  # when behind schedule, let the loop run the sends after this many task spawns
FIRST_ERRORS = 5  # distinct errors kept, with the server's text, to show the user


class _Progress:
    """One stderr line, rewritten with \\r on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else 5.0

    def line(self, sent: int, done: int, errors: int, elapsed: float) -> str:
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (
            f"[{bar}] sent {sent}/{self.total}  done {done}  errors {errors}"
            f"  in flight {sent - done}  {elapsed:6.1f} s"
        )

    def show(self, sent: int, done: int, errors: int, elapsed: float) -> None:
        text = self.line(sent, done, errors, elapsed)
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()

    def finish(self, sent: int, done: int, errors: int, elapsed: float) -> None:
        self.show(sent, done, errors, elapsed)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _Run:
    def __init__(
        self,
        target: Target,
        workload: QueryTrace,
        qos_ms: float,
        abort_after_violations: int | None,
    ) -> None:
        self.target = target
        self.scheduled_s = np.asarray(workload.arrival_ms, dtype=float) / 1000.0
        self._sched: list[float] = self.scheduled_s.tolist()
        self.batches: list[int] = [int(b) for b in workload.batch]
        self.samples = Samples.empty(self.scheduled_s, workload.batch)
        self.qos_s = qos_ms / 1000.0
        self.abort_after = abort_after_violations
        self.aborted = False
        self.tag = secrets.token_hex(4)
        self.sent = 0
        self.done = 0
        self.errors = 0
        self.violations = 0
        self.max_in_flight = 0
        self.t0 = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _one(self, i: int, loop: asyncio.AbstractEventLoop) -> None:
        s = self.samples
        s.sent_s[i] = clock() - self.t0
        self.sent += 1
        in_flight = self.sent - self.done
        if in_flight > self.max_in_flight:
            self.max_in_flight = in_flight
        try:
            outcome = await self.target.infer(self.batches[i], f"{self.tag}-{i}")
            error, instance, variant = outcome.error, outcome.instance, outcome.variant
            outcome_detail = outcome.detail
        except asyncio.CancelledError:
            error, instance, variant, outcome_detail = "cancelled", None, None, None
        # The monotonic clock, not uvloop's loop.time(): that one is read once per loop
        # iteration and moves in whole ms, which would shave up to 1 ms off latencies.
        now = clock() - self.t0
        s.done_s[i] = now
        s.error[i] = error
        s.instance[i] = instance
        s.variant[i] = variant
        self.done += 1
        if error is not None:
            self.errors += 1
            first = s.first_errors
            if len(first) < FIRST_ERRORS:
                text = error if error == "cancelled" or outcome_detail is None else f"{error}: {outcome_detail}"
                if text not in first:
                    first.append(text)
        if error is not None or now - self._sched[i] > self.qos_s:
            self.violations += 1
            if self.abort_after is not None and self.violations > self.abort_after and not self.aborted:
                self.aborted = True
                me = asyncio.current_task()
                for t in self.tasks:
                    if t is not me:
                        t.cancel()

    async def send_all(self, start_at: float | None = None) -> None:
        """Send every query on schedule; ``start_at`` (Unix time, s): the schedule's zero, if later."""
        loop = asyncio.get_running_loop()
        # t0 on the same clock as the samples: loop.time() trails it by up to 1 ms (whole ms,
        # read once per iteration), which was added to every latency of the run.
        wait = START_DELAY_S if start_at is None else max(start_at - time.time(), START_DELAY_S)
        if start_at is not None and (late := time.time() + wait - start_at) > 0.1:
            print(f"kairos-loadgen: started {late:.2f} s after --start-at; the schedule is shifted by that",
                  file=sys.stderr, flush=True)
        self.t0 = clock() + wait
        spawned_without_yield = 0
        for i, at in enumerate(self._sched):
            if self.aborted:
                break
            due = self.t0 + at
            if due > clock():
                await sleep_until(due)
                spawned_without_yield = 0
                if self.aborted:
                    break
            elif spawned_without_yield >= YIELD_EVERY:
                await asyncio.sleep(0)
                spawned_without_yield = 0
            task = loop.create_task(self._one(i, loop))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            spawned_without_yield += 1


async def _progress_loop(run: _Run, progress: _Progress) -> None:
    while True:
        await asyncio.sleep(progress.interval)
        progress.show(run.sent, run.done, run.errors, max(0.0, clock() - run.t0))


async def run_load(
    config: LoadConfig,
    *,
    workload: QueryTrace | None = None,
    abort_after_violations: int | None = None,
    progress_stream: TextIO | None = None,
    target_factory: Callable[[LoadConfig, PayloadFactory], Target] | None = None,
) -> LoadReport:
    """Run one open-loop load and return its report.

    ``workload`` overrides the queries the config describes (its rate/ramp/trace then only
    label the report). ``abort_after_violations``: stop sending and cancel what is in flight
    once more than this many queries failed or missed QoS (used by ``find_max``; the report says
    ``aborted``). Progress goes to ``progress_stream`` (default stderr) when ``config.progress``.
    Raises ConfigError for a bad config, TargetUnreachable if the endpoint does not answer.
    """
    cfg = config.validate(need_source=workload is None)
    assert cfg.qos_ms is not None
    wl = workload if workload is not None else build_workload(cfg)
    endpoint = cfg.endpoint
    inputs = await resolve_inputs(endpoint, cfg.model, cfg.inputs)
    payloads = PayloadFactory(
        cfg.model, cfg.qos_ms if cfg.send_qos else None, seed=cfg.seed, max_batch=int(wl.batch.max()) if len(wl) else 1,
        service_class=cfg.service_class, variant=cfg.variant, inputs=inputs,
    )  # fmt: skip
    if target_factory is not None:
        target = target_factory(cfg, payloads)
    else:
        target = make_target(
            endpoint, payloads, cfg.timeout_s, binary=cfg.binary, connections=cfg.connections,
            routing_headers=cfg.routing_headers,
        )  # fmt: skip
    process = cfg.arrival_process()
    info = RunInfo(
        url=cfg.url,
        protocol=endpoint.protocol,
        encoding="protobuf" if endpoint.protocol == "grpc" else ("binary" if cfg.binary else "json"),
        model=cfg.model,
        qos_ms=float(cfg.qos_ms),
        arrivals="trace" if cfg.trace is not None else (process.name if process is not None else "custom"),
        rate_qps=None if process is None else float(process.mean_rate),
        batch_mix="trace" if cfg.trace is not None else cfg.batch_mix,
        seed=cfg.seed,
        service_class=cfg.service_class,
        variant=cfg.variant,
        accuracy=dict(cfg.accuracy),
    )
    loop = asyncio.get_running_loop()
    freeze_startup_objects()  # the client's own GC pauses would show up as latency
    async with target:
        run = _Run(target, wl, cfg.qos_ms, abort_after_violations)
        progress = _Progress(progress_stream or sys.stderr, len(wl)) if cfg.progress else None
        ticker = loop.create_task(_progress_loop(run, progress)) if progress else None
        try:
            await run.send_all(cfg.start_at)
            while run.tasks:  # every request ends: answered, failed, timed out or cancelled
                await asyncio.wait(set(run.tasks))
        finally:
            if ticker is not None:
                ticker.cancel()
            for t in list(run.tasks):
                t.cancel()
            if run.tasks:
                await asyncio.gather(*run.tasks, return_exceptions=True)
        if progress is not None:
            progress.finish(run.sent, run.done, run.errors, max(0.0, clock() - run.t0))
    return LoadReport.from_samples(info, run.samples, max_in_flight=run.max_in_flight, aborted=run.aborted)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where available (faster timers and sockets), else the default loop: how
    ``kairos-loadgen`` runs, and how every benchmark that drives load should. The live check
    drove its load on the default loop until 2026-11-22."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
