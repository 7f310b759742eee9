"""``python -m benchmarks.autoscale.live``: the control loop against real processes, time compressed,
beside the simulation of the same run.

The heterogeneous setting (``benchmarks.autoscale.hetero``: rm2 and dien on Faro's job7 and job2
shapes, g4dn.xlarge and r5n.large at their prices), replayed with one trace minute lasting
``--minute-s`` seconds (default 5: 12x faster). Rates stay as they are; every time setting of the
loop is divided alike: tick, plan period, forecast step, horizon, shrink delay, measuring window and
the instances' start-up delays.

Live: ``kairos-servers`` (admin API) and ``kairos-gateway`` (admin API) start from one
two-model config with one r5n.large per model, ``kairos-autoscale`` runs against them with the
compressed settings, and one ``kairos-loadgen`` per model replays its trace (HTTP). The benchmark
samples the pool through the admin APIs for the cost and the instances over time, and reads each
load generator's report for the queries within target. The simulation runs the same queries
through the same loop and policy (``allocator.autoscale.simloop``), on the virtual clock.

    python -m benchmarks.autoscale.live --minutes 120 --json results/autoscale-live.json

Cost is in trace time (live seconds x the compression), so it compares with the uncompressed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from allocator.autoscale.actuator import GroupKey, GroupState
from allocator.autoscale.planned import PlannedPolicy
from allocator.autoscale.policies import StaticPolicy
from allocator.autoscale.pool_actuator import PoolActuator
from allocator.autoscale.simloop import LoopRun, SimModel, SimSetting, run_loop
from benchmarks.autoscale.hetero import (
    CPU,
    JOBS,
    LOAD_QUANTILE,
    STARTUP_S,
    TYPES,
    peak_plan,
    planned_policy,
    prices,
    rates_per_minute,
    trace,
)
from benchmarks.live import measured_transport_ms
from benchmarks.processes import console_script, start_gateway, start_servers
from gateway.sim.engine import default_profiles
from gateway.workload import QueryTrace

FIGURE = Path(__file__).resolve().parents[1] / "figures" / "autoscale-live.png"
QOS_MS = {"rm2": 350.0, "dien": 35.0}
MAX_CHANGE = 4
DECISION = re.compile(r"kairos\.autoscale \d+s \S+: \d+ -> \d+ \(")


@dataclass(frozen=True)
class Compressed:
    """The loop's time settings, one trace minute lasting ``minute_s``."""

    minute_s: float

    @property
    def scale(self) -> float:
        return 60.0 / self.minute_s

    def __call__(self, seconds: float) -> float:
        return seconds / self.scale

    def policy(self) -> PlannedPolicy:
        return planned_policy(self.scale)

    def autoscale_args(self) -> list[str]:
        startup = ",".join(f"{t}={self(s):g}" for t, s in STARTUP_S.items())
        return ["--tick", f"{self(10.0):g}", "--plan-every", f"{self(30.0):g}", "--step", f"{self.minute_s:g}",
                "--horizon", f"{self(120.0):g}", "--down-after", f"{self(120.0):g}", "--measure", f"{self(30.0):g}",
                "--max-change", str(MAX_CHANGE), "--startup-delay", startup, "--objective", "min_cost",
                "--load-quantile", f"{LOAD_QUANTILE:g}"]


@dataclass
class LiveRun:
    over: dict[str, int]
    queries: dict[str, int]
    cost: float  # $, trace time
    decisions: int
    wall_s: float
    # (live s, {group: (ready, held)}) per sample
    samples: list[tuple[float, dict[GroupKey, tuple[int, int]]]] = field(default_factory=list)
    timelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per model, the gateway's measured round trip beyond service (mean, p99 ms), read at the end
    transport_ms: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def over_target(self) -> float:
        return sum(self.over.values()) / max(sum(self.queries.values()), 1)


