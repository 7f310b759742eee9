"""Benchmark: time of one ``kairos`` decision vs pool size, numpy matrix vs a plain-Python one.

For N = 14, 50, 200 instances (1 GPU per 7 instances, the rest CPUs, rm2 profiles) and 2N
pending queries, it times building the Q x N slack matrix (the policy's numpy code vs a
cell-by-cell Python construction of the same matrix, checked equal), with and without the
scipy ``linear_sum_assignment`` solve, and the whole ``Dispatcher.decide``. Reports medians and
the Python / numpy ratio.

    python -m benchmarks.decision_time --out results/decision_time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from gateway.dispatch import Dispatcher, Query
from gateway.estimator import LatencyEstimator
from gateway.policies import Snapshot, make_policy
from gateway.policies.kairos import SAFEGUARD_FRACTION, penalties, slack_matrix
from gateway.profiles import load_profiles

MODEL, QOS_MS = "rm2", 350.0
TYPES = ["g4dn.xlarge", "r5n.large"]


def python_slack(snap: Snapshot, instances: list[int]) -> list[list[float]]:
    """The same matrix, one cell at a time (what the numpy code replaces)."""
    rows = []
    at_risk, miss = penalties(float(snap.qos_ms.max()))
    for i in range(snap.n_queries):
        t_left = float(snap.time_left_ms[i])
        safeguard = SAFEGUARD_FRACTION * float(snap.qos_ms[i])
        row = []
        for j in instances:
            t = int(snap.inst_type[j])
            est = float(snap.est_ms[i, t])
            left = float(snap.busy_left_ms[j])
            slack = float(snap.coefficient[t]) * (-left - est)
            if t_left > 0:
                residual = t_left - left - est
                if residual < 0:
                    slack = miss
                elif residual - safeguard < 0:
                    slack = at_risk
            row.append(slack)
        rows.append(row)
    return rows


def make_snapshot(n: int, rng: np.random.Generator, est: LatencyEstimator) -> Snapshot:
    q = 2 * n
    types = np.array([0 if j % 7 == 0 else 1 for j in range(n)])
    batch = rng.integers(1, 1000, q)
    busy = rng.random(n) < 0.6
    return Snapshot(
        batch=batch,
        time_left_ms=rng.uniform(-20, QOS_MS, q),
        qos_ms=QOS_MS,
        inst_type=types,
        healthy=np.ones(n, dtype=bool),
        free_slots=(~busy).astype(np.int64),
        outstanding=busy.astype(np.int64),
        busy_left_ms=np.where(busy, rng.uniform(0, 200, n), 0.0),
        est_ms=est.estimate(batch),
        coefficient=est.coefficient,
    )


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def dispatcher_decide_us(n: int, est: LatencyEstimator, rng: np.random.Generator, repeat: int) -> float:
    """The whole ``Dispatcher.decide`` (snapshot + policy) with 2N pending and a third busy."""
    insts = [(f"i{j}", TYPES[0] if j % 7 == 0 else TYPES[1]) for j in range(n)]
    times = []
    for r in range(repeat + 1):
        d = Dispatcher(make_policy("kairos"), est, insts)
        for k in range(n // 3):  # occupy a third of the pool
            d.submit(Query(id=-k - 1, batch=10, arrival_ms=0.0, deadline_ms=QOS_MS))
        for x in d.decide(0.0)[n // 3 :]:
            d.fail(x.query, x.instance)
        d.pending.clear()
        for k in range(2 * n):
            d.submit(Query(id=k, batch=int(rng.integers(1, 1000)), arrival_ms=0.0, deadline_ms=QOS_MS))
        t0 = time.perf_counter()
        d.decide(1.0)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decision_time", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[14, 50, 200])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default="results/decision_time.json")
    args = ap.parse_args()
    est = LatencyEstimator(load_profiles(), MODEL, TYPES)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        print(f"[decision_time] N={n}, Q={2 * n} ...", flush=True)
        snap = make_snapshot(n, rng, est)
        inst = np.arange(n)
        inst_list = inst.tolist()
        np.testing.assert_allclose(np.array(python_slack(snap, inst_list)), slack_matrix(snap, inst))
        repeat = max(5, args.repeat if n < 200 else args.repeat // 5)
        policy = make_policy("kairos")

        def python_with_solve(s: Snapshot = snap, i: list[int] = inst_list) -> object:
            return linear_sum_assignment(np.array(python_slack(s, i)), maximize=True)

        numpy_build = median_us(partial(slack_matrix, snap, inst), repeat)
        python_build = median_us(partial(python_slack, snap, inst_list), repeat)
        numpy_total = median_us(partial(policy.decide, snap), repeat)
        python_total = median_us(python_with_solve, repeat)
        decide = dispatcher_decide_us(n, est, rng, repeat)
        rows.append(
            {
                "instances": n,
                "queries": 2 * n,
                "numpy_build_us": numpy_build,
                "python_build_us": python_build,
                "build_ratio": python_build / numpy_build,
                "numpy_with_solve_us": numpy_total,
                "python_with_solve_us": python_total,
                "with_solve_ratio": python_total / numpy_total,
                "dispatcher_decide_us": decide,
            }
        )
    print()
    print(f"{'N':>4} {'Q':>4} | {'build numpy':>11} {'build py':>10} {'ratio':>6} | "
          f"{'+solve numpy':>12} {'+solve py':>10} {'ratio':>6} | {'Dispatcher.decide':>17}")
    for r in rows:
        print(f"{r['instances']:>4} {r['queries']:>4} | {r['numpy_build_us']:>9.1f}us {r['python_build_us']:>8.1f}us "
              f"{r['build_ratio']:>5.1f}x | {r['numpy_with_solve_us']:>10.1f}us {r['python_with_solve_us']:>8.1f}us "
              f"{r['with_solve_ratio']:>5.1f}x | {r['dispatcher_decide_us']:>15.1f}us")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": MODEL, "qos_ms": QOS_MS, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
