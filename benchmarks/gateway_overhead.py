"""Benchmark: what the gateway adds, against the same instance reached directly.

Starts ``kairos-servers --zero-latency`` with one ncf instance and ``kairos-gateway`` in front
of it (pinned to one core when ``taskset`` works), then, over gRPC and HTTP, runs a load client
in a separate process (uvloop; grpc.aio / aiohttp; pre-built batch-1 requests):

* closed loop, ``--concurrency`` requests outstanding, for max queries/s;
* open loop at ``--rate`` q/s, for p50/p99 latency;

each straight to the instance and through the gateway. Reports q/s, the ratio gateway/direct,
and the latency the gateway adds (p50/p99 through it minus direct). Targets: >= 3,000 q/s on
one core; p99 added <= 2 ms at 1,000 q/s.

    python -m benchmarks.gateway_overhead --out results/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "ncf"
READY_GW = re.compile(r"^kairos-gateway ready http=(\S+) grpc=(\S+)")


# -- load client (runs in its own process: ``--worker``) -------------------------------------


def _grpc_request() -> bytes:
    from gateway.protocol import grpc_predict_v2_pb2 as pb

    r = pb.ModelInferRequest(model_name=MODEL)
    r.inputs.add(name="input0", datatype="FP32", shape=[1, 1])
    r.raw_input_contents.append(np.zeros(1, dtype=np.float32).tobytes())
    return r.SerializeToString()


async def _client(protocol: str, target: str, mode: str, value: float, duration: float) -> dict[str, Any]:
    if protocol == "grpc":
        import grpc

        channel = grpc.aio.insecure_channel(target)
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        body = _grpc_request()

        async def send() -> None:
            await call(body)

        close = channel.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        url = f"http://{target}/v2/models/{MODEL}/infer"
        jbody = json.dumps({"inputs": [{"name": "input0", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]})
        headers = {"Content-Type": "application/json"}

        async def send() -> None:
            async with session.post(url, data=jbody, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")

        close = session.close
    for _ in range(200):  # warm up connections
        await send()
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    if mode == "closed":

        async def worker() -> None:
            nonlocal errors
            while loop.time() < end:
                t0 = time.perf_counter()
                try:
                    await send()
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(int(value))))
    else:
        n = int(value * duration)
        tasks = []

        async def timed(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(at - loop.time(), 0))
            t0 = time.perf_counter()
            try:
                await send()
            except Exception:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.ensure_future(timed(start + i / value)) for i in range(n)]
        await asyncio.gather(*tasks)
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

    print(json.dumps(uvloop.run(_client(protocol, target, mode, value, duration))))


def run_client(protocol: str, target: str, mode: str, value: float, duration: float, cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gateway_overhead", "--worker", protocol, target, mode, str(value), str(duration)]
    out = subprocess.run(_pinned(cmd, cpu), capture_output=True, text=True, timeout=duration + 120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- processes under test ------------------------------------------------------------------------


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"{prefix!r} never printed (exit {proc.poll()})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-loop outstanding requests")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop rate (q/s)")
    ap.add_argument("--policy", default="kairos")
    ap.add_argument("--depth", type=int, default=64,
                    help="gateway depth per instance; 1 (the paper's) serialises the one instance behind a round trip")
    ap.add_argument("--protocols", nargs="+", default=["grpc", "http"])
    ap.add_argument("--out", default="results/gateway_overhead.json")
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    gw_cpu, other_cpu = (0, 1) if ncpu >= 2 else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="kairos-overhead-"))
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "model": MODEL, "qos_ms": 5, "pool": [{"type": "r5n.large", "count": 1}],
        "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(tmp / "instances.json")},
        "gateway": {"http_port": 0, "grpc_port": 0, "policy": args.policy},
    }))  # fmt: skip
    bindir = Path(sys.executable).parent
    servers = subprocess.Popen(_pinned([str(bindir / "kairos-servers"), "--config", str(config), "--zero-latency"], other_cpu),
                               stdout=subprocess.PIPE, text=True)
    gateway = None
    rows = []
    try:
        _wait_line(servers, "kairos-servers ready")
        inst = json.loads((tmp / "instances.json").read_text())["instances"][0]
        gateway = subprocess.Popen(_pinned([str(bindir / "kairos-gateway"), "--config", str(config), "--depth", str(args.depth)], gw_cpu),
                                   stdout=subprocess.PIPE, text=True)
        m = READY_GW.match(_wait_line(gateway, "kairos-gateway ready"))
        assert m
        targets = {
            ("grpc", "direct"): inst["grpc"],
            ("grpc", "gateway"): m.group(2),
            ("http", "direct"): inst["http"].removeprefix("http://"),
            ("http", "gateway"): m.group(1),
        }
        print(f"[overhead] gateway pinned to cpu {gw_cpu}, instance and load client to cpu {other_cpu}", flush=True)
        for protocol in args.protocols:
            row: dict[str, Any] = {"protocol": protocol}
            for path in ("direct", "gateway"):
                print(f"[overhead] {protocol} {path}: closed loop x{args.concurrency} ...", flush=True)
                closed = run_client(protocol, targets[protocol, path], "closed", args.concurrency, args.duration, other_cpu)
                print(f"[overhead] {protocol} {path}: open loop at {args.rate:g} q/s ...", flush=True)
                opened = run_client(protocol, targets[protocol, path], "open", args.rate, args.duration, other_cpu)
                row[path] = {"closed": closed, "open": opened}
            d, g = row["direct"], row["gateway"]
            row["qps_ratio"] = g["closed"]["qps"] / d["closed"]["qps"]
            row["added_p50_ms"] = g["open"]["p50_ms"] - d["open"]["p50_ms"]
            row["added_p99_ms"] = g["open"]["p99_ms"] - d["open"]["p99_ms"]
            rows.append(row)
    finally:
        for proc in (gateway, servers):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)
    print()
    print(f"{'proto':<5} | {'direct q/s':>10} {'gateway q/s':>11} {'ratio':>6} | "
          f"{'open rate':>9} {'direct p50/p99':>15} {'gateway p50/p99':>16} | {'added p50':>9} {'added p99':>9}")
    for r in rows:
        d, g = r["direct"], r["gateway"]
        print(f"{r['protocol']:<5} | {d['closed']['qps']:>10.0f} {g['closed']['qps']:>11.0f} {r['qps_ratio']:>5.2f}x | "
              f"{g['open']['qps']:>9.0f} {d['open']['p50_ms']:>6.2f}/{d['open']['p99_ms']:<6.2f}ms "
              f"{g['open']['p50_ms']:>7.2f}/{g['open']['p99_ms']:<6.2f}ms | "
              f"{r['added_p50_ms']:>7.2f}ms {r['added_p99_ms']:>7.2f}ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": MODEL, "policy": args.policy, "depth": args.depth, "concurrency": args.concurrency,
                               "rate": args.rate, "duration_s": args.duration, "gateway_cpu": gw_cpu,
                               "rows": rows}, indent=2))  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
