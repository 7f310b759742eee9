"""The result of a load run: raw per-query samples, and the ``LoadReport`` value computed from them.

Definitions
-----------
* Latency of a query = completion time - its SCHEDULED send time (not the actual send time), so a
  lagging sender or a queueing client cannot hide latency (no coordinated omission).
* Percentiles are nearest-rank (the ceil(q * n)-th smallest): p99 is the smallest latency that at
  least 99% of the successful queries meet. They cover successful responses only.
* ``within_qos`` counts successful responses with latency <= qos_ms; ``within_qos_pct`` divides it
  by the queries SENT, so errors and timeouts count as misses.
* ``offered_qps`` = scheduled queries / the last scheduled send time; ``achieved_qps`` = successful
  responses / the wall time from the start to the last completion; ``goodput_qps`` likewise for
  queries within QoS.
* Send lag = actual send time - scheduled send time (>= 0; the sender never sends early).

JSON schema (``LoadReport.to_json()``; ``schema`` = "kairos-loadgen/1"; times in ms unless named _s)::

    {
      "schema": "kairos-loadgen/1", "mode": "run",
      "target":   {"url": str, "protocol": "http"|"grpc", "encoding": "json"|"binary"|"protobuf",
                   "model": str},
      "workload": {"arrivals": str, "rate_qps": float|null, "batch_mix": str, "seed": int,
                   "queries": int, "schedule_s": float},
      "qos_ms": float,
      "counts":   {"scheduled": int, "sent": int, "ok": int, "errors": int, "within_qos": int,
                   "unsent": int},                       # sent == ok + errors
      "offered_qps": float, "achieved_qps": float, "goodput_qps": float, "wall_s": float,
      "within_qos_pct": float,
      "latency_ms": {"p50", "p90", "p99", "p99_9", "max", "mean": float} | null,
      "first_errors": [str],           # the first distinct errors, "kind: the server's text"
      "errors":    {kind: int},        # kinds: http_<status>, grpc_<CODE>, timeout, connection,
                                       #        bad_response, cancelled
      "instances": {name: {"count": int, "share": float}},   # successful queries per instance
                                       # (response parameter gateway_instance, else instance)
      "send_lag_ms": {"p50", "p95", "max", "mean": float} | null,
      "max_in_flight": int, "aborted": bool,
      "timeline": {"bin_s": float,
                   "bins": [{"t_s": float, "sent": int, "ok": int, "achieved_qps": float,
                             "p50_ms": float|null, "p99_ms": float|null,
                             "within_qos_pct": float|null}]}
    }

Timeline bins group queries by scheduled send time (``sent``, latency, within QoS) and by
completion time (``ok``, ``achieved_qps``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = "kairos-loadgen/1"
_EPS_MS = 1e-6  # float noise of (done - scheduled): a latency equal to the QoS is within it
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


@dataclass
class Samples:
    """Per-query raw data, indexed by query number; times in seconds from the run's start (t0).

    ``sent_s``/``done_s`` are NaN for queries never sent / never finished; ``error`` is None for
    a successful response.
    """

    scheduled_s: np.ndarray
    batch: np.ndarray
    sent_s: list[float]
    done_s: list[float]
    error: list[str | None]
    instance: list[str | None]
    variant: list[str | None] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)  # the first distinct "kind: server text"

    @classmethod
    def empty(cls, scheduled_s: np.ndarray, batch: np.ndarray) -> Samples:
        n = len(scheduled_s)
        nan = math.nan
        return cls(
            np.asarray(scheduled_s, dtype=float),
            np.asarray(batch),
            [nan] * n,
            [nan] * n,
            [None] * n,
            [None] * n,
            [None] * n,
        )


@dataclass(frozen=True)
class RunInfo:
    url: str
    protocol: str
    encoding: str
    model: str
    qos_ms: float
    arrivals: str
    rate_qps: float | None
    batch_mix: str
    seed: int
    service_class: str | None = None
    variant: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # per variant


def _pct(values: np.ndarray, q: float) -> float:
    """Nearest rank: the k-th smallest value, k = ceil(q/100 * n) (guarded against float noise)."""
    n = len(values)
    k = min(n, max(1, math.ceil(q / 100.0 * n - 1e-9)))
    return float(np.partition(values, k - 1)[k - 1])


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


@dataclass(frozen=True)
class LoadReport:
    info: RunInfo
    scheduled: int
    sent: int
    ok: int
    within_qos: int
    errors: dict[str, int]
    schedule_s: float
    wall_s: float
    offered_qps: float
    achieved_qps: float
    goodput_qps: float
    latency_ms: dict[str, float] | None
    send_lag_ms: dict[str, float] | None
    instances: dict[str, int]
    variants: dict[str, int]  # successful queries per variant that served them
    accuracy_served: float | None  # query-weighted, over those served by a variant of known accuracy
    max_in_flight: int
    aborted: bool
    timeline_bin_s: float
    timeline: list[dict[str, Any]]
    first_errors: tuple[str, ...] = ()
    samples: Samples | None = field(default=None, repr=False, compare=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def within_qos_pct(self) -> float:
        return 100.0 * self.within_qos / self.sent if self.sent else 0.0

    @property
    def unsent(self) -> int:
        return self.scheduled - self.sent

    @classmethod
    def from_samples(
        cls, info: RunInfo, samples: Samples, *, max_in_flight: int = 0, aborted: bool = False
    ) -> LoadReport:
        sched = samples.scheduled_s
        sent = np.asarray(samples.sent_s, dtype=float)
        done = np.asarray(samples.done_s, dtype=float)
        is_sent = ~np.isnan(sent)
        errs = [e for e, s in zip(samples.error, is_sent, strict=True) if s and e is not None]
        ok_mask = is_sent & ~np.isnan(done) & np.array([e is None for e in samples.error], dtype=bool)
        lat_ms = (done - sched) * 1000.0
        ok_lat = lat_ms[ok_mask]
        within = int(np.count_nonzero(ok_lat <= info.qos_ms + _EPS_MS))
        n_sched = len(sched)
        schedule_s = float(sched[-1]) if n_sched else 0.0
        finished = done[~np.isnan(done)]
        wall_s = float(finished.max()) if len(finished) else schedule_s
        latency = None
        if len(ok_lat):
            latency = {k: _pct(ok_lat, q) for k, q in PERCENTILES}
            latency["max"] = float(ok_lat.max())
            latency["mean"] = float(ok_lat.mean())
        lag = (sent[is_sent] - sched[is_sent]) * 1000.0
        send_lag = None
        if len(lag):
            lag = np.maximum(lag, 0.0)
            send_lag = {"p50": _pct(lag, 50), "p95": _pct(lag, 95), "max": float(lag.max()), "mean": float(lag.mean())}
        instances = Counter(
            inst for inst, ok in zip(samples.instance, ok_mask, strict=True) if ok and inst is not None
        )
        variants = Counter(
            v for v, ok in zip(samples.variant or [None] * len(ok_mask), ok_mask, strict=True) if ok and v is not None
        )
        known = {v: c for v, c in variants.items() if v in info.accuracy}
        accuracy_served = (
            sum(info.accuracy[v] * c for v, c in known.items()) / sum(known.values()) if known else None
        )
        n_sent = int(is_sent.sum())
        n_ok = int(ok_mask.sum())
        report = cls(
            info=info,
            scheduled=n_sched,
            sent=n_sent,
            ok=n_ok,
            within_qos=within,
            errors=dict(sorted(Counter(errs).items())),
            schedule_s=schedule_s,
            wall_s=wall_s,
            offered_qps=n_sched / schedule_s if schedule_s > 0 else (info.rate_qps or 0.0),
            achieved_qps=n_ok / wall_s if wall_s > 0 else 0.0,
            goodput_qps=within / wall_s if wall_s > 0 else 0.0,
            latency_ms=latency,
            send_lag_ms=send_lag,
            instances=dict(sorted(instances.items())),
            variants=dict(sorted(variants.items())),
            accuracy_served=accuracy_served,
            max_in_flight=max_in_flight,
            aborted=aborted,
            timeline_bin_s=0.0,
            timeline=[],
            first_errors=tuple(samples.first_errors),
            samples=samples,
        )
        bin_s, bins = _timeline(sched, done, lat_ms, ok_mask, is_sent, info.qos_ms, wall_s)
        object.__setattr__(report, "timeline_bin_s", bin_s)
        object.__setattr__(report, "timeline", bins)
        return report

    def to_json(self) -> dict[str, Any]:
        i = self.info
        return {
            "schema": SCHEMA,
            "mode": "run",
            "target": {"url": i.url, "protocol": i.protocol, "encoding": i.encoding, "model": i.model},
            "workload": {
                "arrivals": i.arrivals,
                "rate_qps": i.rate_qps,
                "batch_mix": i.batch_mix,
                "seed": i.seed,
                "queries": self.scheduled,
                "schedule_s": _r(self.schedule_s),
            },
            "qos_ms": i.qos_ms,
            "class": i.service_class,
            "variant": i.variant,
            "counts": {
                "scheduled": self.scheduled,
                "sent": self.sent,
                "ok": self.ok,
                "errors": self.error_count,
                "within_qos": self.within_qos,
                "unsent": self.unsent,
            },
            "offered_qps": _r(self.offered_qps),
            "achieved_qps": _r(self.achieved_qps),
            "goodput_qps": _r(self.goodput_qps),
            "wall_s": _r(self.wall_s),
            "within_qos_pct": _r(self.within_qos_pct, 4),
            "latency_ms": None if self.latency_ms is None else {k: _r(v) for k, v in self.latency_ms.items()},
            "errors": dict(self.errors),
            "first_errors": list(self.first_errors),
            "instances": {
                name: {"count": c, "share": _r(c / self.ok if self.ok else 0.0, 4)}
                for name, c in self.instances.items()
            },
            "variants": {
                name: {"count": c, "share": _r(c / self.ok if self.ok else 0.0, 4)} for name, c in self.variants.items()
            },
            "accuracy_served": _r(self.accuracy_served, 5),
            "send_lag_ms": None if self.send_lag_ms is None else {k: _r(v) for k, v in self.send_lag_ms.items()},
            "max_in_flight": self.max_in_flight,
            "aborted": self.aborted,
            "timeline": {"bin_s": self.timeline_bin_s, "bins": self.timeline},
        }


def _bin_width(span_s: float) -> float:
    for width in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0):
        if span_s / width <= 120:
            return width
    return 300.0


def _timeline(
    sched: np.ndarray,
    done: np.ndarray,
    lat_ms: np.ndarray,
    ok_mask: np.ndarray,
    is_sent: np.ndarray,
    qos_ms: float,
    wall_s: float,
) -> tuple[float, list[dict[str, Any]]]:
    if not len(sched):
        return 1.0, []
    width = _bin_width(max(wall_s, float(sched[-1])))
    nbins = int(max(wall_s, float(sched[-1])) // width) + 1
    sbin = (sched // width).astype(int)
    dbin = np.where(ok_mask, np.nan_to_num(done, nan=0.0) // width, -1).astype(int)
    ok_done = np.bincount(dbin[dbin >= 0], minlength=nbins)
    sent_n = np.bincount(sbin[is_sent], minlength=nbins)
    bins = []
    for b in range(nbins):
        in_bin = sbin == b
        lat = lat_ms[in_bin & ok_mask]
        n_sent = int(sent_n[b])
        within = int(np.count_nonzero(lat <= qos_ms + _EPS_MS))
        bins.append(
            {
                "t_s": round(b * width, 3),
                "sent": n_sent,
                "ok": int(ok_done[b]),
                "achieved_qps": round(float(ok_done[b]) / width, 3),
                "p50_ms": _r(_pct(lat, 50)) if len(lat) else None,
                "p99_ms": _r(_pct(lat, 99)) if len(lat) else None,
                "within_qos_pct": round(100.0 * within / n_sent, 3) if n_sent else None,
            }
        )
    return width, bins
