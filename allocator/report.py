"""Output: ranked table, JSON, cost-vs-throughput plot with the Pareto front, config rewrite."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from allocator.pool import Candidate, Pool
from allocator.search import Ranking
from gateway.config import parse_config
from gateway.errors import ConfigError


def _num(x: float | None, width: int) -> str:
    return f"{x:>{width}.1f}" if x is not None else f"{'-':>{width}}"


def format_table(ranking: Ranking, notes: Sequence[str] = ()) -> str:
    validated = any(c.simulated_max_qps is not None or c.validation_error for c in ranking.candidates)
    pool_w = max([len("pool"), *(len(c.pool.label()) for c in ranking.candidates)])
    head = f"{'#':>2}  {'pool':<{pool_w}}  {'$/hour':>7}  {'paper bound':>11}  {'fluid limit':>11}"
    if validated:
        head += f"  {'simulated max':>13}"
    lines = [head, "-" * len(head)]
    for i, c in enumerate(ranking.candidates, 1):
        row = f"{i:>2}  {c.pool.label():<{pool_w}}  {c.cost:>7.3f}  {_num(c.paper_bound, 11)}  {_num(c.fluid_limit, 11)}"
        if validated:
            row += f"  {_num(c.simulated_max_qps, 13)}"
        lines.append(row)
    lines.append("(QPS; paper bound: the paper's estimate of the most a pool carries, which the simulator can exceed; "
                 "fluid limit: the LP limit no distributor beats when every query must meet its QoS)")
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def to_json(candidates: Sequence[Candidate]) -> bytes:
    return orjson.dumps([c.to_json() for c in candidates], option=orjson.OPT_INDENT_2)


def pareto_front(cost: np.ndarray, qps: np.ndarray) -> np.ndarray:
    """Indices of the pools no other pool beats on both cost (lower) and throughput (higher), by cost."""
    order = np.lexsort((-qps, cost))
    best = np.maximum.accumulate(qps[order])
    improves = np.concatenate([[True], best[1:] > best[:-1]]) & (qps[order] >= best)
    return order[improves]


MAX_LABELLED = 8  # ranked pools named on the plot
LABEL_GAP = 0.06  # of the y range: the rank labels' spacing in their column


def _label_column(ys: Sequence[float], y_lo: float, y_hi: float) -> list[float]:
    """Heights for the rank labels, one column, in the order of ``ys`` (highest first): evenly
    spaced around the points' mean, so no two collide however close the points are."""
    gap = LABEL_GAP * (y_hi - y_lo)
    centre = float(np.mean(ys))
    order = sorted(range(len(ys)), key=lambda k: -ys[k])
    out = [0.0] * len(ys)
    for rank, k in enumerate(order):
        out[k] = centre + gap * ((len(ys) - 1) / 2 - rank)
    return out


def plot(ranking: Ranking, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=120)
    if ranking.cloud_cost.size:
        ax.scatter(ranking.cloud_cost, ranking.cloud_bound, s=5, c="0.75", label="every pool (paper bound)")
        front = pareto_front(ranking.cloud_cost, ranking.cloud_bound)
        ax.step(ranking.cloud_cost[front], ranking.cloud_bound[front], where="post", c="C0", label="Pareto front")
    cands = ranking.candidates
    cost = np.array([c.cost for c in cands])
    ax.scatter(cost, [c.paper_bound for c in cands], marker="o", c="C0", label="ranked: paper bound", zorder=3)
    ax.scatter(cost, [c.fluid_limit or np.nan for c in cands], marker="^", c="C1", label="ranked: fluid limit", zorder=3)
    if any(c.simulated_max_qps is not None for c in cands):
        sim = [c.simulated_max_qps if c.simulated_max_qps is not None else np.nan for c in cands]
        ax.scatter(cost, sim, marker="s", c="C2", label="ranked: simulated max", zorder=3)
    if ranking.target_qps is not None:
        ax.axhline(ranking.target_qps, c="C3", ls="--", lw=1, label="load x (1 + headroom)")
    # Each ranked pool by its rank, in a column right of the points with a line to its point (the
    # points crowd near the budget; labels beside them collided), and what it is in a key.
    shown = cands[:MAX_LABELLED]
    if shown:
        x_lo, x_hi = ax.get_xlim()
        y_lo, y_hi = ax.get_ylim()
        x_label = max(c.cost for c in shown) + 0.08 * (x_hi - x_lo)
        heights = _label_column([c.paper_bound for c in shown], y_lo, y_hi)
        for k, (c, y) in enumerate(zip(shown, heights, strict=True)):
            ax.annotate(str(k + 1), (c.cost, c.paper_bound), xytext=(x_label, y), textcoords="data", ha="left",
                        va="center", fontsize=8, fontweight="bold", color="C0", zorder=4,
                        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5, "shrinkA": 2, "shrinkB": 3})
        ax.set_xlim(x_lo, max(x_hi, x_label + 0.04 * (x_hi - x_lo)))
        ax.set_ylim(y_lo, max(y_hi, max(heights) + LABEL_GAP * (y_hi - y_lo)))

    def line(k: int, c: Candidate) -> str:
        sim = f", {c.simulated_max_qps:.0f} simulated" if c.simulated_max_qps is not None else ""
        return f"{k + 1}. {c.pool.label()}: {c.paper_bound:.0f} q/s bound{sim}, ${c.cost:.2f}/h"

    key = "\n".join(line(k, c) for k, c in enumerate(shown))
    if key:
        ax.text(0.02, 0.98, "ranked pools\n" + key, transform=ax.transAxes, va="top", ha="left", fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.9}, zorder=5)
    ax.set_xlabel("cost ($/hour)")
    ax.set_ylabel("throughput (queries/s)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)  # off the pools
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


_POOL = re.compile(r'(?P<indent>[ \t]*)"pool"\s*:\s*\[(?P<body>.*?)\]', re.S)


def write_config(path: Path, pool: Pool, model: str) -> list[str]:
    """Rewrite only the pool counts of ``path``: listed types get their new count (0 if not in the
    pool), new types are appended; every other field and the file's layout stay. Returns warnings."""
    try:
        text = path.read_text()
        raw = orjson.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("pool"), list):
        raise ConfigError(f"{path}: expected a config object with a \"pool\" list")
    counts = pool.as_dict()
    entries = []
    for item in raw["pool"]:
        if isinstance(item, dict) and "type" in item:
            entries.append({**item, "count": counts.pop(item["type"], 0)})
    entries += [{"type": t, "count": n} for t, n in counts.items()]
    raw["pool"] = entries
    parse_config(raw)  # never write a config the gateway would refuse
    m = _POOL.search(text)
    if m is None:
        raise ConfigError(f"{path}: could not find the \"pool\" list to rewrite")
    indent = m["indent"]
    body = ",\n".join(f'{indent}  {{"type": {orjson.dumps(e["type"]).decode()}, "count": {e["count"]}}}' for e in entries)
    path.write_text(text[: m.start()] + f'{indent}"pool": [\n{body}\n{indent}]' + text[m.end() :])
    warnings = []
    if raw.get("model") != model:
        warnings.append(f"{path} serves model {raw.get('model')!r}, but this pool was sized for {model!r}")
    return warnings