def traces(peaks: dict[str, float], seed: int, minutes: int | None, c: Compressed) -> dict[str, QueryTrace]:
    per_minute = rates_per_minute(peaks, minutes)
    return {m: trace(per_minute[m], seed, k, c.minute_s) for k, m in enumerate(JOBS)}


def simulate(queries: dict[str, QueryTrace], c: Compressed, seed: int, static: dict[GroupKey, int] | None = None,
             transport: dict[str, tuple[float | None, float | None]] | None = None) -> LoopRun:
    """The same queries through the same loop on the virtual clock; with ``transport``, each model's
    round trip as the live gateway measured it (else the ideal pool)."""
    trip = transport or {}
    models = tuple(SimModel(m, queries[m], QOS_MS[m], TYPES, trip.get(m, (None, None))[0] or 0.0,
                            trip.get(m, (None, None))[1]) for m in JOBS)
    setting = SimSetting(models, default_profiles(), startup_s={t: c(s) for t, s in STARTUP_S.items()},
                         price_per_hour=prices(), tick_s=c(10.0), max_change=MAX_CHANGE)
    policy = c.policy() if static is None else StaticPolicy(static, "static-peak")
    return run_loop(setting, policy, seed)


def write_config(directory: Path, seed: int) -> Path:
    doc = {
        "models": [{"name": m, "qos_ms": QOS_MS[m], "pool": [{"type": CPU, "count": 1}]} for m in JOBS],
        "servers": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "seed": seed,
                    "address_file": str(directory / "instances.json")},
        "gateway": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2},
    }
    path = directory / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def write_trace(path: Path, q: QueryTrace) -> None:
    rows = "\n".join(f"{t:.3f},{b}" for t, b in zip(q.arrival_ms.tolist(), q.batch.tolist(), strict=True))
    path.write_text("timestamp_ms,batch\n" + rows + "\n")


async def sample_pool(actuator: PoolActuator, every_s: float, stop: asyncio.Event,
                      out: list[tuple[float, dict[GroupKey, tuple[int, int]]]]) -> None:
    started = time.monotonic()
    while not stop.is_set():
        try:
            groups: dict[GroupKey, GroupState] = await actuator.groups()
            out.append((time.monotonic() - started,
                        {k: (s.ready, s.ready + s.starting + s.draining) for k, s in groups.items()}))
        except Exception as exc:  # a missed sample is a gap, not a failed run
            print(f"  sample missed: {exc}", file=sys.stderr)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def cost_of(samples: list[tuple[float, dict[GroupKey, tuple[int, int]]]], prices: dict[str, float], scale: float) -> float:
    total = 0.0
    for (t0, groups), (t1, _) in itertools.pairwise(samples):
        total += sum(held * prices.get(k.type, 0.0) for k, (_, held) in groups.items()) * (t1 - t0) * scale / 3600.0
    return total


