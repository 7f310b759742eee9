"""Benchmark: Envoy with the endpoint picker (``kairos-gateway --mode epp``) against the gateway
itself, and against Envoy's own least-request balancing, on the same pool, in one run.

Per model, one ``kairos-servers`` pool (the heterogeneous pool of ``benchmarks.policies``) and
three fronts on it, all real processes: the gateway (V2 HTTP/gRPC), Envoy + the picker, Envoy
alone (``LEAST_REQUEST``). For each front, ``kairos-loadgen --find-max`` finds the highest rate
at which 99% of queries are answered within QoS (Poisson arrivals, the production batch mix,
seeded; a search stops halving at ``--min-rate``, where a front that misses reports 0). Then, at
one common rate (``--fixed-share`` of the gateway's maximum, or the floor), each front
takes the same workload for ``--fixed-s`` seconds while the CPU time of the gateway, the picker
and Envoy is read from /proc: the picker's CPU per query against the gateway's is the issue's
target (>= 3x the queries per core), with the share within QoS and the p99 each front gives.

    python -m benchmarks.epp --models dien,rm2 --step-queries 1000 --min-rate 25 \
        --out results/epp.json --plot benchmarks/figures/epp.png

All processes share this machine's cores (2 here): maxima are the machine's as much as the
fronts', and are compared within one run only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.envoy import least_request_bootstrap, picker_bootstrap, start_envoy
from benchmarks.policies import POOLS
from benchmarks.processes import (
    console_script,
    cpu_seconds,
    free_port,
    running,
    start_gateway,
    start_picker,
    start_servers,
)
from gateway.backend.picked import host_port
from gateway.profiles import load_catalogue
from gateway.sim.pool import parse_pool

FRONTS = ("gateway", "envoy+picker", "envoy least-request")


@dataclass(frozen=True)
class Front:
    name: str
    url: str
    routing_headers: bool  # the picker reads the batch from headers
    watched: dict[str, int]  # process label -> pid, whose CPU is read


def write_config(directory: Path, model: str, pool: str) -> Path:
    doc = {
        "model": model,
        "qos_ms": load_catalogue().qos(model),
        "pool": [{"type": t, "count": n} for t, n in parse_pool(pool)],
        "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(directory / "instances.json")},
        "gateway": {"http_port": 0, "grpc_port": 0, "epp_port": 0},
    }
    path = directory / f"{model}.json"
    path.write_text(json.dumps(doc))
    return path


@contextmanager
def fronts(model: str, directory: Path) -> Iterator[list[Front]]:
    """The pool and the three fronts on it, stopped on the way out."""
    config = write_config(directory, model, POOLS[model])
    with ExitStack() as stack:
        servers = start_servers(config, directory / "instances.json", directory=directory)
        stack.enter_context(running(servers))
        address = ["--address-file", str(servers.address_file)]
        gateway = start_gateway(config, address, directory)
        stack.enter_context(running(gateway))
        picker = start_picker(config, address, directory)
        stack.enter_context(running(picker))
        proxied = start_envoy(picker_bootstrap(f"127.0.0.1:{free_port()}", picker.epp, f"127.0.0.1:{free_port()}"), directory)
        stack.enter_context(running(proxied))
        plain = start_envoy(
            least_request_bootstrap(
                f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                [host_port(i.http) for i in servers.instances], [i.grpc for i in servers.instances],
            ),
            directory,
        )  # fmt: skip
        stack.enter_context(running(plain))
        yield [
            Front("gateway", f"http://{gateway.http}", False, {"gateway": gateway.pid}),
            Front("envoy+picker", proxied.url, True, {"picker": picker.pid, "envoy": proxied.pid}),
            Front("envoy least-request", plain.url, False, {"envoy": plain.pid}),
        ]


def loadgen(front: Front, model: str, args: list[str], directory: Path) -> dict[str, Any]:
    """One ``kairos-loadgen`` run against ``front`` (its JSON report), with the CPU seconds the
    watched processes spent meanwhile."""
    out = directory / f"loadgen-{time.monotonic_ns()}.json"
    cmd = [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", front.url, "--model", model,
           "--json", str(out), "--max-error-rate", "1", *args]  # fmt: skip
    if front.routing_headers:
        cmd.append("--routing-headers")
    before = {label: cpu_seconds(pid) for label, pid in front.watched.items()}
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)  # its progress shows on stderr
    spent = {label: cpu_seconds(pid) - before[label] for label, pid in front.watched.items()}
    report = dict(json.loads(out.read_text()))
    report["cpu_s"] = spent
    return report


def measure(
    model: str, step_queries: int, fixed_s: float, fixed_share: float, min_rate: float, seed: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kairos-epp-") as tmp, fronts(model, Path(tmp)) as fs:
        directory = Path(tmp)
        maxima: dict[str, float] = {}
        start = 100.0
        for front in fs:
            # Searches after the gateway's start at its maximum; all stop halving at the floor,
            # where a front that misses the target reports 0 (below it a step takes minutes).
            report = loadgen(
                front, model,
                ["--find-max", "--step-queries", str(step_queries), "--seed", str(seed),
                 "--rate", str(start), "--min-rate", str(min_rate)],
                directory,
            )  # fmt: skip
            maxima[front.name] = float(report["max_qps"])
            if front.name == "gateway" and maxima["gateway"] > 0:
                start = maxima["gateway"]
            print(f"  {model} {front.name}: max {maxima[front.name]:.0f} q/s at 99% within QoS", file=sys.stderr, flush=True)
        # The fronts side by side at one rate: a share of the gateway's maximum, or the floor
        # where the gateway met the target at no rate.
        rate = round(fixed_share * maxima["gateway"], 1) if maxima["gateway"] > 0 else min_rate
        fixed: dict[str, Any] = {}
        for front in fs:
            report = loadgen(front, model, ["--rate", str(rate), "--duration", str(fixed_s), "--seed", str(seed)], directory)
            ok = int(report["counts"]["ok"])
            fixed[front.name] = {
                "within_qos_pct": report["within_qos_pct"],
                "p99_ms": (report.get("latency_ms") or {}).get("p99"),
                "ok": ok,
                "cpu_us_per_query": {k: 1e6 * v / ok if ok else None for k, v in report["cpu_s"].items()},
            }
            cpu = ", ".join(f"{k} {v:.0f} us" for k, v in fixed[front.name]["cpu_us_per_query"].items() if v is not None)
            print(f"  {model} {front.name} at {rate:g} q/s: {report['within_qos_pct']}% within QoS, "
                  f"p99 {fixed[front.name]['p99_ms']} ms, CPU per query: {cpu}", file=sys.stderr, flush=True)  # fmt: skip
    g = fixed["gateway"]["cpu_us_per_query"]["gateway"]
    p = fixed["envoy+picker"]["cpu_us_per_query"]["picker"]
    return {
        "model": model,
        "pool": POOLS[model],
        "max_qps": maxima,
        "fixed_rate_qps": rate,
        "min_rate_qps": min_rate,
        "fixed": fixed,
        "picker_vs_gateway_queries_per_core": g / p if g and p else None,
        "added_p99_ms": _minus(fixed["envoy+picker"]["p99_ms"], fixed["gateway"]["p99_ms"]),
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':6} {'front':20} {'max q/s':>8} {'@rate':>7} {'in QoS %':>9} {'p99 ms':>8} {'CPU us/q':>28}")
    for r in rows:
        for name in FRONTS:
            f = r["fixed"][name]
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in f["cpu_us_per_query"].items() if v is not None)
            p99 = f"{f['p99_ms']:.1f}" if f["p99_ms"] is not None else "-"
            print(f"{r['model']:6} {name:20} {r['max_qps'][name]:8.0f} {r['fixed_rate_qps']:7.0f} "
                  f"{f['within_qos_pct']:9.2f} {p99:>8} {cpu:>28}")  # fmt: skip
        ratio = r["picker_vs_gateway_queries_per_core"]
        added = r["added_p99_ms"]
        print(f"{r['model']:6} picker decides {ratio:.1f}x the queries per core of the gateway; "
              f"p99 through Envoy + picker {added:+.1f} ms" if ratio and added is not None else "")  # fmt: skip


def plot(rows: list[dict[str, Any]], path: str, min_rate: float | None = None) -> None:
    """Left: each front's share within QoS at the common rate, and its max q/s; right: the CPU each
    front spent per query (Envoy + the picker stacked). One colour per front in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    colour = {name: f"C{k}" for k, name in enumerate(FRONTS)}
    width = 0.8 / len(FRONTS)
    ticks = [f"{r['model']} at {r['fixed_rate_qps']:.0f} q/s" for r in rows]
    for k, name in enumerate(FRONTS):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        shares = [r["fixed"][name]["within_qos_pct"] for r in rows]
        left.bar(xs, shares, width, color=colour[name], label=name)
        for x, share, r in zip(xs, shares, rows, strict=True):
            best = r["max_qps"][name]
            floor = r.get("min_rate_qps", min_rate)  # a search that meets the target nowhere stops there
            note = f"max {best:.0f} q/s" if best > 0 else (f"max < {floor:g} q/s" if floor else "max: none found")
            inside = share > 40  # the values inside a tall bar, above a short one
            left.text(x, share - 1.5 if inside else share + 1.5, f"{share:.1f}%\n{note}", ha="center",
                      va="top" if inside else "bottom", fontsize=7, rotation=90, color="white" if inside else "black")
    left.axhline(99.0, color="k", ls="--", lw=0.8, label="99% (the target)", zorder=0.5)
    left.set_ylim(0, 105)  # from 0: bars cut at 80 overstated the gaps
    left.set_xticks(range(len(rows)), ticks)
    left.set_ylabel("% within QoS at the common rate")
    left.set_title("within QoS at one rate; each front's max q/s at 99%", fontsize=9)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    for i, r in enumerate(rows):
        picker = r["fixed"]["envoy+picker"]["cpu_us_per_query"]
        parts = [
            ("gateway", r["fixed"]["gateway"]["cpu_us_per_query"]["gateway"] or 0, 0.0, None),
            ("envoy+picker", picker["envoy"] or 0, 0.0, None),
            ("envoy+picker", picker["picker"] or 0, picker["envoy"] or 0, "//"),  # stacked on Envoy's part
            ("envoy least-request", r["fixed"]["envoy least-request"]["cpu_us_per_query"]["envoy"] or 0, 0.0, None),
        ]
        for name, value, bottom, hatch in parts:
            x = i + (FRONTS.index(name) - 1) * width
            right.bar(x, value, width, bottom=bottom, color=colour[name], hatch=hatch, edgecolor="white", lw=0)
    right.set_xticks(range(len(rows)), ticks)
    right.set_ylabel("CPU per query (us)")
    right.set_title("CPU per query, each front's processes", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[name]) for name in FRONTS]
    handles.insert(2, plt.Rectangle((0, 0), 1, 1, fc=colour["envoy+picker"], hatch="//", ec="white", lw=0))
    labels = ["gateway", "Envoy (with the picker)", "the picker (stacked)", "Envoy least-request"]
    right.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.suptitle("Envoy with the endpoint picker against the gateway, one pool per model, one 2-core machine",
                 fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.epp", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="rm2,dien", help="comma-separated models (default rm2,dien)")
    p.add_argument("--step-queries", type=int, default=1500, help="queries per find-max step (default 1500)")
    p.add_argument("--fixed-s", type=float, default=20.0, help="seconds of the fixed-rate runs (default 20)")
    p.add_argument("--fixed-share", type=float, default=0.8, help="fixed rate, as a share of the gateway's max")
    p.add_argument("--min-rate", type=float, default=20.0, help="where the searches stop halving (default 20 q/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--plot", help="write a figure (PNG)")
    p.add_argument("--from-json", metavar="PATH", help="print and plot the results saved by --out, running nothing")
    args = p.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())["rows"]
        print_table(rows)
        if args.plot:
            plot(rows, args.plot, args.min_rate)
        return
    rows = []
    for model in args.models.split(","):
        if model not in POOLS:
            p.error(f"--models: {model!r} has no pool; expected some of {', '.join(POOLS)}")
        print(f"{model}: pool {POOLS[model]}", file=sys.stderr, flush=True)
        rows.append(measure(model, args.step_queries, args.fixed_s, args.fixed_share, args.min_rate, args.seed))
        if args.out:  # after each model: a long run keeps what it has measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    print_table(rows)
    if args.plot:
        plot(rows, args.plot, args.min_rate)


if __name__ == "__main__":
    main()
