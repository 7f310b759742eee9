"""What one load run does (``LoadConfig``) and the query schedule it implies (``build_workload``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.loadgen.inputs import check_inputs
from benchmarks.loadgen.transport import Endpoint, parse_url
from gateway.clock import start_at_problem
from gateway.errors import ConfigError
from gateway.profiles import load_catalogue
from gateway.profiles.schemas import InputSpec
from gateway.workload import (
    ArrivalProcess,
    PiecewiseRateArrivals,
    QueryTrace,
    load_trace_csv,
    make_workload,
    parse_batch_mix,
)
from gateway.workload.arrivals import parse_arrivals

ARRIVAL_KINDS = ("poisson", "integer-poisson", "constant")


@dataclass(frozen=True)
class LoadConfig:
    """One open-loop run. Exactly one source of arrivals: ``rate`` (with ``arrivals``), ``ramp``
    or ``trace``. Bounded by ``queries`` and/or ``duration_s`` (the earlier ends it); a ramp
    alone runs one pass over its segments, a trace alone runs the whole trace.

    ``qos_ms`` None: the model's target from the catalogue. ``timeout_s`` applies per request
    from the moment it is sent. ``connections`` caps the HTTP pool (gRPC multiplexes one channel).
    """

    url: str
    model: str
    rate: float | None = None
    duration_s: float | None = None
    queries: int | None = None
    qos_ms: float | None = None
    seed: int = 0
    arrivals: str = "poisson"
    ramp: tuple[tuple[float, float], ...] | None = None
    batch_mix: str = "production"
    trace: str | None = None
    binary: bool = False
    timeout_s: float = 10.0
    connections: int = 1000
    progress: bool = False
    send_qos: bool = True  # send qos_ms as a request parameter
    service_class: str | None = None  # sent as the request parameter "class"
    variant: str | None = None  # sent as the request parameter "variant" (a pin)
    accuracy: tuple[tuple[str, float], ...] = ()  # per variant: to report the accuracy served
    # Send the routing facts as headers too (kairos-model, kairos-batch, kairos-class): what a
    # client of the endpoint picker mode sets, for Envoy to report them (gateway/epp/request.py).
    routing_headers: bool = False
    inputs: tuple[InputSpec, ...] = ()  # --input; none: a shipped model's, else the model's metadata's
    start_at: float | None = None  # Unix time (s) the schedule starts at: several generators together

    @property
    def endpoint(self) -> Endpoint:
        return parse_url(self.url)

    def resolved_qos_ms(self) -> float:
        return float(self.qos_ms) if self.qos_ms is not None else load_catalogue().qos(self.model)

    def validate(self, need_source: bool = True) -> LoadConfig:
        """Raise ConfigError (one line naming the flag) on any bad value; return a config whose
        ``qos_ms`` is resolved. ``need_source`` False: the caller supplies the queries."""
        self.endpoint  # noqa: B018 - validates the URL
        if self.start_at is not None and (problem := start_at_problem(self.start_at)):
            raise ConfigError(problem)
        check_inputs(self.inputs)
        sources = sum(x is not None for x in (self.rate, self.ramp, self.trace))
        if sources > 1 or (need_source and sources == 0):
            raise ConfigError("expected exactly one of --rate, --ramp or --trace")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"--rate {self.rate:g}: expected a positive number of queries/s")
        if self.arrivals not in ARRIVAL_KINDS:
            raise ConfigError(f"--arrivals {self.arrivals!r}: expected one of {', '.join(ARRIVAL_KINDS)}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"--duration {self.duration_s:g}: expected a positive number of seconds")
        if self.queries is not None and self.queries < 1:
            raise ConfigError(f"--queries {self.queries}: expected at least 1")
        if need_source and self.rate is not None and self.duration_s is None and self.queries is None:
            raise ConfigError("--rate needs a bound: --duration S and/or --queries N")
        if self.qos_ms is not None and not self.qos_ms > 0:
            raise ConfigError(f"--qos {self.qos_ms:g}: expected a positive latency target in ms")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout {self.timeout_s:g}: expected a positive number of seconds")
        if self.connections < 1:
            raise ConfigError(f"--connections {self.connections}: expected at least 1")
        parse_batch_mix(self.batch_mix)
        if self.ramp is not None:
            PiecewiseRateArrivals(self.ramp)
        if self.trace is not None and not Path(self.trace).is_file():
            raise ConfigError(f"--trace {self.trace}: no such file")
        try:
            return replace(self, qos_ms=self.resolved_qos_ms())
        except ConfigError as exc:
            raise ConfigError(f"{exc}; for another model give its target with --qos MS") from None

    def arrival_process(self) -> ArrivalProcess | None:
        if self.ramp is not None:
            return PiecewiseRateArrivals(self.ramp)
        if self.rate is not None:
            return parse_arrivals(self.arrivals, self.rate)
        return None


def parse_ramp(spec: str) -> tuple[tuple[float, float], ...]:
    """``"30:100,30:300"`` -> ((30 s, 100 q/s), (30 s, 300 q/s))."""
    segments = []
    try:
        for part in spec.split(","):
            duration, rate = part.split(":")
            segments.append((float(duration), float(rate)))
    except ValueError:
        raise ConfigError(
            f"--ramp {spec!r}: expected comma-separated DURATION_S:RATE segments, e.g. 30:100,30:300"
        ) from None
    PiecewiseRateArrivals(tuple(segments))  # validates
    return tuple(segments)


def build_workload(config: LoadConfig) -> QueryTrace:
    """The run's queries: arrival times (ms from the start) and batch sizes.

    With ``queries`` N only, it is exactly ``make_workload(arrivals, mix, N, seed)`` (what the
    simulator draws for the same seed, rate and N). With a duration, it is the same call with N =
    the number of arrivals that fall within the duration (found from a generous over-draw; the
    arrival streams are prefix-stable), so the report's ``queries`` and ``seed`` reproduce it.
    """
    if config.trace is not None:
        trace = load_trace_csv(config.trace)
        keep = np.ones(len(trace), dtype=bool)
        if config.duration_s is not None:
            keep &= trace.arrival_ms <= config.duration_s * 1000.0
        n = int(keep.sum()) if config.queries is None else min(int(keep.sum()), config.queries)
        if n < 1:
            raise ConfigError(f"--trace {config.trace}: no query within the duration")
        return QueryTrace(trace.arrival_ms[:n], trace.batch[:n])
    arrivals = config.arrival_process()
    assert arrivals is not None
    mix = parse_batch_mix(config.batch_mix)
    duration_s = config.duration_s
    if duration_s is None and config.ramp is not None and config.queries is None:
        duration_s = sum(d for d, _ in config.ramp)
    if duration_s is None:
        assert config.queries is not None
        return make_workload(arrivals, mix, config.queries, config.seed)
    horizon_ms = duration_s * 1000.0
    peak = max(r for _, r in config.ramp) if config.ramp is not None else arrivals.mean_rate
    guess = max(16, int(peak * duration_s * 1.1 + 10 * math.sqrt(peak * duration_s) + 10))
    while True:
        times = arrivals.times_ms(guess, np.random.default_rng([config.seed, 0]))
        if times[-1] > horizon_ms:
            break
        guess *= 2
    n = int(np.searchsorted(times, horizon_ms, side="right"))
    if config.queries is not None:
        n = min(n, config.queries)
    if n < 1:
        raise ConfigError(f"--duration {duration_s:g}: no query arrives within it at this rate")
    return make_workload(arrivals, mix, n, config.seed)
