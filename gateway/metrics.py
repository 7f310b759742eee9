"""Prometheus metrics of one gateway, in their own registry (several gateways can share a
process, e.g. in tests). One prefix, base units (seconds, ratios), a ``model`` label on every
series that belongs to one model (and ``class`` where a service class applies). What only grows is
a counter (``_total``); ``code`` is the HTTP status for both protocols (a gRPC status as its HTTP
equivalent); latency buckets are the same for every model and gateway, so they aggregate.

Counters and histograms are updated on events; the pool's series (pending depth, per-instance
in-flight, busy seconds, served, health) are read from each model's dispatcher when scraped, so
the hot path pays nothing for them. ``kairos_build_info`` and the ``process_*`` series come too.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.dispatch import Dispatcher
from gateway.histogram import LoopHistogram
from gateway.variants import split_kind

PREFIX = "kairos"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets (s), the same for every model and every gateway: histograms from several
# gateways add up. Queries answered after their target are counted apart (qos_violations).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
ACCURACY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0)
DECISION_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)


M = TypeVar("M", bound=Counter)


def _version() -> str:
    try:
        return importlib.metadata.version("kairos-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


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

    def cached(self) -> list[tuple[str, ...]]:
        return list(self._cache)

    def forget(self, labels: tuple[str, ...]) -> None:
        """Remove a child asked for by ``labels``, from the cache and the metric."""
        self._cache.pop(labels, None)
        with contextlib.suppress(KeyError):
            self.metric.remove(*self._label_values(labels))

    def _label_values(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        return labels


class _PoolCollector(Collector):
    """Each model's pool, read from its dispatcher at scrape time."""

    def __init__(self) -> None:
        self.dispatchers: dict[str, Dispatcher] = {}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        def family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["model", *labels])

        pending = family("pending_queries", "Queries waiting in the gateway queue", [])
        p75 = family(
            "transport_overhead_p75_seconds",
            "75th percentile of round trip minus the instance's service time (recent queries), added to estimates",
            [],
        )
        p99 = family(
            "transport_overhead_p99_seconds",
            "99th percentile of round trip minus the instance's service time (recent queries): how early a "
            "pipelining instance takes its next query",
            [],
        )
        mean = family(
            "transport_overhead_mean_seconds", "Mean of round trip minus the instance's service time (recent queries)", []
        )
        prior = family(
            "estimator_prior",
            "1 where an instance type has no latency profile and its estimates started from a prior, "
            "learned from observed service times; 0 where they started from a profile",
            ["instance_type"],
        )
        learned = family(
            "estimator_observations", "Service times the latency estimator has learned from, per instance type",
            ["instance_type"],
        )  # fmt: skip
        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["model", *labels])

        pipelined = counter("pipelined_dispatches", "Queries sent to an instance still serving its previous one", [])
        labels = ["instance", "type", "variant"]
        in_flight = family("instance_in_flight", "Queries in flight per instance", labels)
        busy = counter(
            "instance_busy_seconds", "Time each instance spent serving (its reported service times): rate() is its utilisation",
            labels,
        )  # fmt: skip
        healthy = family("instance_healthy", "1 while the instance is in rotation", labels)
        served = counter("instance_served", "Queries answered per instance", labels)
        for model, d in self.dispatchers.items():
            est = d.estimator
            pending.add_metric([model], len(d.pending))
            p75.add_metric([model], est.overhead_ms / 1000.0)
            p99.add_metric([model], est.overhead_p99_ms / 1000.0)
            mean.add_metric([model], est.overhead_mean_ms / 1000.0)
            for k, name in enumerate(est.type_names):
                prior.add_metric([model, name], float(est.from_prior[k]))
                learned.add_metric([model, name], float(est.observations(k)))
            pipelined.add_metric([model], d.pipelined)
            for inst in d.instances:
                variant, type_name = split_kind(model, inst.type_name)
                key = [model, inst.name, type_name, variant]
                in_flight.add_metric(key, len(inst.in_flight))
                busy.add_metric(key, inst.busy_ms / 1000.0)
                healthy.add_metric(key, 1.0 if inst.in_rotation else 0.0)
                served.add_metric(key, inst.served)
        yield from (pending, p75, p99, mean, prior, learned, pipelined, in_flight, busy, healthy, served)


