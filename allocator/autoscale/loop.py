"""The live control loop: every tick, collect a window per model from the gateway, let the policy
decide on the same ``ClusterView`` the simulated loop builds, and actuate; every decision is logged
with its reason and counted in Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from allocator.autoscale.actuator import Actuator, GroupKey, GroupState, PartialScale, apply_order, bounded
from allocator.autoscale.collector import Collected
from allocator.autoscale.planned import RequestTemplate
from allocator.autoscale.policies import ScalingPolicy
from allocator.autoscale.simloop import Decision
from allocator.autoscale.view import ClusterView, ModelView
from allocator.planner.from_config import request_from_config
from gateway.config import Config
from gateway.workload import parse_batch_mix

log = logging.getLogger("kairos.autoscale")
KEPT_DECISIONS = 10_000  # the latest decisions kept in memory (all are logged and counted)


class Collector(Protocol):
    async def collect(self, models: list[str]) -> Collected | None:
        """The windows since the last call; None for the first (a baseline)."""
        ...


@dataclass(frozen=True, slots=True)
class LoopSettings:
    tick_s: float = 10.0
    max_change: int = 4  # instances per group per tick, up or down
    cap_units: int | None = None
    decide_s: float | None = None  # a decision still running after this skips its tick (None: 2 ticks)


class LoopMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("kairos_autoscale_decisions", "Scaling decisions, by group and direction",
                                 ["model", "variant", "type", "direction"], registry=self.registry)
        self.target = Gauge("kairos_autoscale_target_replicas", "The replicas each group is moving to",
                            ["model", "variant", "type"], registry=self.registry)
        self.errors = Counter("kairos_autoscale_errors", "Ticks that failed to collect, decide or actuate", ["stage"],
                              registry=self.registry)
        for stage in ("collect", "decide", "actuate"):  # at 0 from the start: a scrape sees every series
            self.errors.labels(stage)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ControlLoop:
    def __init__(
        self,
        policy: ScalingPolicy,
        collector: Collector,
        actuator: Actuator,
        targets_ms: Mapping[str, float],
        settings: LoopSettings = LoopSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.collector, self.actuator = policy, collector, actuator
        self.settings, self.clock = settings, clock
        self.views = {m: ModelView(m, t, settings.tick_s) for m, t in targets_ms.items()}
        self.metrics = LoopMetrics()
        self.decisions: deque[Decision] = deque(maxlen=KEPT_DECISIONS)
        self.decision_count = 0
        self.ticks_read = 0  # ticks whose pool and metrics were read
        self.ticks_failed = 0
        self.last_error = ""
        self._deciding: asyncio.Future[dict[GroupKey, Any]] | None = None
        self.started = clock()

    async def step(self) -> list[Decision]:
        now_s = self.clock() - self.started
        tick = self.settings.tick_s
        try:
            # The scrape first, on the tick's schedule: windows of a tick each (a pool read
            # that took longer on some ticks skewed the rates by its difference).
            collected = await self.collector.collect(list(self.views))
            if collected is not None:
                ticks = max(1, round(collected.seconds / tick))  # more than one after a skipped tick
                for name, view in self.views.items():
                    for window in collected.windows[name].split(ticks):
                        view.record(window)
            groups = await self.actuator.groups()  # a failure here loses no window: recorded above
        except Exception as exc:  # an unreachable gateway: skip the tick, never act blind
            self.metrics.errors.labels("collect").inc()
            self.ticks_failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("tick at %.0f s skipped: %s", now_s, self.last_error)
            return []
        self.ticks_read += 1
        if collected is None:
            log.info("first scrape at %.0f s: the baseline of the next tick's window", now_s)
            return []
        for name, view in self.views.items():
            view.groups = {k: s for k, s in groups.items() if k.model == name}
        held = sum(s.ready + s.starting + s.draining for s in groups.values())
        cap = self.settings.cap_units
        cluster = ClusterView(now_s, tick, self.views, cap, held)
        if self._deciding is not None and not self._deciding.done():
            self.metrics.errors.labels("decide").inc()
            log.warning("tick at %.0f s: the last decision still runs; the pool stays as it is", now_s)
            return []  # one decision at a time: the policy's state is not shared between threads
        self._deciding = asyncio.ensure_future(asyncio.to_thread(self.policy.decide, cluster))  # a plan: seconds
        self._deciding.add_done_callback(_retrieved)  # a late one's error is logged below or dropped
        limit = self.settings.decide_s if self.settings.decide_s is not None else 2 * tick
        try:
            targets = await asyncio.wait_for(asyncio.shield(self._deciding), limit)
        except TimeoutError:
            self.metrics.errors.labels("decide").inc()
            log.warning("tick at %.0f s: no decision within %.0f s; the pool stays as it is", now_s, limit)
            return []  # what it decides when it ends is stale: dropped
        except Exception:
            self.metrics.errors.labels("decide").inc()
            log.exception("tick at %.0f s: the policy failed; the pool stays as it is", now_s)
            return []
        made = []
        for key, target in apply_order(targets, lambda k: groups.get(k, GroupState()).committed):
            have = groups.get(key, GroupState()).committed
            want = bounded(have, target.replicas, self.settings.max_change)
            if cap is not None and want > have:
                want = have + min(want - have, max(cap - held, 0))  # never hold more than the cap
            if want == have:
                continue
            reason = target.reason
            try:
                await self.actuator.scale(key, want)
            except Exception as exc:
                self.metrics.errors.labels("actuate").inc()
                log.warning("%s: %d -> %d failed: %s", key, have, want, exc)
                if not isinstance(exc, PartialScale) or exc.started == 0:
                    continue
                want, reason = have + exc.started, f"{reason}; {want - have - exc.started} of the starts failed"
            if want > have:
                held += want - have  # after the scale: a failed start leaves the cap's room to the next
            d = Decision(now_s, key, have, want, reason)
            made.append(d)
            self.metrics.decisions.labels(key.model, key.variant, key.type, "up" if want > have else "down").inc()
            self.metrics.target.labels(key.model, key.variant, key.type).set(want)
            log.info("%.0fs %s: %d -> %d (%s)", now_s, key, have, want, reason)
        self.decisions.extend(made)
        self.decision_count += len(made)
        return made

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a tick's work does not shift the next tick, and a tick
        that overran the next ones skips them (never back-to-back ticks of empty windows)."""
        tick = self.settings.tick_s
        next_at = self.clock() + tick
        while not stop.is_set():
            late = self.clock() - next_at
            if late > 0:
                skipped = math.ceil(late / tick)
                next_at += skipped * tick
                log.warning("a tick took %.1f s: %d tick(s) skipped", late + tick, skipped)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(next_at - self.clock(), 0.0))
            if stop.is_set():
                break
            next_at += tick
            await self.step()


