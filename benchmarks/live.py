"""Live check of the simulator, and the peer a user would otherwise deploy.

``python -m benchmarks.live`` — for rm2 and dien on the benchmark's pools, the max QPS with
>= 99% of queries within QoS of ``kairos`` and ``fcfs`` through real processes
(``kairos-servers`` + ``kairos-gateway`` + the load generator), over the simulator's max
for the same policy, pool and workload (HTTP with the binary tensor extension, the cheaper of
the two transports in Python; the pool spread over 2 worker processes); and haproxy (``balance leastconn``, HTTP) in front of
the same pool, driven by the same workload. Writes results/live.{json,md,png}.

The simulator's side is the same experiment on the same queries: its search starts where the
live search starts, and each of its steps replays exactly the queries of the live step at that
rate, counted as a live step counts them (``sim_live_search``), and run as the gateway runs
(``GatewaySettings``: late queries shed at once with admission control, each deadline 0.5 ms early
for the client's legs). The policies table's own max (``benchmarks.policies``: 20,000-query steps,
a warm-up left out, every query served) is shown beside it; it ran on other queries, and which
queries a step holds moves a max by a few percent.

``--searches N`` runs each gateway search N times on the same processes and reports the median
(the lower one for an even N) with every search beside it: a live step's verdict turns on a few
bursts, and on the 2-core machine single dien searches spread by ~10%.

A policy the simulator finds unable to reach the target at any rate (max 0) is run live at a
fixed rate instead, and its fraction within QoS is compared with the simulator's at that rate.

The simulator's pool is ideal: no time passes between an instance's answer and its next query.
A live instance loses the round trip around each query (the gateway's measured transport
overhead, ~1-3 ms in Python on 2 cores), which costs a short-QoS model like dien a good part of
its capacity. So each gateway row also gives the simulator's max, on the same queries, with that
round trip (what ``kairos-sim --transport-ms <the gateway's measured mean> --pipeline`` models),
and with each query's round trip drawn from a log-normal with the measured mean and 99th
percentile (``... --transport-p99-ms <measured p99>``): a QoS-tight policy feels the tail of the
round trip, not its mean. These are the simulator's predictions for this transport, next to its
ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadConfig, build_workload, find_max, run_async, run_load, search_rates
from benchmarks.policies import POOLS
from benchmarks.processes import ServersProcess, start_gateway, start_servers
from gateway.config import LATE_QUERIES, GatewayConfig
from gateway.dispatch import OverloadControl
from gateway.errors import ConfigError
from gateway.profiles import load_catalogue
from gateway.sim import SimResult, parse_pool, simulate
from gateway.sim.search import find_max as sim_find_max

HAPROXY_CFG = """global
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
frontend v2
    bind 127.0.0.1:{port}
    default_backend pool
backend pool
    balance leastconn
{servers}
"""


@dataclass
class Row:
    model: str
    system: str  # "kairos-gateway/<policy>" or "haproxy/leastconn"
    sim_max: float | None  # the simulator's search on the live search's own queries (``sim_live_search``)
    live_max: float | None
    fixed_rate: float | None = None  # when the max is 0: the rate compared instead
    live_within_pct: float | None = None
    sim_within_pct: float | None = None
    transport_ms: float | None = None  # the gateway's measured mean round trip beyond service
    transport_p99_ms: float | None = None  # and its 99th percentile
    sim_transport_max: float | None = None  # the simulator's max with the mean round trip
    sim_drawn_max: float | None = None  # ... with round trips drawn with that mean and p99
    table_sim_max: float | None = None  # the policies table's simulator max (longer steps, other queries)
    live_searches: tuple[float, ...] = ()  # every live search's max; ``live_max`` is their median
    seconds: float = 0.0

    @property
    def ratio(self) -> float | None:
        if self.sim_max and self.live_max is not None:
            return self.live_max / self.sim_max
        return None

    @property
    def transport_ratio(self) -> float | None:
        if self.sim_transport_max and self.live_max is not None:
            return self.live_max / self.sim_transport_max
        return None

    @property
    def drawn_ratio(self) -> float | None:
        if self.sim_drawn_max and self.live_max is not None:
            return self.live_max / self.sim_drawn_max
        return None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_config(directory: Path, model: str, pool: str, qos_ms: float, settings: GatewaySettings) -> Path:
    doc = {
        "model": model,
        "qos_ms": qos_ms,
        "pool": [{"type": t, "count": n} for t, n in parse_pool(pool)],
        "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(directory / "instances.json")},
        "gateway": {"http_port": 0, "grpc_port": 0, "late_queries": settings.late_queries},
    }
    path = directory / f"{model}.json"
    path.write_text(json.dumps(doc))
    return path


def start_haproxy(servers: ServersProcess, port: int, directory: Path) -> subprocess.Popen[bytes]:
    lines = "\n".join(
        f"    server {inst.name} {inst.http.removeprefix('http://')}" for inst in servers.instances
    )
    cfg = directory / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers=lines))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    proc = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"haproxy did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
    return proc


def measured_transport_ms(url: str, model: str | None = None) -> tuple[float | None, float | None]:
    """The gateway's transport overhead (ms) over its recent queries, mean and 99th percentile,
    from /metrics (of ``model``; without it, the first model listed)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    labels = r"(?:{[^}]*})?" if model is None else rf'{{model="{re.escape(model)}"}}'

    def gauge(stat: str) -> float | None:
        m = re.search(rf"^kairos_transport_overhead_{stat}_seconds{labels} (\S+)$", text, re.MULTILINE)
        return None if m is None else 1000.0 * float(m[1])

    return gauge("mean"), gauge("p99")


