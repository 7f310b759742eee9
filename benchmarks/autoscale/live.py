"""``python -m benchmarks.autoscale.live``: the control loop against real processes, time compressed,
beside the simulation of the same run.

Two settings (``benchmarks.autoscale.live_settings``): ``hetero`` (rm2 and dien on GPU + CPU types
at their prices, min cost) and ``faro`` (Faro's ten jobs of 1-CPU replicas under a cap of 32 or 36,
Faro's service-time distribution, 720 ms target: the live figures compare with Faro's cluster
runs). One trace minute lasts ``--minute-s`` seconds (default 5: 12x faster). Rates stay as they
are; every time setting of the loop is divided alike: tick, plan period, forecast step, horizon,
shrink delay, measuring window, the instances' start-up delays and a removed instance's release.

Live: ``kairos-servers`` (admin API) and ``kairos-gateway`` (admin API) start from the setting's
config, ``kairos-autoscale`` runs against them with the compressed settings, and one
``kairos-loadgen`` per model replays its trace (HTTP). The benchmark samples the pool through the
admin APIs for the cost and the instances over time, and reads each load generator's report for
the queries within target. The simulation runs the same queries through the same loop, built from
the same arguments as the command's (``allocator.autoscale.simloop``), on the virtual clock.

    python -m benchmarks.autoscale.live --minutes 120 --json results/autoscale-live.json
    python -m benchmarks.autoscale.live --setting faro --cap 36 --minutes 360 --plot benchmarks/figures/autoscale-live-faro.png
    python -m benchmarks.autoscale.live --replot results/autoscale-live.json --plot again.png

Cost is in trace time (live seconds x the compression), so it compares with the uncompressed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
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
from allocator.autoscale.cli import build_parser, planned_policy
from allocator.autoscale.planned import PlannedPolicy
from allocator.autoscale.policies import StaticPolicy
from allocator.autoscale.pool_actuator import PoolActuator
from allocator.autoscale.simloop import LoopRun, run_loop
from benchmarks.autoscale.live_settings import Compressed, FaroLive, HeteroLive, LiveSetting, Transport
from benchmarks.autoscale.plotting import percent_symlog
from benchmarks.live import measured_transport_ms
from benchmarks.processes import console_script, start_gateway, start_servers
from gateway.config import Config, load_config
from gateway.workload import QueryTrace

FIGURE = Path(__file__).resolve().parents[1] / "figures" / "autoscale-live.png"
# The processes' start-up (imports) on this 2-core machine, before the common start: ten load
# generators took about 8 s.
START_LEAD_S, START_LEAD_PER_MODEL_S = 3.0, 1.0
DECISION = re.compile(r"kairos\.autoscale \d+s \S+: \d+ -> \d+ \(")


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

    def per_model(self) -> dict[str, float]:
        return {m: self.over[m] / max(self.queries[m], 1) for m in self.over}

    def to_doc(self) -> dict[str, Any]:
        """Everything the figure needs, so ``--replot`` can draw it again without a live run."""
        return {"over": self.over, "queries": self.queries, "cost": self.cost, "decisions": self.decisions,
                "wall_s": self.wall_s, "timelines": self.timelines,
                "transport_ms": {m: list(v) for m, v in self.transport_ms.items()},
                "samples": [[t, [[k.model, k.variant, k.type, r, h] for k, (r, h) in groups.items()]]
                            for t, groups in self.samples]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LiveRun:
        return cls(over=doc["over"], queries=doc["queries"], cost=doc["cost"], decisions=doc["decisions"],
                   wall_s=doc["wall_s"], timelines=doc["timelines"],
                   transport_ms={m: (a, b) for m, (a, b) in doc["transport_ms"].items()},
                   samples=[(t, {GroupKey(m, v, ty): (r, h) for m, v, ty, r, h in groups})
                            for t, groups in doc["samples"]])


def command_policy(setting: LiveSetting, config_path: Path, config: Config, c: Compressed) -> PlannedPolicy:
    """The policy ``kairos-autoscale`` builds from the arguments the live run gives it."""
    args = build_parser().parse_args(["--config", str(config_path), "--gateway", "-", "--gateway-admin", "-",
                                      "--servers-admin", "-", *setting.autoscale_args(c)])
    return planned_policy(args, config)


def simulate(setting: LiveSetting, config_path: Path, queries: dict[str, QueryTrace], c: Compressed, seed: int,
             static: dict[GroupKey, int] | None = None, transport: Transport | None = None) -> LoopRun:
    """The same queries through the same loop on the virtual clock; with ``transport``, each model's
    round trip as the live gateway measured it (else the ideal pool)."""
    config = load_config(config_path)
    policy = command_policy(setting, config_path, config, c) if static is None else StaticPolicy(static, "static-peak")
    return run_loop(setting.sim_setting(config, queries, c, transport), policy, seed)


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


async def run_live(setting: LiveSetting, cfg_path: Path, queries: dict[str, QueryTrace], c: Compressed,
                   directory: Path) -> LiveRun:
    models = setting.models
    servers = start_servers(cfg_path, directory / "instances.json", directory=directory)
    autoscale = None
    try:
        servers_admin = servers.ready_line.rsplit("; admin ", 1)[1].strip()
        gateway = start_gateway(cfg_path, [], directory)
        try:
            gateway_admin = "http://" + gateway.ready_line.rsplit(" admin=", 1)[1].split()[0]
            # Every process starts its clock at the same moment, once all have started up.
            start_at = time.time() + START_LEAD_S + START_LEAD_PER_MODEL_S * len(models)
            log_path = directory / "autoscale.log"
            with log_path.open("w") as log:
                autoscale = subprocess.Popen(
                    [*console_script("kairos-autoscale", "allocator.autoscale"), "--config", str(cfg_path),
                     "--gateway", gateway.url, "--gateway-admin", gateway_admin, "--servers-admin", servers_admin,
                     *setting.autoscale_args(c), "--start-at", f"{start_at:.3f}"], stdout=log, stderr=subprocess.STDOUT)
            reports = {m: directory / f"loadgen-{m}.json" for m in models}
            loadgens = []
            for m in models:
                csv = directory / f"trace-{m}.csv"
                write_trace(csv, queries[m])
                loadgens.append(subprocess.Popen(
                    [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", gateway.url,
                     "--model", m, "--qos", f"{setting.target_ms(m):g}", *setting.loadgen_args(m), "--trace", str(csv),
                     "--json", str(reports[m]), "--quiet", "--start-at", f"{start_at:.3f}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            await asyncio.sleep(max(start_at - time.time(), 0.0))
            if autoscale.poll() is not None or any(p.poll() is not None for p in loadgens):
                raise RuntimeError(f"a process of the run exited before it began; see {directory}")
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
            transport = {m: measured_transport_ms(gateway.url, m) for m in models}
            for m, p in zip(models, loadgens, strict=True):
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
    docs = {m: orjson.loads(reports[m].read_bytes()) for m in models}
    decisions = sum(1 for line in (directory / "autoscale.log").read_text().splitlines() if DECISION.search(line))
    return LiveRun(
        over={m: d["counts"]["scheduled"] - d["counts"]["within_qos"] for m, d in docs.items()},
        queries={m: d["counts"]["scheduled"] for m, d in docs.items()},
        cost=cost_of(samples, setting.prices, c.scale), decisions=decisions, wall_s=wall, samples=samples,
        timelines={m: d["timeline"] for m, d in docs.items()}, transport_ms=transport,
    )


def over_per_bin(timeline: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A load report's timeline as (bin start s, queries sent, queries not within target) per bin."""
    bins = timeline["bins"]
    t = np.array([b["t_s"] for b in bins], dtype=float)
    sent = np.array([b["sent"] for b in bins], dtype=float)
    within = np.array([b["within_qos_pct"] if b["within_qos_pct"] is not None else 100.0 for b in bins]) / 100.0
    return t, sent, sent * (1.0 - within)