class _KindChildren(Children[Counter]):
    """Children labelled (model, instance, type, variant), asked for by (model, instance, kind)."""

    def __init__(self, metric: Counter, model: str) -> None:
        super().__init__(metric)
        self.model = model

    def __call__(self, *labels: str) -> Counter:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*self._label_values(labels))
        return child

    def _label_values(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        model, instance, kind = labels
        variant, type_name = split_kind(self.model, kind)
        return (model, instance, type_name, variant)


class GatewayMetrics:
    """The gateway's registry. ``watch`` adds a model's pool; ``for_model`` gives the series a
    model's core updates, bound to its name."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        buckets = LATENCY_BUCKETS
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge(f"{PREFIX}_build_info", "The gateway's version, and the Python it runs on (value 1)",
              ["version", "python"], registry=r).labels(_version(), platform.python_version()).set(1)
        self.requests = Counter(
            f"{PREFIX}_requests", "Inference requests answered, by model, code and protocol",
            ["model", "code", "protocol"], registry=r,
        )  # fmt: skip
        self.e2e = LoopHistogram(
            f"{PREFIX}_request_duration_seconds", "End-to-end latency in the gateway (accepted queries)",
            ["model", "class", "protocol"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.queue = LoopHistogram(
            f"{PREFIX}_queue_duration_seconds", "Time a query waited in the gateway before dispatch",
            ["model", "class"], buckets=buckets, registry=r,
        )  # fmt: skip
        self.violations = Counter(
            f"{PREFIX}_qos_violations", "Accepted queries answered after their QoS deadline or not at all",
            ["model", "class"], registry=r,
        )  # fmt: skip
        self.decision = LoopHistogram(
            f"{PREFIX}_decision_duration_seconds", "Time of one dispatch decision (policy included)",
            ["model"], buckets=DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.dispatches = Counter(
            f"{PREFIX}_dispatches", "Queries sent to each instance", ["model", "instance", "type", "variant"], registry=r
        )
        self.retries = Counter(
            f"{PREFIX}_retries", "Queries re-dispatched after an instance failed", ["model"], registry=r
        )
        self.failures = Counter(
            f"{PREFIX}_instance_failures", "Instance failures seen on queries", ["model", "instance"], registry=r
        )
        self.body_evictions = Counter(
            f"{PREFIX}_http_body_evictions", "HTTP request bodies evicted unfinished (408) to keep the receive budget",
            registry=r,
        )  # fmt: skip
        self.body_paced = Counter(
            f"{PREFIX}_http_body_paced_seconds", "Time HTTP request bodies waited for their turn (body_pace_bytes_per_s)",
            registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            f"{PREFIX}_refusals", "Queries refused at admission or shed, by reason", ["model", "class", "reason"],
            registry=r,
        )  # fmt: skip
        self.refusal_time = LoopHistogram(
            f"{PREFIX}_refusal_duration_seconds",
            "From a request's arrival at the front end to its refusal at admission",
            buckets=DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.accuracy = LoopHistogram(
            f"{PREFIX}_served_accuracy", "Accuracy of the model variant that served each query (models with variants)",
            ["model", "class"], buckets=ACCURACY_BUCKETS, registry=r,
        )  # fmt: skip
        self.health_changes = Counter(
            f"{PREFIX}_health_changes", "Instances going out of or back into rotation",
            ["model", "instance", "state"], registry=r,
        )  # fmt: skip
        self._pools = _PoolCollector()
        r.register(self._pools)
        # The series updated on every query (histograms cache their own).
        self.requests_of = Children(self.requests)

    def watch(self, model: str, dispatcher: Dispatcher) -> None:
        """Report this model's pool from now on."""
        self._pools.dispatchers[model] = dispatcher

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's series: what its core updates, the model label bound once."""

    def __init__(self, metrics: GatewayMetrics, model: str) -> None:
        self.gateway = metrics
        self.model = model
        m = metrics
        self._e2e = m.e2e.labels
        self._queue = m.queue.labels
        self._violations = Children(m.violations)
        self._dispatches = _KindChildren(m.dispatches, model)
        self._refusals = Children(m.refusals)
        self.refusal_time = m.refusal_time
        self.decision = m.decision.labels(model)
        self.retries = m.retries.labels(model)

    def e2e(self, service_class: str, protocol: str, seconds: float) -> None:
        self._e2e(self.model, service_class, protocol).observe(seconds)

    def served_accuracy(self, service_class: str, accuracy: float) -> None:
        self.gateway.accuracy.labels(self.model, service_class).observe(accuracy)

    def queued(self, service_class: str, seconds: float) -> None:
        self._queue(self.model, service_class).observe(seconds)

    def violation(self, service_class: str) -> None:
        self._violations(self.model, service_class).inc()

    def dispatched(self, instance: str, kind: str) -> None:
        """``kind``: the instance's type, or its variant on its type (``gateway.variants``)."""
        self._dispatches(self.model, instance, kind).inc()

    def refused(self, service_class: str, reason: str) -> None:
        self._refusals(self.model, service_class, reason).inc()

    def failure(self, instance: str) -> None:
        self.gateway.failures.labels(self.model, instance).inc()

    def health_change(self, instance: str, state: str) -> None:
        self.gateway.health_changes.labels(self.model, instance, state).inc()

    def forget_instance(self, instance: str) -> None:
        """Drop a removed instance's series (else every name that ever came stays in /metrics)."""
        g = self.gateway
        for labels in [k for k in self._dispatches.cached() if k[1] == instance]:
            self._dispatches.forget(labels)
        for metric, rest in ((g.failures, ()), (g.health_changes, ("up",)), (g.health_changes, ("down",))):
            with contextlib.suppress(KeyError):
                metric.remove(self.model, instance, *rest)
