"""``python -m benchmarks.overload``: the default pool, live, at a multiple of what it sustains.

Starts ``kairos-servers`` and one ``kairos-gateway`` per ``--late`` mode, drives the same seeded
Poisson load at ``--factor`` x the simulated kairos maximum, and reports what a client sees:

* accepted: queries the gateway took (answered, or shed with a deadline error);
* within QoS: accepted queries answered in time, as a share of the accepted (target >= 99%);
* refused: queries refused at admission (503 / RESOURCE_EXHAUSTED), and the slowest refusal's
  round trip (target < 5 ms).

With ``serve`` every query is accepted and served however late (the behaviour before shedding);
``shed`` (the default) refuses what the pool cannot serve in time and answers hopeless queries
at once. JSON with ``--json``, a plot with ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo import _run_config, default_rate
from benchmarks.loadgen import LoadConfig, LoadReport, run_async, run_load
from benchmarks.processes import start_gateway, start_servers
from gateway.config import load_config
from gateway.errors import KairosError

REFUSED = frozenset({"http_503", "grpc_RESOURCE_EXHAUSTED", "grpc_UNAVAILABLE"})
# The gateway's deadline error (HTTP 504, gRPC DEADLINE_EXCEEDED with the gateway's words); the
# load generator's own client timeout ("timeout") is set far above the QoS here.
SHED = frozenset({"timeout", "http_504", "grpc_DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class OverloadResult:
    late: str
    offered_qps: float
    sent: int
    accepted: int
    within_qos: int
    shed: int
    refused: int
    other_errors: dict[str, int]
    refusal_max_ms: float
    refusal_p99_ms: float
    accepted_p99_ms: float
    # The gateway's own time from a request's arrival to its refusal (kairos_refusal_duration_
    # seconds): the upper bound of the bucket holding the 99th percentile, and of the last one used.
    gateway_refusal_p99_ms: float | None = None
    gateway_refusal_max_ms: float | None = None

    @property
    def within_pct_of_accepted(self) -> float:
        return 100.0 * self.within_qos / self.accepted if self.accepted else math.nan

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "within_pct_of_accepted": round(self.within_pct_of_accepted, 3)}


def refusal_buckets(metrics: str) -> tuple[float | None, float | None]:
    """(p99, max) upper bounds in ms from the gateway's refusal histogram, None if it refused nothing."""
    bounds: list[tuple[float, float]] = []
    for m in re.finditer(r'^kairos_refusal_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', metrics, re.M):
        bounds.append((float(m[1]), float(m[2])))
    if not bounds or bounds[-1][1] == 0:
        return None, None
    total = bounds[-1][1]
    p99 = next(le for le, count in bounds if count >= 0.99 * total)
    top = next(le for le, count in bounds if count >= total)
    return p99 * 1000.0, top * 1000.0


def scrape(http_addr: str) -> str:
    with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def summarize(late: str, report: LoadReport, metrics: str = "") -> OverloadResult:
    s = report.samples
    assert s is not None
    sent_s = np.asarray(s.sent_s, dtype=float)
    done_s = np.asarray(s.done_s, dtype=float)
    latency_ms = (done_s - s.scheduled_s) * 1000.0
    round_trip_ms = (done_s - sent_s) * 1000.0
    errors = list(s.error)
    sent = ~np.isnan(sent_s)
    refused = np.array([e in REFUSED for e in errors]) & sent
    shed = np.array([e in SHED for e in errors]) & sent
    ok = np.array([e is None for e in errors]) & sent & ~np.isnan(done_s)
    accepted = ok | shed
    within = ok & (latency_ms <= report.info.qos_ms + 1e-6)
    other: dict[str, int] = {}
    for e, is_sent in zip(errors, sent, strict=True):
        if is_sent and e is not None and e not in REFUSED and e not in SHED:
            other[e] = other.get(e, 0) + 1
    refusal_rt = round_trip_ms[refused]
    acc_lat = latency_ms[ok]
    gw_p99, gw_max = refusal_buckets(metrics)
    return OverloadResult(
        late=late,
        offered_qps=round(report.offered_qps, 1),
        sent=int(sent.sum()),
        accepted=int(accepted.sum()),
        within_qos=int(within.sum()),
        shed=int(shed.sum()),
        refused=int(refused.sum()),
        other_errors=other,
        refusal_max_ms=round(float(refusal_rt.max()), 3) if refusal_rt.size else 0.0,
        refusal_p99_ms=round(float(np.percentile(refusal_rt, 99)), 3) if refusal_rt.size else 0.0,
        accepted_p99_ms=round(float(np.percentile(acc_lat, 99)), 1) if acc_lat.size else math.nan,
        gateway_refusal_p99_ms=gw_p99,
        gateway_refusal_max_ms=gw_max,
    )