def template_from_config(config: Config, objective: Mapping[str, Any],
                         available: Mapping[str, int] | None = None, *, mix: str = "production",
                         max_units: int | None = None, max_utilisation: float | None = None,
                         refine: bool = False) -> RequestTemplate:
    """The planned policy's request template: the config's models (each one class) and catalogue,
    the batch mix, the cluster cap and utilisation cap where given, and whether each plan is
    refined in the simulator."""
    base = request_from_config(config, {(m.name, m.default_class): 0.0 for m in config.models},
                               objective=objective, available=available, mix=mix)
    if max_units is not None:
        base["max_units"] = max_units
    if max_utilisation is not None:
        base["max_utilisation"] = max_utilisation
    if refine:
        base["refine"] = True
    classes = {m.name: m.default_class for m in config.models}

    def template(loads: dict[str, Any], current: list[dict[str, Any]]) -> dict[str, Any]:
        req = dict(base)
        req["models"] = [{**m, "load": {classes[m["name"]]: loads[m["name"]]}} for m in base["models"]]
        req["current"] = current
        return req

    return template


def service_times(config: Config, mix: str = "production") -> dict[GroupKey, float]:
    """Mean service time (s) per query of each (model, variant, type) with a profile, at the batch mix."""
    profiles = config.profile_set()
    sizes, weights = parse_batch_mix(mix).pmf()
    out = {}
    for m in config.models:
        for v in m.variant_names:
            for t in profiles.types(v):
                out[GroupKey(m.name, v, t)] = float((profiles.get(v, t).means_for(sizes) * weights).sum()) / 1000.0
    return out

