"""The load forecasters (``allocator.autoscale.forecast``) on Faro's trace, rolling origin.

    python -m benchmarks.autoscale.forecast [--horizon 5] [--warmup 30] [--json PATH] [--plot PATH]

For each of the 10 jobs and each minute ``t`` from the warm-up to the last with ``H`` minutes
ahead known, every forecaster sees ``counts[:t]`` only and forecasts minutes ``t..t+H-1``; the
quantiles are scored against what came. Per forecaster (averaged over jobs): mean pinball loss over
the levels divided by the job's mean count, coverage of the 10-90% and 5-95% intervals, the share
of actuals at or below the 90% quantile, and the time per ``forecast`` call. "H=5" scores all
five steps, "H=1" the first step of the same calls (a forecaster's first step does not depend on
the horizon asked). Progress on stderr; the table on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from allocator.autoscale.forecast import DEFAULT_FORECASTER, LEVELS, GBMForecaster, make_forecaster
from benchmarks.faro_trace import load_trace

FIGURE = Path(__file__).resolve().parents[1] / "figures" / "forecast.png"
PLOT_JOBS = ("job2", "job3", "job9")
REFIT_EVERY = 10  # gbm pooled: minutes between refits on every job's past


@dataclass(frozen=True)
class Candidate:
    label: str
    name: str
    params: dict[str, Any]
    pooled: bool = False  # gbm only: one model fitted on all jobs' past, refitted every REFIT_EVERY minutes


CANDIDATES = (
    Candidate("last", "last", {}),
    Candidate("moving-max", "moving-max", {}),
    Candidate("ets", "ets", {}),
    Candidate("ets-seasonal", "ets-seasonal", {}),
    Candidate("gbm", "gbm", {}),
    Candidate("gbm pooled", "gbm", {}, pooled=True),
    Candidate("gbm pooled lags=16", "gbm", {"lags": 16}, pooled=True),  # sees the same minute 15 ago
    # What else was tried: log scale (errors relative to the level), a longer error window, a
    # shorter max window, a band widened by a tenth, the seasonal pattern under last.
    Candidate("last log", "last", {"log": True}),
    Candidate("ets log", "ets", {"log": True}),
    Candidate("ets window=120", "ets", {"window": 120}),
    Candidate("moving-max w=3", "moving-max", {"w": 3}),
    Candidate("ets widen=1.1", "ets", {"widen": 1.1}),
    Candidate("last seasonal", "last", {"season": "auto"}),
    Candidate("ets-seasonal widen=1.0", "ets-seasonal", {"widen": 1.0}),
)


@dataclass
class Run:
    """One candidate's forecasts: (jobs, origins, H, levels), and the seconds of each call."""

    forecasts: np.ndarray
    seconds: np.ndarray


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_candidate(c: Candidate, counts: np.ndarray, warmup: int, horizon: int,
                  progress: Callable[[str], None] = _progress) -> Run:
    minutes, jobs = counts.shape
    origins = range(warmup, minutes - horizon + 1)
    if c.name == "gbm":
        import sklearn.ensemble  # noqa: F401  (its import, ~1 s, is no forecast's cost)

    out = np.empty((jobs, len(origins), horizon, len(LEVELS)))
    secs: list[float] = []
    if c.pooled:
        pooled = GBMForecaster(**c.params)
        for i, t in enumerate(origins):
            start = time.perf_counter()
            if (t - warmup) % REFIT_EVERY == 0:  # the refit's time counts against the calls it serves
                pooled.fit([counts[:t, j].astype(float) for j in range(jobs)], horizon=horizon)
            fit_s = time.perf_counter() - start
            for j in range(jobs):
                start = time.perf_counter()
                out[j, i] = pooled.forecast(counts[:t, j].astype(float), horizon)
                secs.append(time.perf_counter() - start + fit_s / jobs)
            if (t - warmup) % 60 == 0:
                progress(f"{c.label}: minute {t}/{minutes}")
        return Run(out, np.array(secs))
    for j in range(jobs):
        f = make_forecaster(c.name, **c.params)  # one per job, as the loop keeps one per series
        series = counts[:, j].astype(float)
        for i, t in enumerate(origins):
            start = time.perf_counter()
            out[j, i] = f.forecast(series[:t], horizon)
            secs.append(time.perf_counter() - start)
        progress(f"{c.label}: job {j + 1}/{jobs}")
    return Run(out, np.array(secs))


def actuals(counts: np.ndarray, warmup: int, horizon: int) -> np.ndarray:
    """(jobs, origins, H): what came at each step after each origin."""
    minutes = counts.shape[0]
    idx = np.arange(warmup, minutes - horizon + 1)[:, None] + np.arange(horizon)[None, :]
    return np.transpose(counts[idx], (2, 0, 1)).astype(float)


