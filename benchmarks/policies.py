"""The benchmark that matters: max QPS at 99% within QoS of every policy, in simulation.

    python -m benchmarks.policies [--queries 20000] [--jobs 2] [--models rm2,dien] [--pools-from-allocator]

For each model at the paper's QoS, on the heterogeneous pool the paper's bound ranks best under
2.5 $/hour (``POOLS``; ``--pools-from-allocator`` asks the allocator instead), the simulated
max rate (Poisson arrivals, production batch mix, the same seeded workload for every policy)
of every policy, next to the best homogeneous pool of the same budget: each of the four types
with data, at the most instances the budget buys, under fcfs and kairos, and the best of those.
Where the allocator is importable, the table also shows the pool's fluid (LP) limit and the
paper's bound. Writes results/policies.{json,md,png}.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.policies import POLICY_NAMES
from gateway.profiles import load_catalogue
from gateway.sim.pool import PoolSpec, format_pool, parse_pool, pool_cost
from gateway.sim.search import find_max

BUDGET = 2.5  # $/hour
MODELS = ("ncf", "rm2", "wnd", "mtwnd", "dien")
# The pool the paper's bound ranks best under the budget (issue 4's table, until the allocator's).
POOLS: dict[str, str] = {
    "ncf": "g4dn.xlarge=1,r5n.large=13",
    "rm2": "g4dn.xlarge=1,r5n.large=13",
    "wnd": "g4dn.xlarge=1,r5n.large=13",
    "mtwnd": "g4dn.xlarge=2,r5n.large=9",
    "dien": "g4dn.xlarge=2,r5n.large=9",
}
HOMOGENEOUS_TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")  # the types with latency data
HOMOGENEOUS_POLICIES = ("fcfs", "kairos", "fluid")  # the best of ours on one type too


@dataclass(frozen=True)
class Job:
    model: str
    qos_ms: float
    pool: str
    policy: str
    kind: str  # "hetero" or "homogeneous"
    queries: int
    seed: int
    resolution: float


def _run(job: Job) -> dict[str, Any]:
    t0 = time.perf_counter()
    fm = find_max(
        model=job.model, qos_ms=job.qos_ms, pool=parse_pool(job.pool), policy=job.policy,
        queries=job.queries, seed=job.seed, resolution=job.resolution,
    )
    at = fm.at_max.summary() if fm.at_max is not None else None
    return {
        "model": job.model, "pool": job.pool, "policy": job.policy, "kind": job.kind,
        "max_qps": round(fm.max_qps, 3), "steps": len(fm.steps), "wall_s": round(time.perf_counter() - t0, 2),
        "p99_ms_at_max": at["latency_ms"]["p99"] if at else None,
        "type_share_at_max": at["type_share"] if at else None,
        "type_mean_batch_at_max": at["type_mean_batch"] if at else None,
    }


def homogeneous_pools(budget: float = BUDGET) -> list[str]:
    cat = load_catalogue()
    return [f"{t}={math.floor(budget / cat.type(t).price_per_hour + 1e-9)}" for t in HOMOGENEOUS_TYPES]


def allocator_pools(models: list[str], budget: float) -> dict[str, str] | None:
    """The allocator's best pool per model under the budget, or None (with a message) if it is not ready."""
    try:
        from allocator.problem import build_problem
        from allocator.search import rank_by_budget
        from allocator.space import load_search_space
        from gateway.profiles import load_profiles

        cat, profiles = load_catalogue(), load_profiles()
        space = load_search_space(cat)
        out = {}
        for m in models:
            ranking = rank_by_budget(build_problem(m, space, profiles, cat), budget, top=1)
            out[m] = ranking.candidates[0].pool.spec()
        return out
    except Exception as exc:  # the allocator is being built: fall back on the table
        print(f"allocator not ready ({type(exc).__name__}: {exc}); using the pools in benchmarks/policies.py",
              file=sys.stderr)
        return None


def limits(model: str, pool: PoolSpec) -> tuple[float | None, float | None]:
    """(fluid LP limit, paper bound) of the pool, where the allocator is importable."""
    try:
        from allocator.fluid import fluid_limit
        from allocator.problem import build_problem, counts_row
        from allocator.space import load_search_space
        from gateway.profiles import load_profiles

        cat = load_catalogue()
        problem = build_problem(model, load_search_space(cat), load_profiles(), cat)
        counts = counts_row(problem, dict(pool))
        return float(fluid_limit(problem.fluid, counts).rate), float(problem.bound(counts[None, :])[0])
    except Exception:
        return None, None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _homogeneous(h: dict[str, Any]) -> str:
    if h["pool"] == "-":  # not run (--no-homogeneous): no number to show
        return "not run"
    return f"{h['max_qps']:.1f}: {h['pool']} {h['policy']} ({h['cost']:.3f})"


