"""A plan for people: a table per part (what to run, what each class gets) and a figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from allocator.planner.plan import Plan


def format_plan(plan: Plan) -> str:
    lines = [
        f"objective {plan.objective}: {plan.objective_value:.6g}   cost {plan.cost_per_hour:.3f} $/hour"
        + (f" (+{plan.change_cost:.3f} $ to change)" if plan.change_cost else "")
        + (f"   served accuracy {plan.served_accuracy:.4f}" if plan.served_accuracy is not None else ""),
        f"solver: {plan.solver_status}, {plan.solver_rounds} round(s), {plan.solver_time_s * 1000:.0f} ms",
    ]
    if plan.refinement is not None:
        r = plan.refinement
        lines.append(f"refined in the simulator: {len(r.moves)} move(s)"
                     + (f" ({'; '.join(r.moves)})" if r.moves else "")
                     + f", {r.simulations} simulation(s), {r.time_s:.1f} s")
    lines.append("")
    rows: list[tuple[str, ...]] = [(a.model, a.variant, a.type, str(a.count), f"{a.rate_qps:.1f}", f"{a.utilisation:.0%}", str(a.max_batch))
            for a in plan.allocations]
    lines += _table(("model", "variant", "type", "count", "qps", "util", "max batch"), rows) or ["(no instances)"]
    lines.append("")
    rows = [(c.model, c.service_class, f"{c.target_ms:g}", f"{c.attainment:.4g}", f"{c.load_qps:.1f}",
             f"{c.within_target:.2%}" + (" (sim.)" if c.basis == "simulation" else ""), f"{c.dropped:.1%}",
             f"{c.utilisation:.0%}") for c in plan.classes]
    lines += _table(("model", "class", "target ms", "needs", "load qps", "within", "dropped", "util"), rows)
    if plan.changes:
        lines.append("")
        lines += _table(("model", "variant", "type", "now", "plan"),
                        [(c.model, c.variant, c.type, str(c.before), str(c.after)) for c in plan.changes])
    return "\n".join(lines)


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [fmt.format(*r) for r in rows]
    return out


def plot_plan(plan: Plan, path: Path, title: str = "plan") -> None:
    """Instances per model, stacked by variant/type, with each class's predicted share within target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(c.model for c in plan.classes))
    kinds = list(dict.fromkeys(f"{a.variant}/{a.type}" if a.variant != a.model else a.type for a in plan.allocations))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(models) + 6), 4.2))
    bottom = [0.0] * len(models)
    for kind in kinds:
        heights = [float(sum(a.count for a in plan.allocations if a.model == m
                             and (f"{a.variant}/{a.type}" if a.variant != a.model else a.type) == kind)) for m in models]
        ax.bar(models, heights, bottom=bottom, label=kind)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("instances")
    ax.set_title(f"what to run ({plan.cost_per_hour:.2f} $/hour)")
    ax.legend(fontsize=7)
    labels = [f"{c.model}/{c.service_class}" for c in plan.classes]
    bx.bar(labels, [100 * c.within_target for c in plan.classes], color="tab:green", label="within target (pred.)")
    bx.scatter(labels, [100 * c.attainment for c in plan.classes], color="black", marker="_", s=300, label="needed", zorder=3)
    bx.set_ylim(min(90.0, *(100 * c.within_target - 2 for c in plan.classes)), 100.5)
    bx.set_ylabel("% of queries")
    bx.set_title("each class")
    bx.legend(fontsize=7, loc="lower right")
    for a in (ax, bx):
        a.tick_params(axis="x", rotation=45, labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
