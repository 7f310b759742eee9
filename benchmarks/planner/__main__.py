"""The planner against the three anchors, one command for the tables and the figure.

    python -m benchmarks.planner [--parts faro,cost,variants] [--stride 6] [--queries 10000] [--jobs 2]

- faro: Faro's 10-job trace under a cap of 32 and of 36 CPUs (``benchmarks.planner.faro``);
- cost: least cost at the target for the shipped models at three loads (``benchmarks.planner.min_cost``);
- variants: accuracy against cost on the shipped variant set (``benchmarks.planner.variants``).
Writes benchmarks/figures/planner.png and, with --json, the numbers. Progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from benchmarks.autoscale.plotting import percent_symlog
from benchmarks.planner import faro, min_cost, variants

FIGURE = Path(__file__).resolve().parents[1] / "figures" / "planner.png"
CAPS = (32, 36)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


FaroKey = tuple[str, int, str]  # policy, cap, serving


def _faro_one(args: tuple[str, int, str, int, int]) -> tuple[FaroKey, dict[str, float]]:
    policy, cap, serving, stride, seed = args
    runs = faro.run_policy(policy, cap, stride, seed, progress=_progress, serving=serving)
    return (policy, cap, serving), faro.summarise(runs)


def run_faro(stride: int, seed: int, jobs: int) -> dict[FaroKey, dict[str, float]]:
    work = [(p, cap, s, stride, seed) for s in faro.SERVING for cap in CAPS for p in faro.POLICIES]
    with ProcessPoolExecutor(jobs) as pool:
        return dict(pool.map(_faro_one, work))


def faro_table(results: dict[FaroKey, dict[str, float]]) -> str:
    head = " | ".join(f"{s}, {cap} CPUs" for s in faro.SERVING for cap in CAPS)
    lines = [f"| policy | {head} | worst job (gateway, 32) |", "|---" * (2 + len(CAPS) * len(faro.SERVING)) + "|"]
    for p in faro.POLICIES:
        cells = " | ".join(f"{results[(p, cap, s)]['over_target']:.2%}" for s in faro.SERVING for cap in CAPS)
        lines.append(f"| {p} | {cells} | {results[(p, 32, 'gateway')]['worst_job']:.2%} |")
    lines.append("(share of all requests over 720 ms, refused and shed ones included)")
    return "\n".join(lines)


def cost_table(rows: list[min_cost.CostRow]) -> str:
    def cell(x: tuple[float, dict[str, int], float] | None) -> str:
        if x is None:
            return "none"
        pool = " + ".join(f"{n} {t}" for t, n in x[1].items() if n)
        return f"{x[0]:.2f} ({pool}; {x[2]:.2%})"

    lines = ["| model | load qps | planner $/h (pool; simulated within target) | cheapest single type | greedy |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.load:g} | {cell(r.planner)} | {cell(r.single)} | {cell(r.greedy)} |")
    return "\n".join(lines)


def variant_table(rows: list[variants.VariantRow]) -> str:
    lines = ["| load qps | weight | plan | $/h | accuracy (sim.) | within target | best single at equal cost | "
             "cheapest single at equal accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plan = " + ".join(f"{n} {v}" for v, n in r.plan.items())
        ec = f"{r.equal_cost[0]}: {r.equal_cost[1]:.4f}" if r.equal_cost else "none"
        ea = f"{r.equal_accuracy[0]}: {r.equal_accuracy[1]:.3f} $/h" if r.equal_accuracy else "none"
        lines.append(f"| {r.load:g} | {r.weight:g} | {plan} | {r.cost:.3f} | {r.accuracy:.4f} | {r.within:.2%} | {ec} | {ea} |")
    return "\n".join(lines)


def plot(faro_res: dict[FaroKey, dict[str, float]] | None, cost_rows: list[min_cost.CostRow] | None,
         variant_rows: list[variants.VariantRow] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    if faro_res:
        ax = axes[0]
        pols = list(faro.POLICIES)
        combos = [(cap, s) for s in faro.SERVING for cap in CAPS]
        width = 0.8 / len(combos)
        for i, (cap, s) in enumerate(combos):
            bars = ax.bar([k + width * i for k in range(len(pols))],
                          [100 * faro_res[(p, cap, s)]["over_target"] for p in pols], width=width,
                          label=f"{s}, {cap} CPUs")
            ax.bar_label(bars, fmt="%.2g", fontsize=6, rotation=90, padding=2)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(pols))], pols, rotation=30, fontsize=8)
        # Linear to 1%, log above: on a linear 0-25% axis the planners' tenths of a % were invisible.
        percent_symlog(ax, top=100.0)
        ax.set_ylabel("% of requests over 720 ms (drops included;\nlinear to 1%, log above)")
        ax.set_title("Faro's trace: 10 jobs, capped cluster")
        ax.legend(fontsize=8, loc="upper left")
    if cost_rows:
        ax = axes[1]
        labels = [f"{r.model} @ {r.load:g} q/s" for r in cost_rows]
        xs = range(len(cost_rows))
        ax.bar([x - 0.2 for x in xs], [r.single[0] / r.planner[0] if r.single else 0 for r in cost_rows], width=0.4,
               label="cheapest single type")
        ax.bar([x + 0.2 for x in xs], [r.greedy[0] / r.planner[0] if r.greedy else 0 for r in cost_rows], width=0.4,
               label="greedy")
        ax.axhline(1.0, color="black", lw=1, label="planner")
        ax.set_xticks(list(xs), labels, rotation=60, fontsize=7)
        ax.set_ylabel("cost / planner's cost")
        ax.set_xlabel("model @ load")
        ax.set_title("least cost at the target")
        ax.legend(fontsize=8)
    if variant_rows:
        ax = axes[2]
        for k, load in enumerate(sorted({r.load for r in variant_rows})):
            mine = [r for r in variant_rows if r.load == load]
            ax.scatter([r.cost for r in mine], [r.accuracy for r in mine], marker="o", s=50, color=f"C{k}",
                       label=f"planner @ {load:g} q/s")
        # Each point's plan and accuracy weight. Points of equal accuracy share a row; their labels
        # step away from it (upwards below the middle, downwards above) so none overlaps another.
        middle = (min(r.accuracy for r in variant_rows) + max(r.accuracy for r in variant_rows)) / 2
        centre = (min(r.cost for r in variant_rows) + max(r.cost for r in variant_rows)) / 2
        for upper in (False, True):
            row = sorted((r for r in variant_rows if (r.accuracy > middle) == upper), key=lambda r: r.cost)
            for k, r in enumerate(row):
                plan = " + ".join(f"{n} {v.removeprefix('digits-')}" for v, n in r.plan.items() if n)
                dy = (10 + 11 * k) * (-1 if upper else 1)
                right = r.cost > centre  # labels of the dearest points run leftwards, inside the axes
                ax.annotate(f"weight {r.weight:g}: {plan}", (r.cost, r.accuracy), xytext=(-4 if right else 4, dy),
                            textcoords="offset points", fontsize=7, va="top" if upper else "bottom",
                            ha="right" if right else "left", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
        ax.set_xlabel("$/hour")
        ax.set_ylabel("accuracy served (simulated)")
        ax.set_title("digits variants: accuracy against cost")
        ax.legend(fontsize=8)
    fig.suptitle(f"kairos-plan against its anchors ({datetime.date.today()})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.planner", description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="faro,cost,variants")
    p.add_argument("--stride", type=int, default=6, help="faro: simulate every Nth minute (1: all 360)")
    p.add_argument("--queries", type=int, default=10000, help="cost, variants: simulated queries per pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="faro: processes")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON")
    p.add_argument("--figure", type=Path, default=FIGURE)
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {"date": str(datetime.date.today())}
    faro_res = cost_rows = variant_rows = None
    if "faro" in parts:
        faro_res = run_faro(args.stride, args.seed, args.jobs)
        print(f"## Faro's trace (every {args.stride}th minute, seed {args.seed})\n\n{faro_table(faro_res)}\n", flush=True)
        out["faro"] = {f"{k[0]}@{k[1]}/{k[2]}": v for k, v in faro_res.items()}
    if "cost" in parts:
        cost_rows = min_cost.run(args.seed, args.queries, _progress)
        print(f"## Least cost at the target\n\n{cost_table(cost_rows)}\n", flush=True)
        out["cost"] = [r.__dict__ for r in cost_rows]
    if "variants" in parts:
        variant_rows = variants.run(args.seed, args.queries, _progress)
        print(f"## Variants: accuracy against cost\n\n{variant_table(variant_rows)}\n", flush=True)
        out["variants"] = [r.__dict__ for r in variant_rows]
    plot(faro_res, cost_rows, variant_rows, args.figure)
    print(f"wrote {args.figure}", file=sys.stderr)
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