def render_markdown(report: dict[str, Any]) -> str:
    policies = report["policies"]
    head = ["model", "QoS ms", "pool ($/h)", *policies, "best homogeneous ($/h)", "kairos / homog."]
    has_limits = any(r["fluid_limit"] is not None for r in report["rows"])
    if has_limits:
        head += ["fluid limit", "paper bound", "best policy / fluid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        best = max(r["max_qps"].values())
        cells = [
            r["model"], f"{r['qos_ms']:g}", f"{r['pool']} ({r['cost']:.3f})",
            *[(f"**{r['max_qps'][p]:.1f}**" if r["max_qps"][p] == best else f"{r['max_qps'][p]:.1f}") for p in policies],
            _homogeneous(r["homogeneous"]),
            f"{r['max_qps']['kairos'] / r['homogeneous']['max_qps']:.2f}x" if r["homogeneous"]["max_qps"] else "n/a",
        ]
        if has_limits:
            frac = f"{best / r['fluid_limit']:.0%}" if r["fluid_limit"] else "n/a"
            cells += [_fmt(r["fluid_limit"]), _fmt(r["paper_bound"]), frac]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Max QPS with >= 99% of queries within QoS, simulated (`kairos-sim`), Poisson arrivals, production "
        f"batch mix, {report['queries_per_step']} queries per step, seed {report['seed']}, resolution "
        f"{100 * report['resolution']:g}%; budget {report['budget']:g} $/h. 0.0: the policy misses the target "
        f"even at negligible load. Command: `{report['command']}` ({report['date']})."
    )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, policies = report["rows"], report["policies"]
    has_homogeneous = any(r["homogeneous"]["pool"] != "-" for r in rows)
    fig, axes = plt.subplots(1, len(rows), figsize=(max(3.2 * len(rows), 4.5), 4.8), squeeze=False)
    labels = [*policies, "best homog."] if has_homogeneous else list(policies)
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    for ax, r in zip(axes[0], rows, strict=True):
        values = [r["max_qps"][p] for p in policies] + ([r["homogeneous"]["max_qps"]] if has_homogeneous else [])
        bars = ax.bar(range(len(values)), values, color=[colors[i % 10] for i in range(len(values))])
        # A policy that misses the target at any rate has no bar to see: say 0.
        ax.bar_label(bars, ["0" if v == 0 else "" for v in values], fontsize=7)
        if r["fluid_limit"]:
            ax.axhline(r["fluid_limit"], color="black", linestyle="--", linewidth=1, label="fluid limit")
            ax.set_ylim(0, 1.12 * max(r["fluid_limit"], *values))  # room above the line, no bar under a key
        ax.set_title(f"{r['model']} (QoS {r['qos_ms']:g} ms)", fontsize=9)
        ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("max QPS at 99% within QoS")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:  # one key for every panel, below them: in a panel it covered bars
        fig.legend(handles, names, loc="lower center", fontsize=8, frameon=False)
    fig.suptitle(f"Simulated max QPS per policy, pools <= {report['budget']:g} $/h\n"
                 f"seed {report['seed']}, {report['queries_per_step']:,} queries a step ({report['date']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policies", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--policies", default=",".join(POLICY_NAMES), help="default: every registered policy")
    p.add_argument("--queries", type=int, default=20_000, help="queries per find-max step (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--pools-from-allocator", action="store_true",
                   help="use the allocator's best pool per model (falls back on the table if it is not ready)")
    p.add_argument("--no-homogeneous", action="store_true", help="skip the homogeneous pools")
    p.add_argument("--out", default="results/policies", help="path prefix of the .json, .md and .png")
    args = p.parse_args(argv)
    models = args.models.split(",")
    policies = args.policies.split(",")
    cat = load_catalogue()
    pools = dict(POOLS)
    if args.pools_from_allocator:
        pools.update(allocator_pools(models, BUDGET) or {})
    jobs: list[Job] = []
    for m in models:
        qos = cat.qos(m)
        jobs += [Job(m, qos, pools[m], pol, "hetero", args.queries, args.seed, args.resolution) for pol in policies]
        if not args.no_homogeneous:
            jobs += [
                Job(m, qos, hp, pol, "homogeneous", args.queries, args.seed, args.resolution)
                for hp in homogeneous_pools() for pol in HOMOGENEOUS_POLICIES
            ]
    print(f"{len(jobs)} find-max searches ({args.queries} queries per step) on {args.jobs} workers", file=sys.stderr)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(args.jobs) as workers:
        for k, res in enumerate(workers.imap_unordered(_run, jobs), 1):
            results.append(res)
            elapsed = time.perf_counter() - t0
            print(f"[{k}/{len(jobs)} {elapsed:6.0f} s, ~{elapsed / k * (len(jobs) - k):.0f} s left] "
                  f"{res['model']:<6} {res['pool']:<28} {res['policy']:<18} {res['max_qps']:9.1f} QPS "
                  f"({res['steps']} steps, {res['wall_s']:.0f} s)", file=sys.stderr, flush=True)

    rows = []
    for m in models:
        pool = parse_pool(pools[m])
        mine = {r["policy"]: r for r in results if r["model"] == m and r["kind"] == "hetero"}
        homog = [r for r in results if r["model"] == m and r["kind"] == "homogeneous"]
        best_h = max(homog, key=lambda r: r["max_qps"]) if homog else None
        fluid, bound = limits(m, pool)
        rows.append({
            "model": m, "qos_ms": cat.qos(m), "pool": format_pool(pool), "cost": round(pool_cost(pool, cat), 4),
            "max_qps": {pol: mine[pol]["max_qps"] for pol in policies},
            "details": {pol: mine[pol] for pol in policies},
            "homogeneous": {
                "pool": best_h["pool"], "policy": best_h["policy"], "max_qps": best_h["max_qps"],
                "cost": round(pool_cost(parse_pool(best_h["pool"]), cat), 4),
            } if best_h else {"pool": "-", "policy": "-", "max_qps": 0.0, "cost": 0.0},
            "homogeneous_all": homog,
            "fluid_limit": fluid, "paper_bound": bound,
        })
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.policies " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": BUDGET, "queries_per_step": args.queries, "seed": args.seed, "resolution": args.resolution,
        "arrivals": "poisson", "batch_mix": "production", "policies": policies, "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    md = render_markdown(report)
    prefix.with_suffix(".md").write_text(md)
    plot(report, prefix.with_suffix(".png"))
    print(md)
    print(f"wrote {prefix}.json, .md, .png in {report['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
