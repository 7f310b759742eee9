"""``python -m benchmarks.autoscale``: the control loop against the field's autoscalers on Faro's
6-hour trace, in simulation (``benchmarks.autoscale.faro_setting``), per cap, policy and seed.

    python -m benchmarks.autoscale --caps 36 32 --seeds 0 --serving faro-queue --json results/autoscale.json

Prints the share of requests over the 720 ms target (drops included; also Faro's per-minute,
per-job mean) per policy, and plots load, the planned policy's forecast-driven replicas and
violations over time. Runs go to 2 worker processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from allocator.autoscale.simloop import LoopRun, run_loop
from benchmarks.autoscale.faro_setting import POLICIES, SERVINGS, faro_setting, make_policy
from benchmarks.autoscale.plotting import percent_symlog

FIGURE = Path(__file__).resolve().parents[1] / "figures" / "autoscale.png"


def one(cap: int, policy: str, seed: int, serving: str, minutes: int | None,
        faro_executor: bool = False) -> tuple[int, str, int, LoopRun]:
    def say(line: str) -> None:
        print(f"  cap {cap} seed {seed} {line}", file=sys.stderr, flush=True)

    setting = dataclasses.replace(faro_setting(cap, serving, seed, minutes), retry_refused=faro_executor)
    run = run_loop(setting, make_policy(policy, cap), seed, say)
    say(f"{policy}: {run.over_target:.2%} over target ({run.wall_s:.0f} s)")
    return cap, policy, seed, run


def per_minute(x: np.ndarray, k: int) -> np.ndarray:
    whole = x.shape[0] // k * k
    return x[:whole].reshape(-1, k, *x.shape[1:]).sum(axis=1)


def plot(runs: dict[tuple[int, str, int], LoopRun], cap: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True)
    mine = {p: r for (c, p, s), r in sorted(runs.items(), reverse=True) if c == cap}  # lowest seed wins
    some = next(iter(mine.values()))
    k = max(1, round(60.0 / some.tick_s))
    load = per_minute(some.arrivals.sum(axis=1), k)
    minutes = np.arange(len(load)) + 0.5
    axes[0].plot(minutes, load, lw=0.6, color="0.3", label="arrivals (all jobs)")
    planned = mine.get("planned")
    if planned is not None and planned.forecast:
        f = np.array(planned.forecast)
        axes[0].fill_between(f[:, 0] / 60.0, f[:, 1] * 60, f[:, 3] * 60, color="tab:red", alpha=0.25, lw=0,
                             label="planned: forecast 10-90% (max over the horizon)")
    axes[0].set_ylabel("requests/minute")
    axes[0].legend(loc="lower center", fontsize=8)
    axes[0].set_title(f"Faro's trace, {cap} CPUs (seed {some.seed}, drawn {time.strftime('%Y-%m-%d')}): "
                      "load, instances serving, requests over target")
    for policy, r in sorted(mine.items()):
        # static-peak holds the whole cap all along: drawn thicker and on top, so the cap's band
        # below and the other policies' peaks at the cap do not hide it.
        flat = policy == "static-peak"
        axes[1].plot(minutes, per_minute(r.ready.sum(axis=1), k)[: len(minutes)] / k, lw=2.0 if flat else 0.8,
                     label=policy, zorder=3 if flat else 2)
        over = per_minute(r.over.sum(axis=1), k)[: len(minutes)]
        arrived = per_minute(r.arrivals.sum(axis=1), k)[: len(minutes)]
        window = np.ones(10)  # 10-minute rolling share
        share = 100.0 * np.convolve(over, window, "same") / np.maximum(np.convolve(arrived, window, "same"), 1)
        axes[2].plot(minutes, share, lw=0.9, label=f"{policy} ({100 * r.over_target:.1f}% overall)")
    axes[1].axhline(cap, color="0.8", lw=5, zorder=1, label=f"cap ({cap} CPUs)")  # a band behind the lines
    axes[1].set_ylim(top=cap + 3)  # room above the cap: a line along the frame was lost in it
    axes[1].legend(handles=axes[1].get_lines()[-1:], loc="lower right", fontsize=8)  # colours: the key below
    axes[1].set_ylabel("instances serving\n(per-minute mean)")
    axes[2].set_ylabel("% over 720 ms\n(10-minute rolling)")
    percent_symlog(axes[2], top=100.0)
    axes[2].legend(loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=3, fontsize=8)
    axes[2].set_xlabel("minute of the trace")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.autoscale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--caps", type=int, nargs="+", default=[36, 32], help="CPU caps (default 36 32)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="arrival seeds (default 0-4)")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--serving", default="faro-queue", choices=sorted(SERVINGS), help="how a job's queue is served")
    ap.add_argument("--minutes", type=int, default=None, help="only the first minutes of the trace")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--faro-executor", action="store_true",
                    help="apply scaling as Faro's executor does: a start refused for room is retried until it "
                         "succeeds, and the job takes no new action meanwhile (default: dropped, asked again)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--plot", type=Path, default=FIGURE, help=f"figure (default {FIGURE})")
    args = ap.parse_args(argv)
    jobs = [(c, p, s) for c in args.caps for p in args.policies for s in args.seeds]
    runs: dict[tuple[int, str, int], LoopRun] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for cap, policy, seed, run in pool.map(one, *zip(*jobs, strict=True),
                                               [args.serving] * len(jobs), [args.minutes] * len(jobs),
                                               [args.faro_executor] * len(jobs)):
            runs[cap, policy, seed] = run
    executor = "Faro's executor (refused starts retried)" if args.faro_executor else "refused starts dropped"
    print(f"serving: {args.serving}; {executor}; seeds {args.seeds}; % of requests over 720 ms (drops included), "
          "mean [min-max]")
    print(f"{'policy':<12}" + "".join(f"{f'{c} CPUs':>26}{'per-minute':>12}" for c in args.caps))
    table: dict[str, dict[str, object]] = {}
    for p in args.policies:
        row = f"{p:<12}"
        for c in args.caps:
            v = np.array([runs[c, p, s].over_target for s in args.seeds]) * 100
            f = np.array([runs[c, p, s].per_minute_mean() for s in args.seeds]) * 100
            row += f"{v.mean():>12.2f} [{v.min():.2f}-{v.max():.2f}]{f.mean():>12.2f}"
            table.setdefault(p, {})[str(c)] = {"over_target_pct": v.tolist(), "per_minute_mean_pct": f.tolist(),
                                               "decisions": [len(runs[c, p, s].decisions) for s in args.seeds]}
        print(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({"serving": args.serving, "seeds": args.seeds, "policies": table},
                                           option=orjson.OPT_INDENT_2))
    if args.plot:
        plot(runs, args.caps[0], args.plot)
        print(f"figure: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