def _darker(color: str, f: float = 0.6) -> tuple[float, float, float]:
    """``color`` darkened: a model's simulated lines beside its live ones, the same hue."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return r * f, g * f, b * f


def plot(setting: LiveSetting, live: LiveRun, sim: LoopRun, queries: dict[str, QueryTrace], c: Compressed,
         path: Path) -> None:
    """Load, instances serving and % over target, live (solid) against simulated (dashed, darker);
    per model for two or three models (one colour per model in every panel, one instances panel
    per model), summed over them for more. Legends sit right of the panels, clear of the lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = setting.models
    each = len(models) <= 3
    series = [[m] for m in models] if each else [list(models)]
    label = (lambda ms: ms[0]) if each else (lambda ms: f"all {len(models)} jobs")
    fig, axes = plt.subplots(2 + len(series), 1, figsize=(12, 2.6 * (2 + len(series)) + 0.6), sharex=True,
                             layout="constrained")
    top, mids, bottom = axes[0], axes[1:-1], axes[-1]
    to_min = 1.0 / c.minute_s  # live or virtual seconds -> trace minutes
    end_s = max(float(q.arrival_ms[-1]) for q in queries.values()) / 1000.0
    edges = np.arange(0.0, end_s + c.minute_s, c.minute_s)
    outside: dict[str, Any] = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}
    for k, ms in enumerate(series):
        counts = sum(np.histogram(queries[m].arrival_ms / 1000.0, edges)[0] for m in ms)
        top.plot(edges[:-1] * to_min, counts / c.minute_s, lw=0.8, color=f"C{k}", label=f"{label(ms)} arrivals")
    if not each and sim.forecast:  # the loop's forecast is logged summed over the models
        f = np.array(sim.forecast)
        top.fill_between(f[:, 0] * to_min, f[:, 1], f[:, 3], color="tab:red", alpha=0.2, lw=0,
                         label="forecast 10-90%,\nmax over the horizon\n(simulated loop)")
    top.set_ylabel("queries/s")
    top.legend(**outside)
    cap = f", cap {setting.cap}" if setting.cap else ""
    top.set_title(f"{setting.name} setting{cap}: live against simulated, the same queries "
                  f"({c.scale:g}x time compression)", fontsize=10)
    t_live = np.array([sample[0] for sample in live.samples])
    settled = 3.0  # trace minutes: the pool's first start-ups, left off a zoomed axis
    for k, (ax, ms) in enumerate(zip(mids, series, strict=True)):
        # Each model's groups in its own panel (no model's line hides another's); the instance
        # types of one model by line width, live and simulated by style and shade.
        mine = [g for g in sim.groups if g.model in ms]
        groups = [[g] for g in mine] if each else [mine]
        shown: list[np.ndarray] = []  # after the first start-ups
        lows: list[float] = []  # the whole run
        for t, keys in enumerate(groups):
            name = str(keys[0]) if each else label(ms)
            idx = [sim.groups.index(key) for key in keys]
            lw = 2.0 if t == 0 and len(groups) > 1 else 1.0
            y_sim = sim.ready[:, idx].sum(axis=1)
            ax.step(sim.ticks_s * to_min, y_sim, where="post", color=_darker(f"C{k}"), lw=lw, ls="--",
                    label=f"{name} simulated")
            y = np.array([sum(sample[1].get(key, (0, 0))[0] for key in keys) for sample in live.samples])
            ax.step(t_live * to_min, y, where="post", color=f"C{k}", lw=lw, label=f"{name} live")
            shown += [y_sim[sim.ticks_s * to_min > settled], y[t_live * to_min > settled]]
            lows += [float(v.min()) for v in (y_sim, y) if v.size]
        if setting.cap:
            ax.axhline(setting.cap, color="0.8", lw=5, zorder=1, label=f"cap ({setting.cap})")
        start = min(lows, default=0.0)
        after = min((float(v.min()) for v in shown if v.size), default=start)
        if not each and start < after - 5:  # the start-up minutes would squash the rest into a line
            high = max(float(v.max()) for v in shown if v.size)
            ax.set_ylim(after - 1.5, max(high, setting.cap or 0) + 1.0)
            ax.text(0.01, 0.04, f"minutes 0-{settled:g}: the pool starts at {start:g} instances, below the axis",
                    transform=ax.transAxes, fontsize=8, color="0.3")
        ax.set_ylabel(f"instances serving\n({label(ms)})" if each else "instances serving")
        ax.legend(**outside)
    targets = {setting.target_ms(m) for m in models}
    target = f"{targets.pop():g} ms" if len(targets) == 1 else ", ".join(f"{m} {setting.target_ms(m):g} ms" for m in models)
    bin_min = 0.0
    for k, ms in enumerate(series):
        parts = [over_per_bin(live.timelines[m]) for m in ms]
        n = min(len(part[0]) for part in parts)
        sent = sum(part[1][:n] for part in parts)
        over = sum(part[2][:n] for part in parts)
        bottom.plot(parts[0][0][:n] * to_min, np.where(sent > 0, 100.0 * over / np.maximum(sent, 1), np.nan),
                    lw=0.9, color=f"C{k}", label=f"{label(ms)} live")
        bin_min = live.timelines[ms[0]]["bin_s"] * to_min
        step = max(1, round(live.timelines[ms[0]]["bin_s"] / sim.tick_s))
        whole = sim.arrivals.shape[0] // step * step
        j = [sim.models.index(m) for m in ms]
        a = sim.arrivals[:whole, j].sum(axis=1).reshape(-1, step).sum(axis=1)
        o = sim.over[:whole, j].sum(axis=1).reshape(-1, step).sum(axis=1)
        st = sim.ticks_s[:whole].reshape(-1, step)[:, 0] - sim.tick_s
        bottom.plot(st * to_min, np.where(a > 0, 100.0 * o / np.maximum(a, 1), np.nan), lw=0.9, ls="--",
                    color=_darker(f"C{k}"), label=f"{label(ms)} simulated")
    width = f"{bin_min:.3g}-minute" if bin_min >= 1 else f"{60 * bin_min:.3g} s (trace time)"
    bottom.set_ylabel(f"% over target\n({target}),\nper {width} bin")
    percent_symlog(bottom)
    bottom.set_xlabel("trace minute")
    bottom.legend(**outside)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_setting(args: argparse.Namespace) -> LiveSetting:
    if args.setting == "faro":
        return FaroLive(args.cap)
    return HeteroLive({"rm2": args.rm2_peak, "dien": args.dien_peak})


