"""The live collector: a tick's ``Window`` per model from the gateway's Prometheus metrics.

Counters are read as differences between two scrapes: requests answered (arrivals), the latency
histogram's count and sum (completions and their mean), QoS violations plus the refusals at
admission (over target; a shed or displaced query was accepted, so it is a violation already);
the pool gauges give what is queued and in service at the scrape. The first scrape is only the
baseline of the next (the totals before it are the gateway's whole past, not a window); a total
that fell (a restarted gateway) counts from zero, as Prometheus' ``increase`` does. A scrape
without a model's pool gauges (the gateway reports them for every model it serves, from its
start) is not the gateway's: a proxy's page, a truncated answer. It fails the tick and keeps the
baseline; read as zeros, its totals would have counted the gateway's whole past as one window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from allocator.autoscale.view import Window

_COUNTERS = {
    "kairos_requests": "arrivals",
    "kairos_request_duration_seconds_count": "completed",
    "kairos_request_duration_seconds_sum": "latency_s",
    "kairos_qos_violations": "violations",
    "kairos_refusals": "refusals",
}
_GAUGES = {"kairos_pending_queries": "queued", "kairos_instance_in_flight": "in_service"}
# Refusals of queries already accepted: their failure counts in kairos_qos_violations too.
_ACCEPTED_REFUSALS = ("shed", "displaced")


@dataclass(frozen=True)
class Scrape:
    counters: dict[str, dict[str, float]]  # model -> name -> total
    gauges: dict[str, dict[str, float]]


def parse_metrics(text: str) -> Scrape:
    counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    gauges: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            name = sample.name.removesuffix("_total")
            if name == "kairos_refusals" and sample.labels.get("reason") in _ACCEPTED_REFUSALS:
                continue
            if name in _COUNTERS:
                counters[model][_COUNTERS[name]] += sample.value
            elif name in _GAUGES:
                gauges[model][_GAUGES[name]] += sample.value
    return Scrape({m: dict(v) for m, v in counters.items()}, {m: dict(v) for m, v in gauges.items()})


def window_between(before: Scrape | None, after: Scrape, model: str) -> Window:
    now = after.counters.get(model, {})
    then = before.counters.get(model, {}) if before else {}

    def delta(key: str) -> float:
        total, before = now.get(key, 0.0), then.get(key, 0.0)
        return total - before if total >= before else total  # fell: a restarted gateway counts from 0

    g = after.gauges.get(model, {})
    return Window(
        arrivals=round(delta("arrivals")),
        completed=round(delta("completed")),
        latency_sum_ms=delta("latency_s") * 1000.0,
        over_target=round(delta("violations") + delta("refusals")),
        queued=round(g.get("queued", 0.0)),
        in_service=round(g.get("in_service", 0.0)),
    )


@dataclass(frozen=True)
class Collected:
    """A window per model, and the seconds between the two scrapes it is the difference of."""

    windows: dict[str, Window]
    seconds: float


class IncompleteMetrics(Exception):
    """A scrape that lacks a model's series."""


class GatewayCollector:
    def __init__(
        self, session: aiohttp.ClientSession, metrics_url: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session, self.url, self.clock = session, metrics_url, clock
        self.last: Scrape | None = None
        self.last_at = 0.0

    async def collect(self, models: list[str]) -> Collected | None:
        """The windows since the last scrape; None for the first (the baseline)."""
        async with self.session.get(self.url) as resp:
            resp.raise_for_status()
            text = await resp.text()
        try:
            scrape = parse_metrics(text)
        except ValueError as exc:
            raise IncompleteMetrics(f"{self.url}: not Prometheus text ({exc})") from None
        missing = [m for m in models if "queued" not in scrape.gauges.get(m, {})]
        if missing:
            raise IncompleteMetrics(f"{self.url} has no kairos_pending_queries series of {', '.join(missing)}: "
                                    "not the gateway's metrics, or a gateway that serves no such model")
        now, before, before_at = self.clock(), self.last, self.last_at
        self.last, self.last_at = scrape, now
        if before is None:
            return None
        return Collected({m: window_between(before, scrape, m) for m in models}, now - before_at)
