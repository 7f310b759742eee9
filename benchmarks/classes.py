"""``python -m benchmarks.classes``: three service classes at twice what the pool sustains.

In the simulator (the gateway's own dispatcher, with the live gateway's shedding and admission
control), for each policy: the pool's maximum rate at 99% within QoS (one class), then a seeded
Poisson load at ``--factor`` x that rate, each query drawn into premium, standard or batch
(``--mix``). Once with the classes' priorities (premium > standard > batch) and once with the
same targets and no priorities (the baseline, the same queries). Target: with priorities, the
premium class keeps >= 99% of its queries within its target (refusals count as misses) while
the batch class absorbs the shedding.

    python -m benchmarks.classes [--model rm2] [--pool g4dn.xlarge=1,r5n.large=13] [--queries 20000]

Writes ``results/classes.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.config import ServiceClass
from gateway.dispatch import OverloadControl
from gateway.profiles import load_catalogue
from gateway.sim.engine import simulate
from gateway.sim.pool import format_pool, parse_pool
from gateway.sim.search import find_max
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

BATCH_TARGET = 3.0  # the batch class's target, in multiples of the model's QoS


def service_classes(qos_ms: float, priorities: bool) -> tuple[ServiceClass, ...]:
    p = (2, 1, 0) if priorities else (0, 0, 0)
    return (
        ServiceClass("premium", qos_ms, 0.99, p[0]),
        ServiceClass("standard", qos_ms, 0.99, p[1]),
        ServiceClass("batch", BATCH_TARGET * qos_ms, 0.9, p[2]),
    )


@dataclass(frozen=True)
class ClassRun:
    policy: str
    priorities: bool
    capacity_qps: float
    offered_qps: float
    classes: dict[str, dict[str, float]]


def run(model: str, pool: str, queries: int, factor: float, mix: tuple[float, ...], policy: str, seed: int) -> list[ClassRun]:
    qos = load_catalogue().qos(model)
    spec = parse_pool(pool)
    capacity = find_max(model=model, qos_ms=qos, pool=spec, policy=policy, queries=4000, seed=seed).max_qps
    rate = factor * capacity
    trace = make_workload(parse_arrivals("poisson", rate), ProductionMix(), queries, seed)
    query_class = np.random.default_rng([seed, 7]).choice(len(mix), size=queries, p=np.asarray(mix) / sum(mix))
    out = []
    for priorities in (True, False):
        res = simulate(
            trace, model=model, qos_ms=qos, pool=spec, policy=policy, seed=seed,
            overload=OverloadControl.for_mode("shed", qos), classes=service_classes(qos, priorities),
            query_class=query_class,
        )  # fmt: skip
        out.append(ClassRun(policy, priorities, capacity, res.offered_qps, res.class_summary()))
    return out


def render(runs: list[ClassRun], model: str, pool: str, factor: float) -> str:
    lines = [
        f"{model} on {pool}, {factor:g} x each policy's maximum rate; within target = answered in "
        "time, over all the class's queries (refused and shed count as misses)",
        "",
        "| policy | priorities | offered QPS | class | target ms | refused or shed | within target | of accepted |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        for name, c in r.classes.items():
            lines.append(
                f"| {r.policy} | {'yes' if r.priorities else 'no'} | {r.offered_qps:.1f} | {name} | "
                f"{c['target_ms']:g} | {100 * c['refused_or_shed']:.2f}% | {100 * c['within_target']:.2f}% | "
                f"{100 * c['within_target_of_accepted']:.2f}% |"
            )
    return "\n".join(lines)


def plot(runs: list[ClassRun], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r.policy for r in runs))
    fig, axes = plt.subplots(1, len(policies), figsize=(max(7.5, 5.5 * len(policies)), 4.3), sharey=True, squeeze=False)
    for ax, policy in zip(axes[0], policies, strict=True):
        mine = [r for r in runs if r.policy == policy]
        names = list(mine[0].classes)
        x = np.arange(len(names))
        for k, r in enumerate(mine):
            within = [100 * r.classes[n]["within_target"] for n in names]
            label = "with priorities" if r.priorities else "no priorities"
            bars = ax.bar(x + (k - 0.5) * 0.38, within, 0.36, label=label, color="tab:blue" if r.priorities else "tab:gray",
                          zorder=2)
            # On a white box above the 99% line: values near 99 sat on it and were struck through.
            texts = ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2, zorder=4)
            for t in texts:
                t.set_bbox({"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
        ax.axhline(99, color="red", ls="--", lw=1, label="99%", zorder=1)  # behind the bars and their labels
        ax.set_xticks(x, names)
        ax.set_title(f"{policy}, {mine[0].offered_qps:.0f} QPS offered")
        ax.set_ylim(0, 108)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("% of the class's queries within its target")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.classes", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="rm2")
    p.add_argument("--pool", default="g4dn.xlarge=1,r5n.large=13")
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--factor", type=float, default=2.0, help="load as a multiple of the maximum rate (default 2)")
    p.add_argument("--mix", default="0.2,0.3,0.5", help="shares of premium, standard, batch (default 0.2,0.3,0.5)")
    p.add_argument("--policies", default="kairos,fluid")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    mix = tuple(float(x) for x in args.mix.split(","))
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        p.error("--mix: expected three non-negative shares, e.g. 0.2,0.3,0.5")
    runs: list[ClassRun] = []
    for policy in args.policies.split(","):
        started = time.perf_counter()
        print(f"classes: {policy}: finding the maximum rate, then two runs at {args.factor:g} x ...", file=sys.stderr, flush=True)
        runs += run(args.model, args.pool, args.queries, args.factor, mix, policy, args.seed)
        print(f"classes: {policy} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    pool = format_pool(parse_pool(args.pool))
    table = render(runs, args.model, pool, args.factor)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "model": args.model, "pool": args.pool, "factor": args.factor, "mix": mix, "seed": args.seed,
        "queries": args.queries, "runs": [r.__dict__ for r in runs],
    }  # fmt: skip
    (args.out / "classes.json").write_text(json.dumps(doc, indent=1))
    (args.out / "classes.md").write_text(table + "\n")
    plot(runs, f"{args.model} on {pool}: three classes at {args.factor:g} x the maximum rate", args.out / "classes.png")
    print(f"wrote {args.out}/classes.{{json,md,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
