"""Prometheus metrics of one gateway, in their own registry (several gateways can share a
process, e.g. in tests). One prefix, base units (seconds, ratios).

Counters and histograms are updated on events; pool gauges (pending depth, per-instance
in-flight, busy fraction, health) are read from the dispatcher when scraped, so the hot path
pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.dispatch import Dispatcher
from gateway.histogram import LoopHistogram

PREFIX = "kairos"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Fractions of the QoS for latency buckets: dense between 50% and 150% of it.
QOS_FRACTIONS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
    1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
DECISION_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)


M = TypeVar("M", bound=Counter)


class Children(Generic[M]):
    """A counter's labelled children, cached: prometheus_client's ``labels(...)`` costs ~1.5 µs
    a call, and the hot path asks for the same few children on every query."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*labels)
        return child


def qos_buckets(qos_s: float) -> tuple[float, ...]:
    return tuple(round(qos_s * f, 9) for f in QOS_FRACTIONS)


class _PoolCollector(Collector):
    def __init__(self, dispatcher: Dispatcher, started: float) -> None:
        self.dispatcher = dispatcher
        self.started = started

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self.dispatcher
        pending = GaugeMetricFamily(f"{PREFIX}_pending_queries", "Queries waiting in the gateway queue")
        pending.add_metric([], len(d.pending))
        yield pending
        p75 = GaugeMetricFamily(
            f"{PREFIX}_transport_overhead_p75_seconds",
            "75th percentile of round trip minus the instance's service time (recent queries), added to estimates",
        )
        p75.add_metric([], d.estimator.overhead_ms / 1000.0)
        p99 = GaugeMetricFamily(
            f"{PREFIX}_transport_overhead_p99_seconds",
            "99th percentile of round trip minus the instance's service time (recent queries): how early a "
            "pipelining instance takes its next query",
        )
        p99.add_metric([], d.estimator.overhead_p99_ms / 1000.0)
        mean = GaugeMetricFamily(
            f"{PREFIX}_transport_overhead_mean_seconds",
            "Mean of round trip minus the instance's service time (recent queries)",
        )
        mean.add_metric([], d.estimator.overhead_mean_ms / 1000.0)
        yield from (p75, p99, mean)
        est = d.estimator
        prior = GaugeMetricFamily(
            f"{PREFIX}_estimator_prior",
            "1 where an instance type has no latency profile and its estimates started from a prior, "
            "learned from observed service times; 0 where they started from a profile",
            labels=["instance_type"],
        )
        learned = GaugeMetricFamily(
            f"{PREFIX}_estimator_observations",
            "Service times the latency estimator has learned from, per instance type",
            labels=["instance_type"],
        )
        for k, name in enumerate(est.type_names):
            prior.add_metric([name], float(est.from_prior[k]))
            learned.add_metric([name], float(est.observations(k)))
        yield from (prior, learned)
        pipelined = GaugeMetricFamily(
            f"{PREFIX}_pipelined_dispatches", "Queries sent to an instance still serving its previous one"
        )
        pipelined.add_metric([], d.pipelined)
        yield pipelined
        labels = ["instance", "type"]
        in_flight = GaugeMetricFamily(f"{PREFIX}_instance_in_flight", "Queries in flight per instance", labels=labels)
        busy = GaugeMetricFamily(
            f"{PREFIX}_instance_busy_ratio",
            "Fraction of time each instance spent serving (its reported service time over uptime)",
            labels=labels,
        )
        healthy = GaugeMetricFamily(f"{PREFIX}_instance_healthy", "1 while the instance is in rotation", labels=labels)
        served = GaugeMetricFamily(f"{PREFIX}_instance_served", "Queries answered per instance", labels=labels)
        uptime_ms = max((time.monotonic() - self.started) * 1000.0, 1e-9)
        for inst in d.instances:
            key = [inst.name, inst.type_name]
            in_flight.add_metric(key, len(inst.in_flight))
            busy.add_metric(key, min(inst.busy_ms / uptime_ms, 1.0))
            healthy.add_metric(key, 1.0 if inst.healthy else 0.0)
            served.add_metric(key, inst.served)
        yield from (in_flight, busy, healthy, served)


class GatewayMetrics:
    def __init__(self, dispatcher: Dispatcher, model: str, qos_ms: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model = model
        r = self.registry
        buckets = qos_buckets(qos_ms / 1000.0)
        self.requests = Counter(
            f"{PREFIX}_requests", "Inference requests answered, by model, code and protocol",
            ["model", "code", "protocol"], registry=r,
        )  # fmt: skip
        self.e2e = LoopHistogram(
            f"{PREFIX}_request_duration_seconds", "End-to-end latency in the gateway (accepted queries)",
            ["model", "protocol"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.queue = LoopHistogram(
            f"{PREFIX}_queue_duration_seconds", "Time a query waited in the gateway before dispatch",
            ["model"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.violations = Counter(
            f"{PREFIX}_qos_violations", "Accepted queries answered after their QoS deadline or not at all",
            ["model"], registry=r,
        )  # fmt: skip
        self.decision = LoopHistogram(
            f"{PREFIX}_decision_duration_seconds", "Time of one dispatch decision (policy included)",
            buckets=DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.dispatches = Counter(
            f"{PREFIX}_dispatches", "Queries sent to each instance", ["instance", "type"], registry=r
        )
        self.retries = Counter(f"{PREFIX}_retries", "Queries re-dispatched after an instance failed", registry=r)
        self.failures = Counter(
            f"{PREFIX}_instance_failures", "Instance failures seen on queries", ["instance"], registry=r
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals", "Queries refused at admission, by reason", ["reason"], registry=r
        )
        self.refusal_time = LoopHistogram(
            f"{PREFIX}_refusal_duration_seconds",
            "From a request's arrival at the front end to its refusal at admission",
            buckets=DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.health_changes = Counter(
            f"{PREFIX}_health_changes", "Instances going out of or back into rotation",
            ["instance", "state"], registry=r,
        )  # fmt: skip
        r.register(_PoolCollector(dispatcher, time.monotonic()))
        # The series updated on every query (histograms cache their own).
        self.requests_of = Children(self.requests)
        self.e2e_of = self.e2e.labels
        self.queue_of = self.queue.labels
        self.violations_of = Children(self.violations)
        self.dispatches_of = Children(self.dispatches)

    def render(self) -> bytes:
        return generate_latest(self.registry)