def score(forecasts: np.ndarray, actual: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """forecasts (jobs, origins, steps, levels), actual (jobs, origins, steps), scale (jobs,)."""
    q = np.array(LEVELS)
    diff = actual[..., None] - forecasts
    pinball = np.maximum(q * diff, (q - 1.0) * diff)  # (jobs, origins, steps, levels)
    per_job = pinball.mean(axis=(1, 2, 3)) / scale
    at = {lv: LEVELS.index(lv) for lv in (0.05, 0.1, 0.9, 0.95)}

    def below(lv: float) -> np.ndarray:
        return actual <= forecasts[..., at[lv]]

    def inside(lo: float, hi: float) -> np.ndarray:
        return (forecasts[..., at[lo]] <= actual) & below(hi)

    return {
        "pinball": float(per_job.mean()),
        "cover_10_90": float(inside(0.1, 0.9).mean()),
        "cover_5_95": float(inside(0.05, 0.95).mean()),
        "below_q90": float(below(0.9).mean()),
        "below_q95": float(below(0.95).mean()),
    }


def evaluate(candidates: tuple[Candidate, ...], warmup: int, horizon: int) -> tuple[dict[str, dict[str, Any]], dict[str, Run]]:
    _, counts = load_trace()
    actual = actuals(counts, warmup, horizon)
    scale = counts.mean(axis=0).astype(float)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Run] = {}
    for c in candidates:
        run = run_candidate(c, counts, warmup, horizon)
        runs[c.label] = run
        results[c.label] = {
            f"H={horizon}": score(run.forecasts, actual, scale),
            "H=1": score(run.forecasts[:, :, :1], actual[:, :, :1], scale),
            "ms_mean": float(run.seconds.mean() * 1e3),
            "ms_p99": float(np.quantile(run.seconds, 0.99) * 1e3),
            "ms_max": float(run.seconds.max() * 1e3),
            "calls": int(run.seconds.size),
        }
    return results, runs


def table(results: dict[str, dict[str, Any]], horizon: int) -> str:
    keys = (f"H={horizon}", "H=1")
    head = " | ".join(f"{k} pinball/mean | {k} 10-90 | {k} 5-95 | {k} <=q90" for k in keys)
    lines = [f"| forecaster | {head} | ms/call mean | p99 | max |", "|---" * (4 + 4 * len(keys)) + "|"]
    for label, r in results.items():
        cells = " | ".join(f"{r[k]['pinball']:.4f} | {r[k]['cover_10_90']:.1%} | {r[k]['cover_5_95']:.1%} | "
                           f"{r[k]['below_q90']:.1%}" for k in keys)
        lines.append(f"| {label} | {cells} | {r['ms_mean']:.2f} | {r['ms_p99']:.1f} | {r['ms_max']:.1f} |")
    return "\n".join(lines)


def plot(run: Run, label: str, warmup: int, horizon: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs, counts = load_trace()
    lo, mid, hi = (LEVELS.index(v) for v in (0.1, 0.5, 0.9))
    fig, axes = plt.subplots(len(PLOT_JOBS), 1, figsize=(12, 3.2 * len(PLOT_JOBS)), sharex=True)
    for ax, job in zip(axes, PLOT_JOBS, strict=True):
        j = jobs.index(job)
        # The forecast made at origin t for minute t + H - 1, drawn at the minute it forecasts.
        minutes = np.arange(warmup, warmup + run.forecasts.shape[1]) + horizon - 1
        f = run.forecasts[j, :, horizon - 1]
        ax.fill_between(minutes, f[:, lo], f[:, hi], color="tab:blue", alpha=0.25, lw=0,
                        label=f"10-90% band forecast {horizon} min before")
        ax.plot(minutes, f[:, mid], color="tab:blue", lw=1.0, label=f"median forecast {horizon} min before")
        ax.plot(np.arange(counts.shape[0]), counts[:, j], color="black", lw=0.8, label="actual")
        ax.axvspan(0, warmup, color="0.9", lw=0, label=f"warm-up ({warmup} min, no forecast)")
        if horizon > 1:  # the first origin's forecast lands H - 1 minutes later: the gap, explained
            ax.axvspan(warmup, warmup + horizon - 1, color="0.9", alpha=0.45, lw=0,
                       label=f"minutes {warmup}-{warmup + horizon - 2}: forecast only\nless than {horizon} min before")
        ax.set_xlim(0, counts.shape[0])
        ax.set_ylim(0, max(counts[:, j].max(), f[:, hi].max()) * 1.05)
        ax.set_ylabel("requests/minute")
        ax.set_title(job, loc="left", fontsize=10)
    axes[-1].set_xlabel("minute of the trace")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=5, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(f"Faro's trace: the '{label}' forecaster's {horizon}-minute-ahead quantiles "
                 f"(rolling origin, {time.strftime('%Y-%m-%d')})")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.autoscale.forecast", description=__doc__.splitlines()[0])
    p.add_argument("--horizon", type=int, default=5, help="minutes ahead per forecast (default 5)")
    p.add_argument("--warmup", type=int, default=30, help="minutes of history before the first forecast")
    p.add_argument("--only", help="comma-separated candidate labels (default: all)")
    p.add_argument("--plot-forecaster", default=DEFAULT_FORECASTER, help="the candidate the figure shows")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON")
    p.add_argument("--plot", type=Path, default=FIGURE)
    args = p.parse_args(argv)
    chosen: tuple[Candidate, ...] = CANDIDATES
    if args.only:
        wanted = set(args.only.split(","))
        chosen = tuple(c for c in CANDIDATES if c.label in wanted)
        if not chosen:
            p.error(f"--only: none of {sorted(wanted)}; candidates: {', '.join(c.label for c in CANDIDATES)}")
    results, runs = evaluate(chosen, args.warmup, args.horizon)
    print(f"## Forecasters on Faro's trace (10 jobs, warm-up {args.warmup} min, H={args.horizon})\n")
    print(table(results, args.horizon))
    print("\n(pinball: mean over levels, steps and origins, / the job's mean count, averaged over jobs; "
          "coverage: share of actuals inside the interval or at/below the 90% quantile)")
    if args.plot_forecaster in runs:
        plot(runs[args.plot_forecaster], args.plot_forecaster, args.warmup, args.horizon, args.plot)
        _progress(f"wrote {args.plot}")
    if args.json:
        out = {"date": time.strftime("%Y-%m-%d"), "warmup": args.warmup, "horizon": args.horizon, "levels": list(LEVELS),
               "default": DEFAULT_FORECASTER, "results": results}
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
        _progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
