"""Benchmark: what the gateway adds, against the same instance reached directly, in one run.

Starts ``kairos-servers --zero-latency`` and ``kairos-gateway`` in front of it, and for each
setup and protocol runs a load client in its own process (uvloop; grpc.aio with pre-serialized
requests, or the gateway's own keep-alive HTTP/1.1 client; batch-1 ncf requests):

* closed loop, ``--concurrency`` requests outstanding, for max queries/s;
* open loop at ``--rate`` q/s, for p50/p99 latency;

each straight to one instance and through the gateway. Setups (``--setups``):

* ``pool8``: 8 instances, one query in flight per instance (the paper's rule, the default);
* ``single64``: 1 instance, ``--depth 64`` in the gateway (the gateway as a thin proxy).

gRPC goes through each of the gateway's gRPC servers (``--grpc-servers``: its own, ``native``,
and grpc.aio's, ``grpcio``), each against its own direct measurement in the same run.

With two or more CPUs the gateway is pinned to cpu 0 and everything else (instances, load
client) to cpu 1 (``os.sched_setaffinity``). The second core then caps the q/s of both paths,
so the report also gives the gateway's own CPU time per query (from /proc, over the closed
loop) and what that makes one core's capacity. Reports q/s, the ratio gateway/direct, the
gateway's µs/query and q/s per core, and the latency it adds (p50/p99 through it minus
direct). ``--repeat`` runs it all again and reports the best and the median. Targets: >= 3,000
q/s on one core; p99 added <= 2 ms at 1,000 q/s.

    python -m benchmarks.gateway_overhead --repeat 3 --out results/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.processes import cpu_seconds, start_gateway, start_servers
from gateway.protocol.v2 import GRPC_INFER_METHOD

if TYPE_CHECKING:
    from benchmarks.loadgen.payloads import PayloadFactory

MODEL = "ncf"
SETUPS = {"pool8": (8, 1), "single64": (1, 64)}  # instances, gateway depth per instance
WARMUP = 200

# -- load client (runs in its own process: ``--worker``) -------------------------------------


def _payloads() -> PayloadFactory:
    """Batch-1 requests with the model's real inputs (ncf: user_id and item_id, INT64 [1, 1])."""
    from benchmarks.loadgen.payloads import PayloadFactory

    return PayloadFactory(MODEL, None, max_batch=1)