def live_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.autoscale.live", description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=("hetero", "faro"), default="hetero", help="the setting (default hetero)")
    ap.add_argument("--minutes", type=int, default=120, help="trace minutes to replay (default 120; 360 is all)")
    ap.add_argument("--minute-s", type=float, default=5.0, help="seconds per trace minute (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rm2-peak", type=float, default=40.0, help="hetero: rm2's peak rate, q/s (default 40)")
    ap.add_argument("--dien-peak", type=float, default=100.0, help="hetero: dien's peak rate, q/s (default 100)")
    ap.add_argument("--cap", type=int, default=36, help="faro: the CPU cap (default 36)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=FIGURE, help=f"figure (default {FIGURE})")
    ap.add_argument("--workdir", type=Path, help="keep the config, traces, logs and load reports here")
    ap.add_argument("--replot", type=Path, metavar="JSON",
                    help="draw --plot again from an earlier run's --json (simulates again, no live run)")
    return ap


def run_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a run's settings (from the command line or an earlier run's JSON), or None."""
    if args.minutes < 1 or not 0.5 <= args.minute_s <= 60 or args.cap < 10 or args.seed < 0:
        return "--minutes >= 1, --minute-s in [0.5, 60], --cap >= 10 (one per job), --seed >= 0"
    if not all(math.isfinite(p) and 0 < p <= 1e5 for p in (args.rm2_peak, args.dien_peak)):
        return "--rm2-peak and --dien-peak: rates in (0, 1e5] q/s"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = live_parser()
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.plot)
    if problem := run_problem(args):
        ap.error(problem)
    with contextlib.ExitStack() as stack:
        directory = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kairos-live-loop-")))
        directory.mkdir(parents=True, exist_ok=True)
        return replay(make_setting(args), args, directory)


def replot(source: Path, path: Path) -> int:
    """The figure of an earlier run: its live samples from its JSON, the simulation run again
    (deterministic for the seed)."""
    try:
        doc = orjson.loads(source.read_bytes())
        live = LiveRun.from_doc(doc["live"])
        if doc["setting"] not in ("hetero", "faro"):
            raise ValueError(f"setting {doc['setting']!r}")
        args = live_parser().parse_args(["--setting", doc["setting"]])  # the defaults, then the run's own
        args.minutes, args.minute_s, args.seed = doc["minutes"], doc["minute_s"], doc["seed"]
        if doc["setting"] == "faro":
            args.cap = doc["cap"]
        else:
            args.rm2_peak, args.dien_peak = doc["peaks"]["rm2"], doc["peaks"]["dien"]
        if problem := run_problem(args):
            raise ValueError(problem)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        print(f"--replot {source}: not a JSON this benchmark wrote with its live samples ({exc!r})", file=sys.stderr)
        return 2
    c, seed, minutes = Compressed(float(args.minute_s)), int(args.seed), int(args.minutes)
    setting = make_setting(args)
    with tempfile.TemporaryDirectory(prefix="kairos-live-replot-") as directory:
        cfg_path = setting.write_config(Path(directory), seed)
        queries = setting.traces(seed, minutes, c)
        print(f"{setting.name}: simulating {minutes} trace minutes again for the figure", file=sys.stderr)
        sim = simulate(setting, cfg_path, queries, c, seed)
    plot(setting, live, sim, queries, c, path)
    print(f"figure: {path}")
    return 0


def replay(setting: LiveSetting, args: argparse.Namespace, directory: Path) -> int:
    c = Compressed(args.minute_s)
    cfg_path = setting.write_config(directory, args.seed)
    queries = setting.traces(args.seed, args.minutes, c)
    print(f"{setting.name}: {args.minutes} trace minutes at {args.minute_s:g} s each: "
          f"{sum(len(q) for q in queries.values())} queries; simulating", file=sys.stderr)
    sim = simulate(setting, cfg_path, queries, c, args.seed)
    static = simulate(setting, cfg_path, queries, c, args.seed, setting.static())
    live = asyncio.run(run_live(setting, cfg_path, queries, c, directory))
    print("  transport measured live (mean / p99 ms): " + ", ".join(
        f"{m} {a or 0:.2f} / {b or 0:.2f}" for m, (a, b) in live.transport_ms.items()), file=sys.stderr)
    trips = simulate(setting, cfg_path, queries, c, args.seed, transport=live.transport_ms)
    rows = [
        ("live (planned)", live.cost, live.over_target, live.per_model(), live.decisions),
        ("simulated (planned)", sim.cost * c.scale, sim.over_target, sim.per_model(), len(sim.decisions)),
        ("simulated, live trips", trips.cost * c.scale, trips.over_target, trips.per_model(), len(trips.decisions)),
        ("simulated static peak", static.cost * c.scale, static.over_target, static.per_model(), 0),
    ]
    base = static.cost * c.scale
    models = setting.models
    each = len(models) <= 3
    cap = f", cap {setting.cap}" if setting.cap else ""
    print(f"{setting.name}{cap}: {args.minutes} trace minutes, {c.scale:g}x compressed, seed {args.seed}; "
          f"live {live.wall_s:.0f} s")
    per_head = "".join(f"{m:>8}" for m in models) if each else f"{'worst job':>16}"
    print(f"{'run':<26}{'cost $':>9}{'x static':>10}{'% over':>9}{per_head}{'decisions':>11}")
    for name, cost, over, per, n in rows:
        if each:
            per_cols = "".join(f"{per[m] * 100:>8.2f}" for m in models)
        else:
            worst = max(per, key=lambda m: per[m])
            per_cols = f"{worst:>8}{per[worst] * 100:>8.2f}"
        print(f"{name:<26}{cost:>9.2f}{cost / base:>10.2f}{over * 100:>9.2f}{per_cols}{n:>11}")
    plot(setting, live, sim, queries, c, args.plot)
    print(f"figure: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({
            "setting": setting.name, "cap": setting.cap, "minutes": args.minutes, "minute_s": args.minute_s,
            "seed": args.seed, "peaks": getattr(setting, "peaks", None),
            "transport_ms": {m: {"mean": a, "p99": b} for m, (a, b) in live.transport_ms.items()},
            "runs": {name: {"cost": cost, "x_static": cost / base, "over_target_pct": over * 100,
                            "per_model_pct": {m: v * 100 for m, v in per.items()}, "decisions": n}
                     for name, cost, over, per, n in rows},
            "live": live.to_doc(),
        }, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
