"""Renderers for a ``LoadReport`` / ``FindMaxResult``: a terminal table and a PNG (matplotlib Agg).
The JSON form is ``LoadReport.to_json()`` / ``FindMaxResult.to_json()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen.report import LoadReport
from benchmarks.loadgen.search import FindMaxResult


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def render_table(report: LoadReport) -> str:
    i = report.info
    lat = report.latency_ms or {}
    lag = report.send_lag_ms or {}
    rate = "trace" if i.rate_qps is None else f"{i.rate_qps:g} q/s"
    rows: list[tuple[str, str]] = [
        ("target", f"{i.url}  ({i.protocol}, {i.encoding})  model {i.model}"),
        ("workload", f"{i.arrivals} {rate}, batch mix {i.batch_mix}, seed {i.seed}"),
        ("queries", f"{report.scheduled:,} scheduled over {report.schedule_s:.2f} s, {report.sent:,} sent"
                    + (f", {report.unsent:,} unsent (aborted)" if report.unsent else "")),
        ("offered", f"{report.offered_qps:,.1f} q/s"),
        ("achieved", f"{report.achieved_qps:,.1f} q/s ok ({report.goodput_qps:,.1f} q/s within QoS) "
                     f"over {report.wall_s:.2f} s"),
        ("latency ms", "  ".join(f"{k} {_f(lat.get(k))}" for k in ("p50", "p90", "p99", "p99_9", "max"))),
        ("within QoS", f"{report.within_qos_pct:.2f}% of sent ({report.within_qos:,}/{report.sent:,}"
                       f" within {i.qos_ms:g} ms)"),
        ("errors", ", ".join(f"{k} {v:,}" for k, v in report.errors.items()) or "none"),
    ]
    rows.extend(("first errors" if k == 0 else "", text) for k, text in enumerate(report.first_errors))
    if report.instances:
        share = ", ".join(f"{k} {100 * v / report.ok:.1f}%" for k, v in report.instances.items())
        rows.append(("instances", share))
    if report.variants:
        share = ", ".join(f"{k} {100 * v / report.ok:.1f}%" for k, v in report.variants.items())
        accuracy = "" if report.accuracy_served is None else f"; accuracy served {report.accuracy_served:.4f}"
        rows.append(("variants", share + accuracy))
    rows.append(("send lag ms", f"p50 {_f(lag.get('p50'), 3)}  p95 {_f(lag.get('p95'), 3)}  "
                                f"max {_f(lag.get('max'), 3)}  (max in flight {report.max_in_flight:,})"))
    if report.aborted:
        rows.append(("aborted", "yes: stopped once the QoS target could no longer be met"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def render_find_max(result: FindMaxResult) -> str:
    lines = [
        f"find-max: >= {100 * result.target:g}% of queries within QoS; {result.step_rule()}, "
        f"{result.pause_s:g} s pause between steps; resolution {100 * result.resolution:g}%",
        f"{'step':>4}  {'rate q/s':>10}  {'within QoS':>10}  {'p99 ms':>9}  {'achieved':>9}  "
        f"{'errors':>6}  verdict",
    ]
    for k, s in enumerate(result.steps, 1):
        j = s.to_json()
        verdict = "pass" if s.passed else ("fail (stopped early)" if s.report.aborted else "fail")
        lines.append(
            f"{k:>4}  {s.rate_qps:>10,.1f}  {j['within_qos_pct']:>9.2f}%  {_f(j['p99_ms']):>9}  "
            f"{j['achieved_qps']:>9,.1f}  {j['errors']:>6}  {verdict}"
        )
    lines.append(f"max_qps {result.max_qps:,.1f}")
    return "\n".join(lines)


def log_ticks(axis: Any) -> None:
    """Labels at 1, 2 and 5 times a power of ten, unlabelled minor ticks: no overlapping labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def plot_report(report: LoadReport, path: str | Path, title: str | None = None) -> Path:
    """Latency CDF (left), and timelines of latency and of throughput (right, one above the other) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report.samples
    if s is None:
        raise ValueError("the report has no samples to plot")
    i = report.info
    sched = s.scheduled_s
    done = np.asarray(s.done_s, dtype=float)
    ok = ~np.isnan(done) & np.array([e is None for e in s.error], dtype=bool)
    lat = (done - sched) * 1000.0

    # The CDF on the left; on the right latency over time above throughput over time, sharing the
    # time axis (on a twin axis, throughput tangled with the p99 and QoS lines).
    fig = plt.figure(figsize=(13, 6.2))
    grid = fig.add_gridspec(2, 2, height_ratios=(2.2, 1))
    ax_cdf = fig.add_subplot(grid[:, 0])
    ax_t = fig.add_subplot(grid[0, 1])
    ax_q = fig.add_subplot(grid[1, 1], sharex=ax_t)
    fig.suptitle(
        title or f"{i.model} @ {report.offered_qps:,.0f} q/s offered ({i.protocol}), "
        f"{report.within_qos_pct:.2f}% within {i.qos_ms:g} ms"
    )
    ok_lat = np.sort(lat[ok])
    if len(ok_lat):
        y = np.arange(1, len(ok_lat) + 1) / max(report.sent, 1)  # errors never reach the top
        ax_cdf.plot(ok_lat, y, lw=1.5)
        ax_cdf.set_xscale("log")
        log_ticks(ax_cdf.xaxis)
    ax_cdf.axvline(i.qos_ms, color="red", ls="--", lw=1, label=f"QoS {i.qos_ms:g} ms")
    ax_cdf.set_xlabel("latency from scheduled send (ms, log)")
    ax_cdf.set_ylabel("fraction of sent queries")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)

    bins = report.timeline
    width = report.timeline_bin_s
    t = np.array([b["t_s"] + width / 2 for b in bins])
    ax_t.scatter(sched[ok], lat[ok], s=2, alpha=0.25, color="tab:gray", label="query latency")
    for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
        vals = [np.nan if b[key] is None else b[key] for b in bins]
        ax_t.plot(t, vals, style, color="tab:blue", label=key.replace("_ms", "") + " per bin")
    ax_t.axhline(i.qos_ms, color="red", ls="--", lw=1, label=f"QoS {i.qos_ms:g} ms")
    ax_t.set_yscale("log")
    log_ticks(ax_t.yaxis)
    ax_t.set_ylabel("latency (ms, log)")
    ax_t.grid(alpha=0.3)
    ax_t.tick_params(labelbottom=False)
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, 1.16), ncol=4, fontsize=8, frameon=False, markerscale=4)
    # Completions per bin swing with each bin's few queries: a 1 s moving mean shows the trend.
    k = max(1, round(1.0 / width)) if width > 0 else 1
    qps = np.array([b["achieved_qps"] for b in bins], dtype=float)
    top = report.offered_qps
    if len(qps) >= k:
        smooth = np.convolve(qps, np.ones(k) / k, mode="valid")
        ax_q.plot(t[k - 1 :], smooth, color="tab:green", lw=1.5, label=f"achieved ({k * width:g} s mean)")
        top = max(top, float(np.nanmax(smooth)) if smooth.size else 0.0)
    ax_q.axhline(report.offered_qps, color="0.4", ls=":", lw=1, label=f"offered ({report.offered_qps:,.0f} q/s)")
    ax_q.set_ylabel("q/s")
    ax_q.set_ylim(0, 1.15 * top if top > 0 else None)  # room above: a line at the frame is lost in it
    ax_q.set_xlabel("time (s, by scheduled send)")
    ax_q.grid(alpha=0.3)
    ax_q.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