async def run_live(queries: dict[str, QueryTrace], c: Compressed, seed: int, directory: Path) -> LiveRun:
    cfg_path = write_config(directory, seed)
    servers = start_servers(cfg_path, directory / "instances.json", directory=directory)
    autoscale = None
    try:
        servers_admin = servers.ready_line.rsplit("; admin ", 1)[1].strip()
        gateway = start_gateway(cfg_path, [], directory)
        try:
            gateway_admin = "http://" + gateway.ready_line.rsplit(" admin=", 1)[1].split()[0]
            log_path = directory / "autoscale.log"
            with log_path.open("w") as log:
                autoscale = subprocess.Popen(
                    [*console_script("kairos-autoscale", "allocator.autoscale"), "--config", str(cfg_path),
                     "--gateway", gateway.url, "--gateway-admin", gateway_admin, "--servers-admin", servers_admin,
                     *c.autoscale_args()], stdout=log, stderr=subprocess.STDOUT)
            reports = {m: directory / f"loadgen-{m}.json" for m in JOBS}
            loadgens = []
            for m in JOBS:
                csv = directory / f"trace-{m}.csv"
                write_trace(csv, queries[m])
                loadgens.append(subprocess.Popen(
                    [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", gateway.url,
                     "--model", m, "--trace", str(csv), "--json", str(reports[m]), "--quiet"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            started = time.monotonic()
            samples: list[tuple[float, dict[GroupKey, tuple[int, int]]]] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                sampler = asyncio.create_task(sample_pool(PoolActuator(session, servers_admin, gateway_admin),
                                                          c(5.0), stop, samples))
                total_s = max(float(q.arrival_ms[-1]) for q in queries.values()) / 1000.0
                next_say = 0.0
                while any(p.poll() is None for p in loadgens):
                    await asyncio.sleep(1.0)
                    done = time.monotonic() - started
                    if done >= next_say:
                        print(f"  live: {done:.0f} s of {total_s:.0f} s", file=sys.stderr, flush=True)
                        next_say += max(total_s / 10.0, 10.0)
                stop.set()
                await sampler
            wall = time.monotonic() - started
            transport = {m: measured_transport_ms(gateway.url, m) for m in JOBS}
            for m, p in zip(JOBS, loadgens, strict=True):
                if p.returncode not in (0, 1):
                    raise RuntimeError(f"kairos-loadgen for {m} exited {p.returncode}: {p.stderr.read() if p.stderr else ''}")
            autoscale.send_signal(signal.SIGTERM)
            autoscale.wait(timeout=60)
        finally:
            if autoscale is not None and autoscale.poll() is None:
                autoscale.kill()
            gateway.stop()
    finally:
        servers.stop()
    docs = {m: orjson.loads(reports[m].read_bytes()) for m in JOBS}
    decisions = sum(1 for line in (directory / "autoscale.log").read_text().splitlines() if DECISION.search(line))
    return LiveRun(
        over={m: d["counts"]["scheduled"] - d["counts"]["within_qos"] for m, d in docs.items()},
        queries={m: d["counts"]["scheduled"] for m, d in docs.items()},
        cost=cost_of(samples, prices(), c.scale), decisions=decisions, wall_s=wall, samples=samples,
        timelines={m: d["timeline"] for m, d in docs.items()}, transport_ms=transport,
    )


def plot(live: LiveRun, sim: LoopRun, queries: dict[str, QueryTrace], c: Compressed, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True)
    to_min = 1.0 / c.minute_s  # live or virtual seconds -> trace minutes
    for m in JOBS:
        arr = queries[m].arrival_ms / 1000.0
        edges = np.arange(0.0, arr[-1] + c.minute_s, c.minute_s)
        counts, _ = np.histogram(arr, edges)
        axes[0].plot(edges[:-1] * to_min, counts / c.minute_s, lw=0.8, label=f"{m} arrivals")
    axes[0].set_ylabel("queries/s")
    axes[0].legend(loc="upper left", fontsize=8, frameon=False)
    axes[0].set_title(f"Live against simulated, the same queries ({c.scale:g}x time compression)", fontsize=10)
    for k, key in enumerate(sim.groups):
        color = f"C{k}"
        axes[1].step(sim.ticks_s * to_min, sim.ready[:, k], where="post", color=color, lw=1.0, ls="--",
                     label=f"{key} simulated")
        t = np.array([s[0] for s in live.samples])
        y = np.array([s[1].get(key, (0, 0))[0] for s in live.samples])
        axes[1].step(t * to_min, y, where="post", color=color, lw=1.0, label=f"{key} live")
    axes[1].set_ylabel("instances serving")
    axes[1].legend(loc="upper left", fontsize=7, ncol=2, frameon=False)
    for j, m in enumerate(JOBS):
        bins = live.timelines[m]["bins"]
        t = np.array([b["t_s"] for b in bins]) * to_min
        over = np.array([100.0 - b["within_qos_pct"] if b["within_qos_pct"] is not None else np.nan for b in bins])
        axes[2].plot(t, over, lw=0.9, color=f"C{j}", label=f"{m} live")
        k = max(1, round(live.timelines[m]["bin_s"] / sim.tick_s))
        whole = sim.arrivals.shape[0] // k * k
        a = sim.arrivals[:whole, j].reshape(-1, k).sum(axis=1)
        o = sim.over[:whole, j].reshape(-1, k).sum(axis=1)
        st = sim.ticks_s[:whole].reshape(-1, k)[:, 0] - sim.tick_s
        axes[2].plot(st * to_min, np.where(a > 0, 100.0 * o / np.maximum(a, 1), np.nan), lw=0.9, ls="--",
                     color=f"C{j}", label=f"{m} simulated")
    axes[2].set_ylabel("% over target")
    axes[2].set_xlabel("trace minute")
    axes[2].legend(loc="upper left", fontsize=8, ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.autoscale.live", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=120, help="trace minutes to replay (default 120; 360 is all)")
    ap.add_argument("--minute-s", type=float, default=5.0, help="seconds per trace minute (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rm2-peak", type=float, default=40.0, help="rm2's peak rate, q/s (default 40)")
    ap.add_argument("--dien-peak", type=float, default=100.0, help="dien's peak rate, q/s (default 100)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=FIGURE, help=f"figure (default {FIGURE})")
    ap.add_argument("--workdir", type=Path, help="keep the config, traces, logs and load reports here")
    args = ap.parse_args(argv)
    c = Compressed(args.minute_s)
    peaks = {"rm2": args.rm2_peak, "dien": args.dien_peak}
    queries = traces(peaks, args.seed, args.minutes, c)
    print(f"{args.minutes} trace minutes at {args.minute_s:g} s each: "
          f"{sum(len(q) for q in queries.values())} queries; simulating", file=sys.stderr)
    sim = simulate(queries, c, args.seed)
    static = simulate(queries, c, args.seed, peak_plan(peaks))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        live = asyncio.run(run_live(queries, c, args.seed, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="kairos-live-loop-") as d:
            live = asyncio.run(run_live(queries, c, args.seed, Path(d)))
    print("  transport measured live (mean / p99 ms): " + ", ".join(
        f"{m} {a or 0:.2f} / {b or 0:.2f}" for m, (a, b) in live.transport_ms.items()), file=sys.stderr)
    trips = simulate(queries, c, args.seed, transport=live.transport_ms)
    rows = [
        ("live (planned)", live.cost, live.over_target, {m: live.over[m] / max(live.queries[m], 1) for m in JOBS},
         live.decisions),
        ("simulated (planned)", sim.cost * c.scale, sim.over_target, sim.per_model(), len(sim.decisions)),
        ("simulated, live trips", trips.cost * c.scale, trips.over_target, trips.per_model(), len(trips.decisions)),
        ("simulated static peak", static.cost * c.scale, static.over_target, static.per_model(), 0),
    ]
    base = static.cost * c.scale
    print(f"{args.minutes} trace minutes, {c.scale:g}x compressed, seed {args.seed}; live {live.wall_s:.0f} s")
    print(f"{'run':<26}{'cost $':>9}{'x static':>10}{'% over':>9}{'rm2':>8}{'dien':>8}{'decisions':>11}")
    for name, cost, over, per, n in rows:
        print(f"{name:<26}{cost:>9.2f}{cost / base:>10.2f}{over * 100:>9.2f}{per['rm2'] * 100:>8.2f}"
              f"{per['dien'] * 100:>8.2f}{n:>11}")
    plot(live, sim, queries, c, args.plot)
    print(f"figure: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({
            "minutes": args.minutes, "minute_s": args.minute_s, "seed": args.seed, "peaks": peaks,
            "transport_ms": {m: {"mean": a, "p99": b} for m, (a, b) in live.transport_ms.items()},
            "runs": {name: {"cost": cost, "x_static": cost / base, "over_target_pct": over * 100,
                            "per_model_pct": {m: v * 100 for m, v in per.items()}, "decisions": n}
                     for name, cost, over, per, n in rows},
        }, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
