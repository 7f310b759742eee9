"""``kairos-demo``: the default pool, live, under the Kairos distributor and then under FCFS.

Starts ``kairos-servers`` (the pool of config.json) and, for each policy in turn, a
``kairos-gateway``; drives the same seeded open-loop Poisson workload through each with the
load generator; prints live results next to the simulator's prediction for the same queries.
Every process it starts is stopped before it returns, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadConfig, LoadReport, build_workload, run_async, run_load
from benchmarks.processes import GatewayProcess, ServersProcess, start_gateway, start_servers
from gateway.config import Config, load_config
from gateway.errors import KairosError
from gateway.sim import simulate
from gateway.sim.search import find_max
from gateway.usage import plain


@dataclass(frozen=True)
class PolicyRun:
    policy: str
    live: LoadReport
    sim_within_pct: float
    sim_p99_ms: float


def _run_config(config_path: Path, directory: Path) -> Path:
    """config.json with free ports and a private address file, so the demo never clashes."""
    doc: dict[str, Any] = json.loads(config_path.read_text())
    doc.setdefault("servers", {}).update(
        {"http_port": 0, "grpc_port": 0, "address_file": str(directory / "instances.json")}
    )
    doc.setdefault("gateway", {}).update({"http_port": 0, "grpc_port": 0})
    path = directory / "config.json"
    path.write_text(json.dumps(doc))
    return path


def default_rate(config: Config, fraction: float) -> float:
    """A fraction of what the simulator says ``kairos`` sustains on this pool."""
    result = find_max(model=config.model, qos_ms=config.qos_ms, pool=config.pool_spec(), queries=4000)
    return round(fraction * result.max_qps, 1)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_policy(
    config: Config, run_config: Path, servers: ServersProcess, policy: str, load: LoadConfig, directory: Path
) -> PolicyRun:
    gateway: GatewayProcess = start_gateway(
        run_config, ["--policy", policy, "--address-file", str(servers.address_file)], directory
    )
    try:
        _say(f"[{policy}] gateway ready at grpc://{gateway.grpc}; {load.rate} QPS for {load.duration_s} s")
        live = run_async(run_load(replace(load, url=f"grpc://{gateway.grpc}")))
    finally:
        code = gateway.stop()
        if code != 0:
            _say(f"[{policy}] gateway exited {code}: {gateway.stderr()[-500:]}")
    trace = build_workload(load)
    sim = simulate(trace, model=config.model, qos_ms=config.qos_ms, pool=config.pool_spec(), policy=policy,
                   warmup=0.0)
    return PolicyRun(policy, live, 100.0 * sim.attainment, float(sim.percentiles()["p99"]))


def render(config: Config, runs: list[PolicyRun]) -> str:
    pool = " + ".join(f"{n} x {t}" for t, n in config.pool_spec() if n > 0)
    lines = [
        f"{config.model} on {pool}, QoS {config.qos_ms:g} ms",
        "",
        f"{'policy':<10} {'offered':>8} {'achieved':>9} {'within QoS':>11} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'errors':>7} {'sim within QoS':>15} {'sim p99 ms':>11}",
    ]
    for r in runs:
        lat = r.live.latency_ms or {}
        lines.append(
            f"{r.policy:<10} {r.live.offered_qps:>8.1f} {r.live.achieved_qps:>9.1f}"
            f" {r.live.within_qos_pct:>10.2f}% {lat.get('p50', float('nan')):>8.1f}"
            f" {lat.get('p99', float('nan')):>8.1f} {r.live.error_count:>7d}"
            f" {r.sim_within_pct:>14.2f}% {r.sim_p99_ms:>11.1f}"
        )
    return "\n".join(lines)


def plot(runs: list[PolicyRun], qos_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.loadgen.render import log_ticks

    # The tail is what the demo shows: the share of queries slower than each latency, log-log.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    floor = 1.0
    for r in runs:
        s = r.live.samples
        if s is None:
            continue
        lat = (np.asarray(s.done_s, dtype=float) - s.scheduled_s) * 1000.0
        failed = np.array([e is not None for e in s.error]) | np.isnan(lat)
        sent = max(r.live.sent, 1)
        ok = np.sort(lat[~failed])
        slower = 1.0 - np.arange(1, len(ok) + 1) / sent  # failed queries never arrive: they stay in the tail
        floor = min(floor, 1.0 / sent)
        over = 1.0 - r.live.within_qos_pct / 100.0
        ax.step(ok, np.maximum(slower, floor / 2), where="post",
                label=f"{r.policy}: {over:.2%} over QoS ({r.live.within_qos_pct:.2f}% within)")
    ax.axvline(qos_ms, color="red", ls="--", lw=1, label=f"QoS {qos_ms:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis)
    ax.set_ylim(floor / 2, 1.05)
    ax.set_xlabel("latency from scheduled send (ms, log)")
    ax.set_ylabel("share of queries slower (log)")
    ax.set_title("kairos-demo: the latency tail, live")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kairos-demo", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("--config", default="config.json", help="the pool to run (default: config.json)")
    p.add_argument("--policies", default="kairos,fcfs", help="comma-separated (default: kairos,fcfs)")
    p.add_argument("--rate", type=float, help="queries/s (default: 75%% of the simulated kairos max)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per policy (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload, the same for every policy (default 0)")
    p.add_argument("--out", default="results/demo", help="folder for demo.json and demo.png")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.duration <= 0:
            raise KairosError(f"--duration: expected a positive number of seconds, got {args.duration}")
        rate = args.rate if args.rate is not None else default_rate(config, 0.75)
        if rate <= 0:
            raise KairosError(f"--rate: expected a positive number of queries/s, got {rate}")
        policies = [x.strip() for x in args.policies.split(",") if x.strip()]
        load = LoadConfig(url="grpc://127.0.0.1:1", model=config.model, rate=rate, duration_s=args.duration,
                          qos_ms=config.qos_ms, seed=args.seed, progress=True).validate()
    except KairosError as exc:
        print(f"kairos-demo: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kairos-demo-") as tmp:
        directory = Path(tmp)
        run_config = _run_config(Path(args.config), directory)
        _say(f"starting {config.pool_size} instances ({config.model}) ...")
        servers = start_servers(run_config, directory / "instances.json", directory=directory)
        runs: list[PolicyRun] = []
        try:
            _say(servers.ready_line)
            for policy in policies:
                runs.append(run_policy(config, run_config, servers, policy, load, directory))
        except KeyboardInterrupt:
            _say("interrupted")
            return 130
        finally:
            servers.stop()
    table = render(config, runs)
    print(table)
    (out / "demo.json").write_text(json.dumps(
        {"config": args.config, "rate_qps": rate, "duration_s": args.duration, "seed": args.seed,
         "runs": [{"policy": r.policy, "live": r.live.to_json(), "sim_within_qos_pct": r.sim_within_pct,
                   "sim_p99_ms": r.sim_p99_ms} for r in runs]}, indent=1))
    plot(runs, config.qos_ms, out / "demo.png")
    print(f"\nwrote {out / 'demo.json'} and {out / 'demo.png'} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