# The gateway's ``--client-margin-ms``: the QoS is met at the load generator, and the legs between
# it and the gateway (its send, the request's way in before the gateway has read it, the answer's
# way back) took 0.50-0.67 ms at the median at 560 dien QPS on the 2-core development machine
# (the load generator's latency minus the gateway's own ``gateway_e2e_us``).
CLIENT_MARGIN_MS = 0.5


@dataclass(frozen=True)
class Steps:
    """How long a live step runs: at least ``queries`` queries and ``seconds`` seconds. A fixed
    count gives a fast model's step only a few seconds, and its verdict then turns on a burst or
    two: over 2026-11-22, dien's live max spread over 435-551 QPS in 9 searches with 2,000-query
    steps, and over 474-512 QPS in 4 with about 6,000 (12 s at ~500 QPS)."""

    queries: int = 2000
    seconds: float = 12.0

    def count(self, rate: float) -> int:
        return max(self.queries, math.ceil(rate * self.seconds))

    def describe(self) -> str:
        return f"at least {self.queries:,} queries and {self.seconds:g} s"


TARGET = 0.99
RESOLUTION = 0.03  # of a search, relative
MIN_FRACTION = 0.3  # a search gives up below this fraction of its first rate


def median_max(maxima: list[float]) -> float:
    """The median of several searches' maxima; for an even count the lower middle one, a rate
    that was run and passed, not a midpoint no search ran."""
    return statistics.median_low(maxima)


def live_max(url: str, base: LoadConfig, start_qps: float, steps: Steps) -> float:
    """Live find-max from ``start_qps``; 0 when even 30% of it misses the target."""
    result = run_async(find_max(
        replace(base, url=url), target=TARGET, start_qps=start_qps, step_queries=steps.queries,
        min_step_queries=steps.queries, step_duration_s=steps.seconds, min_qps=MIN_FRACTION * start_qps,
        resolution=RESOLUTION,
        on_step=lambda s: _say(f"    {s.rate_qps:8.1f} QPS: {'pass' if s.passed else 'fail'}"
                              f" ({s.report.within_qos_pct:.2f}% within QoS)"),
    ))
    return result.max_qps


@dataclass(frozen=True)
class GatewaySettings:
    """What the live gateway is started with, and so what its simulated twin runs with: a late
    query is shed (``late_queries``, the gateway's default, with admission control) and each
    query's deadline leaves ``client_margin_ms`` of its QoS to the legs the gateway cannot see.
    The simulator has no such legs, so it counts a query within QoS when it ends within the QoS
    less that margin, as the gateway aims."""

    client_margin_ms: float = CLIENT_MARGIN_MS
    late_queries: str = GatewayConfig().late_queries

    def gateway_args(self) -> list[str]:
        return ["--client-margin-ms", str(self.client_margin_ms)]

    def sim_options(self, qos_ms: float) -> dict[str, Any]:
        target = qos_ms - self.client_margin_ms
        return {"qos_ms": target, "overload": OverloadControl.for_mode(self.late_queries, target)}