async def _sender(
    protocol: str, target: str
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(send one request, close)."""
    if protocol == "grpc":
        import grpc

        channel = grpc.aio.insecure_channel(target)
        call = channel.unary_unary(GRPC_INFER_METHOD)
        body = _payloads().grpc(1, "")

        async def send() -> None:
            await call(body)

        return send, channel.close
    from gateway.backend.http1 import Http1Pool

    host, port = target.rsplit(":", 1)
    pool = Http1Pool(host, int(port))
    path = f"/v2/models/{MODEL}/infer"
    jbody = _payloads().json(1, "")

    async def post() -> None:
        resp = await pool.request("POST", path, "Content-Type: application/json\r\n", jbody)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")

    return post, pool.close


async def _client(protocol: str, target: str, mode: str, value: float, duration: float) -> dict[str, Any]:
    send, close = await _sender(protocol, target)
    for _ in range(WARMUP):  # open connections, warm caches
        await send()
    print("warm", flush=True)  # the parent starts counting the gateway's CPU here
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration

    async def timed() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            await send()
        except Exception:
            errors += 1
            return
        latencies.append(time.perf_counter() - t0)

    if mode == "closed":

        async def worker() -> None:
            while loop.time() < end:
                await timed()

        await asyncio.gather(*(worker() for _ in range(int(value))))
    else:

        async def at(t: float) -> None:
            await asyncio.sleep(max(t - loop.time(), 0))
            await timed()

        await asyncio.gather(*(at(start + i / value) for i in range(int(value * duration))))
    elapsed = loop.time() - start
    await close()
    lat = np.array(latencies) * 1000.0
    return {
        "qps": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "count": len(latencies),
    }


def _worker(argv: list[str]) -> None:
    protocol, target, mode, value, duration = argv[0], argv[1], argv[2], float(argv[3]), float(argv[4])
    import uvloop

    print(json.dumps(uvloop.run(_client(protocol, target, mode, value, duration))), flush=True)


# -- processes -------------------------------------------------------------------------------


def _popen(cmd: list[str], cpu: int | None, **kw: Any) -> subprocess.Popen[str]:
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    return subprocess.Popen(cmd, preexec_fn=pin, text=True, **kw)


def run_client(
    protocol: str, target: str, mode: str, value: float, duration: float, cpu: int | None, watch: int | None
) -> dict[str, Any]:
    """One client run; with ``watch``, also that process's CPU seconds per query over the run."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gateway_overhead",
        "--worker",
        protocol,
        target,
        mode,
        str(value),
        str(duration),
    ]
    proc = _popen(cmd, cpu, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        if first.strip() != "warm":
            raise RuntimeError(f"load client failed before warming up: {first!r}")
        cpu0 = cpu_seconds(watch) if watch else 0.0
        last = proc.stdout.readline()
        cpu1 = cpu_seconds(watch) if watch else 0.0
        proc.wait(duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = dict(json.loads(last))
    if watch and result["count"]:
        result["gateway_us_per_query"] = (cpu1 - cpu0) / result["count"] * 1e6
    return result


def _cpus(cpu: int | None) -> set[int] | None:
    return None if cpu is None else {cpu}


def measure_setup(
    name: str, args: argparse.Namespace, cpus: tuple[int | None, int | None]
) -> list[dict[str, Any]]:
    """One setup: start its pool and gateway, then direct vs gateway for each protocol."""
    n_instances, depth = SETUPS[name]
    gw_cpu, other_cpu = cpus
    tmp = Path(tempfile.mkdtemp(prefix="kairos-overhead-"))
    config = tmp / "config.json"
    # Overhead, not admission: every query is served (with shedding, a 5 ms QoS at 1,000 q/s refuses some).
    gateway_config: dict[str, Any] = {"http_port": 0, "grpc_port": 0, "policy": args.policy, "late_queries": "serve"}
    if args.backend_protocol:
        gateway_config["backend_protocol"] = args.backend_protocol
    config.write_text(json.dumps({
        "model": MODEL, "qos_ms": 5, "pool": [{"type": "r5n.large", "count": n_instances}],
        "servers": {"http_port": 0, "grpc_port": 0}, "gateway": gateway_config,
    }))  # fmt: skip
    address_file = tmp / "instances.json"
    servers = start_servers(config, address_file, ["--zero-latency"], cpus=_cpus(other_cpu))
    rows: list[dict[str, Any]] = []
    try:
        inst = servers.instances[0]
        gw_args = ["--address-file", str(address_file), "--depth", str(depth)]
        for k, grpc_server in enumerate(args.grpc_servers):
            # HTTP does not depend on the gRPC server: measured with the first one only.
            protocols = [p for p in args.protocols if k == 0 or p == "grpc"]
            if not protocols:
                continue
            gateway = start_gateway(config, [*gw_args, "--grpc-server", grpc_server], cpus=_cpus(gw_cpu))
            try:
                targets = {
                    ("grpc", "direct"): inst.grpc,
                    ("grpc", "gateway"): gateway.grpc,
                    ("http", "direct"): inst.http.removeprefix("http://"),
                    ("http", "gateway"): gateway.http,
                }
                server = {"grpc": grpc_server, "http": None}
                rows += [_compare(name, p, server[p], targets, args, other_cpu, gateway.pid) for p in protocols]
            finally:
                gateway.stop()
    finally:
        servers.stop()
    return rows


def _compare(
    name: str,
    protocol: str,
    grpc_server: str | None,
    targets: dict[tuple[str, str], str],
    args: argparse.Namespace,
    cpu: int | None,
    gw_pid: int,
) -> dict[str, Any]:
    n_instances, depth = SETUPS[name]
    row: dict[str, Any] = {"setup": name, "instances": n_instances, "depth": depth, "protocol": protocol,
                           "grpc_server": grpc_server}  # fmt: skip
    for path in ("direct", "gateway"):
        watch = gw_pid if path == "gateway" else None
        print(
            f"[overhead] {name} {_label(row)} {path}: closed x{args.concurrency}, open {args.rate:g} q/s",
            flush=True,
        )
        closed = run_client(
            protocol, targets[protocol, path], "closed", args.concurrency, args.duration, cpu, watch
        )
        opened = run_client(protocol, targets[protocol, path], "open", args.rate, args.duration, cpu, None)
        row[path] = {"closed": closed, "open": opened}
    d, g = row["direct"], row["gateway"]
    row["qps_ratio"] = g["closed"]["qps"] / d["closed"]["qps"]
    us = g["closed"].get("gateway_us_per_query")
    row["gateway_us_per_query"] = us
    row["gateway_qps_per_core"] = 1e6 / us if us else None
    row["added_p50_ms"] = g["open"]["p50_ms"] - d["open"]["p50_ms"]
    row["added_p99_ms"] = g["open"]["p99_ms"] - d["open"]["p99_ms"]
    return row


# -- report ----------------------------------------------------------------------------------

KEYS = ("qps_ratio", "gateway_qps_per_core", "added_p99_ms")


def summarise(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (setup, protocol): best and median over the repeats (best = max q/s, min added p99)."""
    out = []
    for i, first in enumerate(runs[0]):
        rows = [run[i] for run in runs]
        s: dict[str, Any] = {"setup": first["setup"], "protocol": first["protocol"],
                             "grpc_server": first["grpc_server"], "repeats": len(rows)}  # fmt: skip
        for key in ("direct_qps", "gateway_qps", *KEYS):
            values = [v for r in rows if (v := _value(r, key)) is not None]
            if values:
                s[key] = {
                    "best": (min if key == "added_p99_ms" else max)(values),
                    "median": statistics.median(values),
                }
        out.append(s)
    return out


def _label(row: dict[str, Any]) -> str:
    """The protocol, and for gRPC the gateway's server: ``grpc/native``."""
    return row["protocol"] if row["grpc_server"] is None else f"{row['protocol']}/{row['grpc_server']}"


def _value(row: dict[str, Any], key: str) -> float | None:
    if key == "direct_qps":
        return float(row["direct"]["closed"]["qps"])
    if key == "gateway_qps":
        return float(row["gateway"]["closed"]["qps"])
    v = row.get(key)
    return None if v is None else float(v)


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'setup':<8} {'proto':<11} | {'direct q/s':>10} {'gateway q/s':>11} {'ratio':>6} | {'gw us/q':>7} "
          f"{'q/s/core':>8} | {'direct p50/p99':>15} {'gateway p50/p99':>16} | {'added p50':>9} {'added p99':>9}")  # fmt: skip
    for r in rows:
        d, g = r["direct"], r["gateway"]
        us = r["gateway_us_per_query"]
        print(f"{r['setup']:<8} {_label(r):<11} | {d['closed']['qps']:>10.0f} {g['closed']['qps']:>11.0f} "
              f"{r['qps_ratio']:>5.2f}x | {us or float('nan'):>7.0f} {r['gateway_qps_per_core'] or float('nan'):>8.0f} | "
              f"{d['open']['p50_ms']:>6.2f}/{d['open']['p99_ms']:<6.2f}ms {g['open']['p50_ms']:>7.2f}/{g['open']['p99_ms']:<6.2f}ms | "
              f"{r['added_p50_ms']:>7.2f}ms {r['added_p99_ms']:>7.2f}ms")  # fmt: skip


def print_summary(summary: list[dict[str, Any]]) -> None:
    print(f"\nbest / median over {summary[0]['repeats']} runs")
    print(
        f"{'setup':<8} {'proto':<11} | {'direct q/s':>13} {'gateway q/s':>13} {'ratio':>11} | {'gw q/s/core':>13} | {'added p99 ms':>13}"
    )

    def cell(s: dict[str, Any], key: str, fmt: str) -> str:
        v = s.get(key)
        return "-" if v is None else f"{v['best']:{fmt}}/{v['median']:{fmt}}"

    for s in summary:
        print(f"{s['setup']:<8} {_label(s):<11} | {cell(s, 'direct_qps', '.0f'):>13} {cell(s, 'gateway_qps', '.0f'):>13} "
              f"{cell(s, 'qps_ratio', '.2f'):>11} | {cell(s, 'gateway_qps_per_core', '.0f'):>13} | {cell(s, 'added_p99_ms', '.2f'):>13}")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gateway_overhead", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop outstanding requests")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop rate (q/s)")
    ap.add_argument("--policy", default="kairos")
    ap.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    ap.add_argument("--protocols", nargs="+", choices=["grpc", "http"], default=["grpc", "http"])
    ap.add_argument("--backend-protocol", choices=["grpc", "http"], default=None,
                    help="the gateway's gateway.backend_protocol (default: the config default)")
    ap.add_argument("--grpc-servers", nargs="+", choices=["native", "grpcio"], default=["native", "grpcio"],
                    help="the gateway's gRPC servers to measure, each in the same run (default: both)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole benchmark (best and median)")
    ap.add_argument("--out", default="results/gateway_overhead.json")
    args = ap.parse_args()
    cpus: tuple[int | None, int | None] = (0, 1) if len(os.sched_getaffinity(0)) >= 2 else (None, None)
    print(f"[overhead] gateway on cpu {cpus[0]}, instances and load client on cpu {cpus[1]}", flush=True)
    runs = []
    for i in range(args.repeat):
        rows = [row for name in args.setups for row in measure_setup(name, args, cpus)]
        print(f"\nrun {i + 1}/{args.repeat}")
        print_rows(rows)
        runs.append(rows)
    summary = summarise(runs)
    print_summary(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": MODEL, "policy": args.policy, "backend_protocol": args.backend_protocol, "grpc_servers": args.grpc_servers, "concurrency": args.concurrency, "rate": args.rate,
        "duration_s": args.duration, "gateway_cpu": cpus[0], "command": " ".join(["python -m benchmarks.gateway_overhead", *sys.argv[1:]]),
        "summary": summary, "runs": runs,
    }, indent=2))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
