"""How fast the simulator runs: 20,000 queries on the 14-instance default pool, per policy.

    python -m benchmarks.sim_speed [--queries 20000] [--rate 120] [--repeat 3] [--out results/sim_speed.json]

Target (issue 4): under 2 s per run on the project's 2-core machine. The rate defaults to a
load near the pool's max for kairos (busy pool, long policy windows: the slow case).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import orjson

from gateway.policies import POLICY_NAMES
from gateway.sim import parse_pool, simulate
from gateway.sim.engine import default_profiles
from gateway.workload import PoissonArrivals, ProductionMix, make_workload

TARGET_S = 2.0
POOL = "g4dn.xlarge=1,r5n.large=13"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sim_speed", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="rm2")
    p.add_argument("--qos", type=float, default=350.0)
    p.add_argument("--pool", default=POOL)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=3, help="runs per policy; the best is reported")
    p.add_argument("--policies", default=",".join(POLICY_NAMES))
    p.add_argument("--out", default="results/sim_speed.json")
    args = p.parse_args(argv)
    pool = parse_pool(args.pool)
    default_profiles()  # loaded once, outside the timings
    trace = make_workload(PoissonArrivals(args.rate), ProductionMix(), args.queries, 0)
    rows = []
    print(f"{args.queries} queries at {args.rate:g} QPS, {args.model} on {args.pool}; target < {TARGET_S:g} s per run")
    print(f"{'policy':<20} {'best s':>8} {'median s':>9} {'queries/s':>10} {'decisions':>10} {'within QoS':>11}  verdict")
    for name in args.policies.split(","):
        times, res = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = simulate(trace, model=args.model, qos_ms=args.qos, pool=pool, policy=name)
            times.append(time.perf_counter() - t0)
        assert res is not None
        best = min(times)
        ok = best < TARGET_S
        rows.append({
            "policy": name, "best_s": round(best, 3), "median_s": round(statistics.median(times), 3),
            "runs": [round(t, 3) for t in times], "queries_per_s": round(args.queries / best),
            "decisions": res.decisions, "within_qos": round(res.attainment, 5), "meets_target": ok,
        })
        print(f"{name:<20} {best:8.3f} {statistics.median(times):9.3f} {args.queries / best:10.0f} "
              f"{res.decisions:10d} {100 * res.attainment:10.2f}%  {'ok' if ok else 'SLOWER THAN TARGET'}",
              flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d"), "model": args.model, "qos_ms": args.qos, "pool": args.pool,
        "queries": args.queries, "rate": args.rate, "target_s": TARGET_S, "python": platform.python_version(),
        "machine": platform.machine(), "results": rows,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