def simulate_load(load: LoadConfig, pool: str, policy: str, settings: GatewaySettings,
                  **transport: Any) -> SimResult:
    """The simulator, set up as the live gateway (``settings``), on exactly the queries ``load``
    sends, every one of them measured (no warm-up left out, as a live run counts them).
    ``transport``: ``simulate``'s options."""
    return simulate(build_workload(load), model=load.model, pool=parse_pool(pool), policy=policy, seed=load.seed,
                    warmup=0.0, **settings.sim_options(float(load.qos_ms or 0)), **transport)


def sim_live_search(base: LoadConfig, pool: str, policy: str, start_qps: float, steps: Steps,
                    settings: GatewaySettings, **transport: Any) -> float:
    """The live search, run by the simulator on the same queries: from the same first rate, each
    step simulates exactly the queries the live step at that rate sends (seed, rate and count),
    and passes as a live step does (>= 99% of all its queries within QoS). Only the pool differs
    from the live search: a live step's verdict also turns on which queries it holds, and over
    seeds 0-2 the simulator's own max for dien spread by ~5% (575-625 QPS, transport drawn).
    ``transport``: ``simulate``'s transport options."""

    async def step(rate: float) -> bool:
        n = steps.count(rate)
        res = simulate_load(replace(base, rate=rate, queries=n), pool, policy, settings, **transport)
        return int(res.within_qos().sum()) >= math.ceil(TARGET * n - 1e-9)

    return asyncio.run(search_rates(step, start_qps, resolution=RESOLUTION, min_qps=MIN_FRACTION * start_qps,
                                    max_qps=1e6, max_steps=24))


def at_fixed_rate(url: str, base: LoadConfig, rate: float, queries: int, pool: str,
                  policy: str | None, settings: GatewaySettings) -> tuple[float, float | None]:
    """(live % within QoS, the simulator's % for the same queries when ``policy`` is given)."""
    load = replace(base, url=url, rate=rate, queries=queries)
    report = run_async(run_load(load))
    if policy is None:
        return report.within_qos_pct, None
    return report.within_qos_pct, 100.0 * simulate_load(load, pool, policy, settings).attainment


