"""The control loop on the virtual clock: every model's dispatcher in the simulator (one
``gateway.sim.Simulation`` each), advanced tick by tick; at each tick the policy reads the same
``ClusterView`` a live loop builds and its targets are actuated as pool events, with start-up
delays, drains, and a removed instance's capacity held for ``release_s`` (as a cluster frees a
pod's CPU only once it is gone).

Same setting and seed, same run: the arrivals are drawn from the seed, the simulator is
deterministic, and the policies are pure functions of the views.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from allocator.autoscale.actuator import GroupKey, GroupState, apply_order, bounded
from allocator.autoscale.policies import ScalingPolicy, Target
from allocator.autoscale.view import ClusterView, ModelView, Window
from gateway.dispatch import OverloadControl
from gateway.profiles import ProfileSet
from gateway.sim.engine import Simulation
from gateway.sim.events import ADD, REMOVE, PoolEvent
from gateway.workload import QueryTrace


@dataclass(frozen=True, slots=True)
class Serving:
    """How each model's queue is served: the gateway's way (``kairos``, late queries shed, one
    query per instance) or a plain queue (``fcfs``, several per instance, a bounded queue)."""

    policy: str = "kairos"
    depth: int = 1
    max_pending: int | None = None
    shed_late: bool = True

    def simulation_args(self, target_ms: float) -> dict[str, object]:
        args: dict[str, object] = {"policy": self.policy, "depth": self.depth, "max_pending": self.max_pending}
        if self.shed_late:
            args["overload"] = OverloadControl.for_mode("shed", target_ms)
        return args


GATEWAY = Serving()


@dataclass(frozen=True)
class SimModel:
    name: str
    trace: QueryTrace
    target_ms: float
    types: tuple[str, ...]  # its groups: (name, name, type) each
    # the round trip around each service, as a live gateway measures it (0: the ideal pool);
    # with one, queries are pipelined as the live gateway does
    transport_ms: float = 0.0
    transport_p99_ms: float | None = None


@dataclass(frozen=True)
class SimSetting:
    models: tuple[SimModel, ...]
    profiles: ProfileSet
    serving: Serving = GATEWAY
    cap_units: int | None = None
    startup_s: Mapping[str, float] = field(default_factory=dict)  # per type; absent: 0
    release_s: float = 0.0
    price_per_hour: Mapping[str, float] = field(default_factory=dict)  # per type
    tick_s: float = 10.0
    max_change: int | None = None  # instances per group per tick, as the live loop's bound
    # Faro's executor: a start refused for room is retried every tick until it succeeds, and the
    # group takes no new target meanwhile (False: a refused start is dropped, the policy asks again)
    retry_refused: bool = False

    @property
    def duration_s(self) -> float:
        return max(float(m.trace.arrival_ms[-1]) for m in self.models if len(m.trace)) / 1000.0


@dataclass(frozen=True)
class Decision:
    at_s: float
    key: GroupKey
    before: int
    after: int
    reason: str


@dataclass(frozen=True)
class LoopRun:
    """One run: per model, each query's outcome; per tick, each group's instances; every decision."""

    policy: str
    seed: int
    models: tuple[str, ...]
    tick_s: float
    ticks_s: np.ndarray  # (T,)
    arrivals: np.ndarray  # (T, models) per tick
    over: np.ndarray  # (T, models) queries of the tick's arrivals that ended over target (drops included)
    groups: tuple[GroupKey, ...]
    ready: np.ndarray  # (T, groups) at each tick's end
    held: np.ndarray  # (T,) units held (serving, starting, draining, releasing)
    cost: float  # $ over the run
    decisions: tuple[Decision, ...]
    wall_s: float
    plan_time_s: float = 0.0
    # the planned policy's forecasts: (time s, all models' 10%, 50%, 90% planned-for rate, q/s)
    forecast: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def queries(self) -> int:
        return int(self.arrivals.sum())

    @property
    def over_target(self) -> float:
        """Share of all queries over target (late, refused or shed)."""
        return float(self.over.sum() / max(self.arrivals.sum(), 1))

    def per_model(self) -> dict[str, float]:
        a, o = self.arrivals.sum(axis=0), self.over.sum(axis=0)
        return {m: float(o[j] / max(a[j], 1)) for j, m in enumerate(self.models)}

    def per_minute_mean(self) -> float:
        """The mean over (minute, model) of the share over target (Faro reports the share of all
        requests, ``over_target``)."""
        k = max(1, round(60.0 / self.tick_s))
        whole = self.arrivals.shape[0] // k * k
        a = self.arrivals[:whole].reshape(-1, k, self.arrivals.shape[1]).sum(axis=1)
        o = self.over[:whole].reshape(-1, k, self.over.shape[1]).sum(axis=1)
        return float(np.mean(np.where(a > 0, o / np.maximum(a, 1), 0.0)))


class SimActuator:
    """Groups of simulated instances: starts them (serving after the type's start-up delay),
    removes them (drained by the dispatcher), and holds a removed one's unit for ``release_s``."""

    def __init__(self, setting: SimSetting, sims: Mapping[str, Simulation]) -> None:
        self.setting, self.sims = setting, sims
        self.ready: dict[GroupKey, list[str]] = {}
        self.starting: dict[GroupKey, list[tuple[str, float]]] = {}
        self.releasing: list[tuple[float, str]] = []  # (when free, type) per released unit
        self.shortfall: dict[GroupKey, int] = {}  # starts refused for room, to retry (retry_refused)
        self.cost = 0.0
        self._names = 0

    def start_with(self, key: GroupKey, names: Sequence[str]) -> None:
        self.ready.setdefault(key, []).extend(names)
        self.starting.setdefault(key, [])

    def settle(self, now_s: float) -> None:
        for key, items in self.starting.items():
            joined = [n for n, at in items if at <= now_s + 1e-9]
            if joined:
                self.ready[key].extend(joined)
                self.starting[key] = [(n, at) for n, at in items if at > now_s + 1e-9]
        self.releasing = [r for r in self.releasing if r[0] > now_s + 1e-9]

    def state(self, key: GroupKey) -> GroupState:
        return GroupState(len(self.ready.get(key, [])), len(self.starting.get(key, [])))

    def held(self) -> int:
        return sum(len(v) for v in self.ready.values()) + sum(len(v) for v in self.starting.values()) + len(self.releasing)

    def accrue(self, seconds: float) -> None:
        price = self.setting.price_per_hour
        for key in self.ready:
            n = len(self.ready[key]) + len(self.starting[key])
            self.cost += n * price.get(key.type, 0.0) * seconds / 3600.0
        for _, type_name in self.releasing:  # billed until free
            self.cost += price.get(type_name, 0.0) * seconds / 3600.0

    def busy(self, key: GroupKey) -> bool:
        """Still retrying refused starts (retry_refused): the group takes no new target."""
        return self.shortfall.get(key, 0) > 0

    def retry(self, now_s: float) -> None:
        for key, missing in list(self.shortfall.items()):
            if missing > 0:
                have = self.state(key).committed
                self.scale(key, have + missing, now_s)

    def scale(self, key: GroupKey, replicas: int, now_s: float) -> int:
        """Move ``key`` towards ``replicas``; returns the count it will have (starts wait for room)."""
        sim = self.sims[key.model]
        ready, starting = self.ready.setdefault(key, []), self.starting.setdefault(key, [])
        have = len(ready) + len(starting)
        self.shortfall.pop(key, None)
        if replicas > have:
            room = replicas - have
            if self.setting.cap_units is not None:
                room = min(room, max(self.setting.cap_units - self.held(), 0))
            if self.setting.retry_refused and room < replicas - have:
                self.shortfall[key] = replicas - have - room
            startup = self.setting.startup_s.get(key.type, 0.0)
            for _ in range(room):
                name = f"{key.type}-n{self._names}"
                self._names += 1
                sim.schedule(PoolEvent(now_s * 1000.0, ADD, name, key.type, startup * 1000.0))
                starting.append((name, now_s + startup))
            return have + room
        for _ in range(have - replicas):
            if starting:  # the newest start first: it serves nobody yet
                name, at = starting.pop()
                sim.schedule(PoolEvent(at * 1000.0, REMOVE, name))
                self.releasing.append((at + self.setting.release_s, key.type))
            else:
                name = ready.pop()
                sim.schedule(PoolEvent(now_s * 1000.0, REMOVE, name))
                self.releasing.append((now_s + self.setting.release_s, key.type))
        return replicas


def run_loop(
    setting: SimSetting,
    policy: ScalingPolicy,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LoopRun:
    started = time.perf_counter()
    tick = setting.tick_s
    names = tuple(m.name for m in setting.models)
    views = {
        m.name: ModelView(m.name, m.target_ms, tick, groups={GroupKey(m.name, m.name, t): GroupState() for t in m.types})
        for m in setting.models
    }
    view = ClusterView(0.0, tick, views, setting.cap_units, 0)
    first = policy.initial(view)
    sims: dict[str, Simulation] = {}
    act = SimActuator(setting, sims)
    for m in setting.models:
        pool = tuple((t, first.get(GroupKey(m.name, m.name, t), 0)) for t in m.types)
        pool = tuple(p for p in pool if p[1] > 0) or ((m.types[0], 0),)
        sims[m.name] = Simulation(
            m.trace, model=m.name, qos_ms=m.target_ms, pool=pool, seed=seed, profiles=setting.profiles,
            warmup=0.0, observe=True, transport_ms=m.transport_ms, transport_p99_ms=m.transport_p99_ms,
            pipeline=m.transport_ms > 0, **setting.serving.simulation_args(m.target_ms),  # type: ignore[arg-type]
        )
        for t, count in pool:
            act.start_with(GroupKey(m.name, m.name, t), [f"{t}-{k}" for k in range(count)])
    groups = tuple(k for m in setting.models for k in views[m.name].groups)
    n_ticks = math.ceil(setting.duration_s / tick) + 1
    arrivals = np.zeros((n_ticks, len(names)), dtype=np.int64)
    ready_log = np.zeros((n_ticks, len(groups)), dtype=np.int64)
    held_log = np.zeros(n_ticks, dtype=np.int64)
    decisions: list[Decision] = []
    arrived = dict.fromkeys(names, 0)
    for k in range(n_ticks):
        now_s = (k + 1) * tick
        for j, m in enumerate(setting.models):
            sim = sims[m.name]
            sim.advance(now_s * 1000.0)
            lat, refused, shed = sim.window()
            late = sum(1 for x in lat if x > m.target_ms)
            in_service = sum(len(i.in_flight) for i in sim.dispatcher.instances)
            w = Window(sim.arrived - arrived[m.name], len(lat), float(sum(lat)), late + refused + shed, sim.pending, in_service)
            arrived[m.name] = sim.arrived
            arrivals[k, j] = w.arrivals
            views[m.name].record(w)
        act.settle(now_s)
        act.retry(now_s)
        act.accrue(tick)
        for m in setting.models:
            views[m.name].groups = {key: act.state(key) for key in views[m.name].groups}
        view = ClusterView(now_s, tick, views, setting.cap_units, act.held())
        targets: dict[GroupKey, Target] = policy.decide(view)
        for key, tgt in apply_order(targets, lambda k: act.state(k).committed):
            if key not in views[key.model].groups:
                views[key.model].groups[key] = GroupState()
            if act.busy(key):
                continue  # Faro's executor: still applying the last action
            before = act.state(key).committed
            after = act.scale(key, bounded(before, tgt.replicas, setting.max_change), now_s)
            if after != before:
                decisions.append(Decision(now_s, key, before, after, tgt.reason))
        ready_log[k] = [act.state(key).ready for key in groups]
        held_log[k] = act.held()
        if progress and (k + 1) % 360 == 0:
            progress(f"{policy.name}: {now_s / 3600:.1f} h of {setting.duration_s / 3600:.1f} h simulated")
    over = np.zeros_like(arrivals)
    for j, m in enumerate(setting.models):
        sims[m.name].advance(math.inf)  # what is still queued or in service is answered
        res = sims[m.name].result()
        bad = ~res.within_qos()
        tick_of = np.minimum((res.arrival_ms / 1000.0 // tick).astype(np.int64), n_ticks - 1)
        np.add.at(over[:, j], tick_of[bad], 1)
    plan_time = float(getattr(policy, "plan_time_s", 0.0))
    forecast = tuple((t, *(sum(v[i] for v in per.values()) for i in range(3)))
                     for t, per in getattr(policy, "forecast_log", ()))
    return LoopRun(policy.name, seed, names, tick, (np.arange(n_ticks) + 1) * tick, arrivals, over, groups,
                   ready_log, held_log, act.cost, tuple(decisions), time.perf_counter() - started, plan_time,
                   forecast)
