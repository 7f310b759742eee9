"""Benchmark: where the gateway's CPU per gRPC query goes, rung by rung, in one run.

The same closed-loop gRPC client (``gateway_overhead``'s, batch-1 ncf, 32 in flight) drives a
ladder of servers on cpu 0, each doing a little more of what the gateway does, in front of the
same 8 zero-latency instances on cpu 1:

* ``echo``: a gRPC server that returns the request: the server's own cost per call;
* ``forward``: each call POSTs the same HTTP body (the first request, translated once) to an
  instance over the gateway's HTTP/1.1 client (``HttpBackend``) and returns the answer's bytes;
* ``translate``: each call is read as the gateway's front end reads it, sent to an instance
  as the gateway's gRPC-over-HTTP backend sends it (``GrpcOverHttp``: request and response
  translated), and answered with the gateway's parameters appended;
* ``gateway-fcfs``, ``gateway-kairos``: ``kairos-gateway`` itself (core, dispatcher, policy,
  metrics on top).

The ladder is climbed once on each gRPC server of ``--grpc-servers``: the gateway's own
(``native``) and grpc.aio (``grpcio``); the gateway rungs are started with the same choice.

Reports the CPU time of the server process per query (all its threads, from /proc) per rung,
the median over ``--repeat`` rounds (rungs interleaved within a round), and what each rung adds.

    python -m benchmarks.grpc_ladder --repeat 3 --out results/grpc_ladder.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gateway_overhead import MODEL, run_client
from benchmarks.processes import start_gateway, start_servers

SERVER_RUNGS = ("echo", "forward", "translate")
GATEWAY_RUNGS = {"gateway-fcfs": "fcfs", "gateway-kairos": "kairos"}
RUNGS = (*SERVER_RUNGS, *GATEWAY_RUNGS)


async def _serve(rung: str, grpc_server: str, http_urls: list[str]) -> None:
    """One ladder server (``--server``): prints its port, serves until killed."""
    from gateway.backend.base import GRPC, RoutedRequest
    from gateway.backend.grpc_over_http import GrpcOverHttp
    from gateway.backend.http_client import HttpBackend
    from gateway.frontend.grpcio import start_grpcio_server
    from gateway.grpc_server import GrpcServer
    from gateway.protocol.routing import gateway_parameters_suffix, routing_from_proto
    from gateway.protocol.translate import BINARY_CONTENT_TYPE, HttpInfer, proto_request_to_http
    from gateway.protocol.v2 import GRPC_INFER_METHOD, INFERENCE_HEADER, decode_proto_infer

    backends = [HttpBackend(f"i{k}", url) for k, url in enumerate(http_urls)]
    translating = [GrpcOverHttp(b) for b in backends]
    turn = itertools.count()
    first: list[HttpInfer] = []

    async def infer(raw: bytes) -> bytes:
        if rung == "echo":
            return raw
        k = next(turn) % len(backends)
        if rung == "forward":
            if not first:
                first.append(proto_request_to_http(decode_proto_infer(raw)))
            headers = f"Content-Type: {BINARY_CONTENT_TYPE}\r\n{INFERENCE_HEADER}: {first[0].header_length}\r\n"
            resp = await backends[k].post_infer(MODEL, None, headers, first[0].body, 5.0)
            return resp.body
        start = time.perf_counter()
        request = decode_proto_infer(raw)
        info = routing_from_proto(request)
        routed = RoutedRequest(protocol=GRPC, model=request.model_name, batch=info.batch, body=raw,
                               request_id=info.request_id, qos_ms=info.qos_ms, message=request)  # fmt: skip
        reply = await translating[k].infer(routed, 5.0)
        e2e_ms = (time.perf_counter() - start) * 1000.0
        return reply.body + gateway_parameters_suffix(backends[k].name, 0.0, e2e_ms)

    methods = {GRPC_INFER_METHOD: infer}
    if grpc_server == "native":
        server = GrpcServer(methods)
        print(await server.start("127.0.0.1", 0), flush=True)
        await asyncio.Event().wait()
    aio, port = await start_grpcio_server(methods, "127.0.0.1", 0, 4 * 1024 * 1024)
    print(port, flush=True)
    await aio.wait_for_termination()


def _measure_server(
    rung: str, grpc_server: str, http_urls: list[str], args: argparse.Namespace, cpus: tuple[Any, Any]
) -> dict[str, Any]:
    gw_cpu, other_cpu = cpus
    pin = None if gw_cpu is None else (lambda: os.sched_setaffinity(0, {gw_cpu}))
    cmd = [sys.executable, "-m", "benchmarks.grpc_ladder", "--server", rung, grpc_server, *http_urls]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return run_client("grpc", f"127.0.0.1:{port}", "closed", args.concurrency, args.duration, other_cpu, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _round(args: argparse.Namespace, cpus: tuple[Any, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{grpc server: {rung: client result}} for one round."""
    gw_cpu, other_cpu = cpus
    tmp = Path(tempfile.mkdtemp(prefix="kairos-ladder-"))
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "model": MODEL, "qos_ms": 5, "pool": [{"type": "r5n.large", "count": 8}],
        "servers": {"http_port": 0, "grpc_port": 0}, "gateway": {"http_port": 0, "grpc_port": 0},
    }))  # fmt: skip
    address_file = tmp / "instances.json"
    servers = start_servers(config, address_file, ["--zero-latency"], cpus=None if other_cpu is None else {other_cpu})
    out: dict[str, dict[str, dict[str, Any]]] = {g: {} for g in args.grpc_servers}
    try:
        urls = [inst.http for inst in servers.instances]
        for rung in args.rungs:
            for grpc_server in args.grpc_servers:
                print(f"[ladder] {grpc_server} {rung}", flush=True)
                if rung in SERVER_RUNGS:
                    out[grpc_server][rung] = _measure_server(rung, grpc_server, urls, args, cpus)
                    continue
                gateway = start_gateway(config, ["--address-file", str(address_file), "--policy", GATEWAY_RUNGS[rung],
                                                 "--grpc-server", grpc_server],
                                        cpus=None if gw_cpu is None else {gw_cpu})  # fmt: skip
                try:
                    out[grpc_server][rung] = run_client("grpc", gateway.grpc, "closed", args.concurrency,
                                                        args.duration, other_cpu, gateway.pid)  # fmt: skip
                finally:
                    gateway.stop()
    finally:
        servers.stop()
    return out


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows per rung, over rounds of one server: {rung: client result}."""
    rows = []
    previous = None
    for rung in [r for r in RUNGS if r in rounds[0]]:
        us = [r[rung]["gateway_us_per_query"] for r in rounds if r[rung].get("gateway_us_per_query")]
        qps = [r[rung]["qps"] for r in rounds]
        median = statistics.median(us) if us else None
        rows.append({
            "rung": rung, "us_per_query": us, "median_us": median, "median_qps": statistics.median(qps),
            "adds_us": None if median is None or previous is None else median - previous,
        })  # fmt: skip
        previous = median
    return rows


SERVER_NAMES = {"native": "own server", "grpcio": "grpc.aio"}  # as the docs name them


def plot(by_server: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(by_server)
    rounds = 0
    for k, (server, rows) in enumerate(by_server.items()):
        xs = [i + (k - (len(by_server) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["median_us"] or 0 for r in rows], width, label=f"{SERVER_NAMES.get(server, server)} (median)")
        for x, r in zip(xs, rows, strict=True):
            ax.plot([x] * len(r["us_per_query"]), r["us_per_query"], "k.", ms=3)
            rounds = max(rounds, len(r["us_per_query"]))
    ax.plot([], [], "k.", ms=3, label="each round")  # the dots' key
    first = next(iter(by_server.values()))
    ax.set_xticks(range(len(first)), [r["rung"] for r in first])
    ax.axhline(1e6 / 3000, color="tab:red", ls="--", lw=1, label="3,000 q/s per core")
    ax.set_ylabel("server CPU per gRPC query (us)")
    ax.set_title(f"CPU per gRPC query, rung by rung, on each gRPC server (median of {rounds} rounds)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--server":
        import uvloop

        import benchmarks  # noqa: F401  (its gRPC core settings, before grpc loads)

        uvloop.run(_serve(argv[1], argv[2], argv[3:]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grpc_ladder", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the whole ladder (medians reported)")
    ap.add_argument("--rungs", default=",".join(RUNGS), help=f"some of {','.join(RUNGS)}")
    ap.add_argument("--grpc-servers", nargs="+", choices=["native", "grpcio"], default=["native", "grpcio"],
                    help="gRPC servers to climb the ladder on, in the same run (default: both)")
    ap.add_argument("--out", default="results/grpc_ladder.json")
    args = ap.parse_args(argv)
    args.rungs = [r for r in RUNGS if r in args.rungs.split(",")]
    if not args.rungs:
        ap.error(f"--rungs: expected some of {','.join(RUNGS)}")
    cpus: tuple[Any, Any] = (0, 1) if len(os.sched_getaffinity(0)) >= 2 else (None, None)
    rounds = []
    for i in range(args.repeat):
        print(f"[ladder] round {i + 1}/{args.repeat}", flush=True)
        rounds.append(_round(args, cpus))
    by_server = {g: summarise([r[g] for r in rounds]) for g in args.grpc_servers}
    print(f"\n{'server':<7} {'rung':<16} {'us/query (median)':>18} {'adds':>8} {'q/s':>8}   each round")
    for server, rows in by_server.items():
        for r in rows:
            adds = "" if r["adds_us"] is None else f"{r['adds_us']:+.0f}"
            each = " ".join(f"{v:.0f}" for v in r["us_per_query"])
            print(f"{server:<7} {r['rung']:<16} {r['median_us'] or float('nan'):>18.0f} {adds:>8} "
                  f"{r['median_qps']:>8.0f}   {each}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python -m benchmarks.grpc_ladder", *argv]), "date": time.strftime("%Y-%m-%d"),
        "concurrency": args.concurrency, "duration_s": args.duration, "server_cpu": cpus[0], "rows": by_server,
        "rounds": rounds,
    }, indent=1))  # fmt: skip
    plot(by_server, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