def render(results: list[OverloadResult], qos_ms: float) -> str:
    lines = [
        f"{'late':<6} {'offered':>8} {'sent':>6} {'accepted':>9} {'within QoS':>11} {'shed':>6} {'refused':>8}"
        f" {'refusal max ms':>15} {'accepted p99 ms':>16} {'gateway refusal p99/max ms':>27}  (QoS {qos_ms:g} ms)"
    ]
    for r in results:
        lines.append(
            f"{r.late:<6} {r.offered_qps:>8.1f} {r.sent:>6d} {r.accepted:>9d} {r.within_pct_of_accepted:>10.2f}%"
            f" {r.shed:>6d} {r.refused:>8d} {r.refusal_max_ms:>15.2f} {r.accepted_p99_ms:>16.1f}"
            f" {_bound(r.gateway_refusal_p99_ms) + ' / ' + _bound(r.gateway_refusal_max_ms):>27}"
            + (f"  other errors {r.other_errors}" if r.other_errors else "")
        )
    return "\n".join(lines)


def _bound(ms: float | None) -> str:
    return "-" if ms is None else f"<= {ms:g}"


def plot(reports: list[tuple[str, LoadReport]], qos_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4.2), squeeze=False, sharey=True)
    for ax, (late, report) in zip(axes[0], reports, strict=True):
        s = report.samples
        assert s is not None
        done = np.asarray(s.done_s, dtype=float)
        lat = (done - s.scheduled_s) * 1000.0
        kinds = {
            "answered": (np.array([e is None for e in s.error]), "tab:blue"),
            "shed (deadline error)": (np.array([e in SHED for e in s.error]), "tab:orange"),
            "refused": (np.array([e in REFUSED for e in s.error]), "tab:gray"),
        }
        for label, (mask, color) in kinds.items():
            m = mask & ~np.isnan(lat)
            if m.any():
                ax.scatter(s.scheduled_s[m], lat[m], s=2, color=color, label=f"{label} ({int(m.sum())})", alpha=0.6)
        ax.axhline(qos_ms, color="red", ls="--", lw=1, label=f"QoS {qos_ms:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("scheduled send (s)")
        ax.set_title(f"late_queries = {late}, {report.offered_qps:.0f} QPS offered", pad=48)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=2, fontsize=8, markerscale=4)
    axes[0][0].set_ylabel("latency from scheduled send (ms, log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config.json")
    p.add_argument("--factor", type=float, default=3.0, help="load as a multiple of the simulated kairos max (3)")
    p.add_argument("--rate", type=float, help="queries/s instead of --factor")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per mode (20)")
    p.add_argument("--late", default="shed,serve", help="late_queries modes to run (shed,serve)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    modes = [m for m in args.late.split(",") if m]
    if not modes or any(m not in ("shed", "serve") for m in modes) or args.duration <= 0:
        p.error("--late takes shed and/or serve; --duration must be positive")
    try:
        config = load_config(args.config)
    except KairosError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    rate = args.rate or default_rate(config, args.factor)
    results: list[OverloadResult] = []
    reports: list[tuple[str, LoadReport]] = []
    with tempfile.TemporaryDirectory(prefix="kairos-overload-") as tmp:
        directory = Path(tmp)
        base = json.loads(_run_config(Path(args.config), directory).read_text())
        servers_config = directory / "config.json"
        servers = start_servers(servers_config, directory / "instances.json", directory=directory)
        try:
            for mode in modes:
                doc = {**base, "gateway": {**base.get("gateway", {}), "late_queries": mode}}
                path = directory / f"config-{mode}.json"
                path.write_text(json.dumps(doc))
                gw = start_gateway(path, ["--address-file", str(servers.address_file)], directory)
                try:
                    url = f"grpc://{gw.grpc}" if args.protocol == "grpc" else gw.url
                    print(f"[{mode}] {rate:.1f} QPS for {args.duration:g} s at {url}", file=sys.stderr, flush=True)
                    load = LoadConfig(
                        url=url, model=config.model, rate=rate, duration_s=args.duration, seed=args.seed,
                        qos_ms=config.qos_ms, timeout_s=60.0, progress=True,
                    )  # fmt: skip
                    report = run_async(run_load(replace(load)))
                    metrics = scrape(gw.http)
                finally:
                    gw.stop()
                results.append(summarize(mode, report, metrics))
                reports.append((mode, report))
        finally:
            servers.stop()
    print(render(results, config.qos_ms))
    if args.json:
        args.json.write_text(json.dumps({"rate_qps": rate, "qos_ms": config.qos_ms,
                                         "results": [r.to_json() for r in results]}, indent=1))  # fmt: skip
    if args.plot:
        plot(reports, config.qos_ms, args.plot)


if __name__ == "__main__":
    main()