def run_model(model: str, policies: list[str], haproxy: bool, steps: Steps, sim_queries: int,
              haproxy_port: int, workers: int, settings: GatewaySettings = GatewaySettings(),
              searches: int = 1) -> list[Row]:
    qos = load_catalogue().qos(model)
    pool = POOLS[model]
    rows: list[Row] = []
    base = LoadConfig(url="http://127.0.0.1:1", model=model, rate=1.0, qos_ms=qos, seed=0, binary=True)
    sims = {p: sim_find_max(model=model, qos_ms=qos, pool=parse_pool(pool), policy=p, queries=sim_queries).max_qps
            for p in dict.fromkeys(["kairos", *policies])}
    # A policy with no sim max is compared at a rate the pool carries easily: half kairos's max.
    fixed_rate = round(0.5 * sims["kairos"], 1)
    with tempfile.TemporaryDirectory(prefix=f"kairos-live-{model}-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, model, pool, qos, settings)
        servers = start_servers(config, directory / "instances.json", ["--workers", str(workers)], directory)
        try:
            _say(f"{model}: {servers.ready_line}")
            for policy in policies:
                started = time.monotonic()
                _say(f"  kairos-gateway --policy {policy} (sim max {sims[policy]:.1f} QPS)")
                gateway = start_gateway(config, ["--policy", policy, "--address-file", str(servers.address_file),
                                                 *settings.gateway_args()], directory)
                url = gateway.url
                try:
                    if sims[policy] > 0:
                        maxima = []
                        for k in range(searches):
                            if searches > 1:
                                _say(f"    live search {k + 1} of {searches}")
                            maxima.append(live_max(url, base, sims[policy], steps))
                        row = Row(model, f"kairos-gateway/{policy}", None, median_max(maxima),
                                  table_sim_max=sims[policy], live_searches=tuple(maxima))
                    else:
                        live_pct, sim_pct = at_fixed_rate(url, base, fixed_rate, steps.count(fixed_rate),
                                                          pool, policy, settings)
                        row = Row(model, f"kairos-gateway/{policy}", 0.0, None, fixed_rate, live_pct, sim_pct,
                                  table_sim_max=0.0)
                    row.transport_ms, row.transport_p99_ms = measured_transport_ms(url)
                finally:
                    gateway.stop()
                if sims[policy] > 0:
                    row.sim_max = sim_live_search(base, pool, policy, sims[policy], steps, settings)
                    _say(f"    sim on the live search's queries: {row.sim_max:.1f} QPS")
                if row.sim_max and row.transport_ms:
                    row.sim_transport_max = sim_live_search(base, pool, policy, sims[policy], steps, settings,
                                                            transport_ms=row.transport_ms, pipeline=True)
                    _say(f"    sim with {row.transport_ms:.2f} ms transport: {row.sim_transport_max:.1f} QPS")
                    p99 = row.transport_p99_ms
                    if p99 is not None:
                        try:
                            row.sim_drawn_max = sim_live_search(
                                base, pool, policy, sims[policy], steps, settings,
                                transport_ms=row.transport_ms, transport_p99_ms=p99, pipeline=True,
                            )
                            _say(f"    sim with transport drawn (mean {row.transport_ms:.2f}, p99 {p99:.2f} ms):"
                                 f" {row.sim_drawn_max:.1f} QPS")
                        except ConfigError as exc:  # no log-normal has this mean and p99
                            _say(f"    sim with transport drawn: skipped ({exc})")
                row.seconds = time.monotonic() - started
                rows.append(row)
            if haproxy:
                started = time.monotonic()
                _say("  haproxy leastconn (HTTP)")
                proc = start_haproxy(servers, haproxy_port, directory)
                url = f"http://127.0.0.1:{haproxy_port}"
                try:
                    best = live_max(url, base, fixed_rate, steps)
                    row = Row(model, "haproxy/leastconn", None, best)
                    if best == 0:
                        row.fixed_rate = fixed_rate
                        row.live_within_pct, _ = at_fixed_rate(url, base, fixed_rate, steps.count(fixed_rate),
                                                               pool, None, settings)
                finally:
                    proc.terminate()
                    proc.wait(10)
                row.seconds = time.monotonic() - started
                rows.append(row)
        finally:
            servers.stop()
    return rows


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _live_cell(r: Row) -> str:
    if len(r.live_searches) < 2:
        return _f(r.live_max)
    return f"{_f(r.live_max)} (median of {', '.join(f'{m:.1f}' for m in r.live_searches)})"


def render(rows: list[Row]) -> str:
    out = [
        "| model | system | policies-table sim max | sim max, same queries | live max QPS | live / sim |"
        " transport mean / p99 |"
        " sim max, mean transport | live / it | sim max, drawn transport | live / that sim |"
        " fixed rate | live within QoS | sim within QoS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        transport = "-" if r.transport_ms is None else f"{r.transport_ms:.2f} / {_f(r.transport_p99_ms, '{:.2f}')} ms"
        out.append(
            f"| {r.model} | {r.system} | {_f(r.table_sim_max)} | {_f(r.sim_max)} | {_live_cell(r)} |"
            f" {_f(r.ratio, '{:.2f}')} |"
            f" {transport} | {_f(r.sim_transport_max)} | {_f(r.transport_ratio, '{:.2f}')} |"
            f" {_f(r.sim_drawn_max)} | {_f(r.drawn_ratio, '{:.2f}')} |"
            f" {_f(r.fixed_rate)} | {_f(r.live_within_pct, '{:.2f}%')} | {_f(r.sim_within_pct, '{:.2f}%')} |"
        )
    return "\n".join(out)


def plot(rows: list[Row], path: Path) -> None:
    """One panel per model, linear scale: each system's simulated maxima beside its live max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    series = [
        ("simulated max (no transport, the live search's queries, shed as live)", lambda r: r.sim_max),
        ("simulated, measured mean transport", lambda r: r.sim_transport_max),
        ("simulated, transport drawn (measured mean, p99)", lambda r: r.sim_drawn_max),
        ("live max", lambda r: r.live_max),
    ]
    w = 0.2
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model]
        for k, (label, value) in enumerate(series):
            ax.bar([i + (k - 1.5) * w for i in range(len(mine))], [value(r) or 0 for r in mine], w, label=label)
        # Several live searches: their range on the live bar (the bar is their median).
        for i, r in enumerate(mine):
            if len(r.live_searches) > 1 and r.live_max is not None:
                lo, hi = min(r.live_searches), max(r.live_searches)
                ax.errorbar(i + 1.5 * w, r.live_max, yerr=[[r.live_max - lo], [hi - r.live_max]], fmt="none",
                            ecolor="black", capsize=3, lw=1,
                            label=f"range of the {len(r.live_searches)} live searches (bar: their median)")
        # A system with no max has no bars: its column says so and gives the fixed-rate comparison
        # that stands in for it, which was otherwise only in the table.
        top = max([value(r) or 0 for r in mine for _, value in series] + [1.0])
        for i, r in enumerate(mine):
            if not any(value(r) for _, value in series):
                lines = ["no rate reaches", "99% within QoS"]
                if r.fixed_rate is not None:
                    lines += ["", f"at {r.fixed_rate:.1f} q/s,", "within QoS:", f"live {_f(r.live_within_pct, '{:.2f}%')}"]
                    if r.sim_within_pct is not None:
                        lines.append(f"sim {r.sim_within_pct:.2f}%")
                ax.text(i, top / 2, "\n".join(lines), ha="center", va="center", fontsize=7,
                        bbox={"boxstyle": "round", "fc": "0.95", "ec": "0.8"})
        ax.set_xticks(range(len(mine)), [r.system.replace("/", "\n") for r in mine], fontsize=7)
        ax.set_title(model)
        ax.set_ylabel("max QPS with 99% within QoS")
    seen: dict[str, Any] = {}  # the key of every panel: the error bar may be drawn in one only
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=2, fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="rm2,dien")
    p.add_argument("--policies", default="kairos,fcfs")
    p.add_argument("--no-haproxy", action="store_true")
    p.add_argument("--step-queries", type=int, default=Steps.queries,
                   help=f"at least this many queries per live step (default {Steps.queries})")
    p.add_argument("--step-seconds", type=float, default=Steps.seconds,
                   help=f"and at least this long (default {Steps.seconds:g} s)")
    p.add_argument("--sim-queries", type=int, default=20000,
                   help="queries per step of the policies table's simulated find-max (its first rate)")
    p.add_argument("--haproxy-port", type=int, default=18999)
    p.add_argument("--workers", type=int, default=2, help="kairos-servers worker processes (default 2)")
    p.add_argument("--client-margin-ms", type=float, default=CLIENT_MARGIN_MS,
                   help=f"the gateway's client margin (default {CLIENT_MARGIN_MS:g}: see CLIENT_MARGIN_MS)")
    p.add_argument("--late-queries", choices=LATE_QUERIES, default=GatewayConfig().late_queries,
                   help="the gateway's late_queries, which its simulated twin runs with too"
                        f" (default {GatewayConfig().late_queries})")
    p.add_argument("--searches", type=int, default=1,
                   help="live searches per gateway policy, on the same processes; the table gives their median"
                        " and each one (default 1)")
    p.add_argument("--out", default="results/live")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in POOLS]
    if unknown:
        p.error(f"--models: no benchmark pool for {', '.join(unknown)}; expected some of {', '.join(POOLS)}")
    haproxy = not args.no_haproxy
    if haproxy and shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        p.error("haproxy is not installed (apt-get install haproxy), or pass --no-haproxy")
    if args.searches < 1:
        p.error("--searches: expected >= 1")
    if args.step_queries < 100 or not args.step_seconds >= 0:
        p.error("--step-queries: expected >= 100; --step-seconds: expected >= 0")
    if not 0 <= args.client_margin_ms < 5.0:
        p.error("--client-margin-ms: expected >= 0 and < 5 (the tightest benchmark QoS is dien's 35 ms)")
    steps = Steps(args.step_queries, args.step_seconds)
    settings = GatewaySettings(args.client_margin_ms, args.late_queries)
    _say(f"live find-max steps: {steps.describe()} each")
    started = time.monotonic()
    rows: list[Row] = []
    for model in models:
        rows.extend(run_model(model, args.policies.split(","), haproxy, steps, args.sim_queries,
                              args.haproxy_port, args.workers, settings, args.searches))
    table = render(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "command": "python -m benchmarks.live " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "step_queries": args.step_queries,
        "step_seconds": args.step_seconds,
        "sim_queries": args.sim_queries,
        "searches": args.searches,
        "gateway": {"client_margin_ms": settings.client_margin_ms, "late_queries": settings.late_queries},
        "rows": [{**r.__dict__, "ratio": r.ratio, "transport_ratio": r.transport_ratio, "drawn_ratio": r.drawn_ratio}
                 for r in rows],
    }
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    plot(rows, out.with_suffix(".png"))
    _say(f"wrote {out}.json/.md/.png in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
