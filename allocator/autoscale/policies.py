"""Scaling policies: each tick, from a ``ClusterView``, how many instances each group should have.

The baselines are the ones the field uses, with their published settings:
- ``static``: fixed counts (sized for the peak, or the cap split by the peak);
- ``fairshare``: the cap split equally (Faro's FairShare);
- ``oneshot``: every tick, if the mean latency of the last 30 s is over the target for 3 ticks in
  a row, scale by latency / target (rounded up); under it for 60 ticks, scale down the same way
  (Faro's Oneshot, HPA-like);
- ``aiad``: the same counters, one instance up or down (Faro's AIAD);
- ``ray-serve``: Ray Serve's default autoscaler: ongoing requests (queued and in service, mean of
  the last 30 s) over a target of 2 per replica, acted on after 30 s up or 600 s down.
Ours, ``planned`` (``allocator.autoscale.planned``), forecasts and plans.

A policy returns targets for the groups it wants changed, with a reason each; the loop's limits
(``allocator.autoscale.limits``) and the actuator do the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from allocator.autoscale.actuator import GroupKey
from allocator.autoscale.view import ClusterView, ModelView


@dataclass(frozen=True, slots=True)
class Target:
    replicas: int
    reason: str


class ScalingPolicy(Protocol):
    name: str

    def initial(self, view: ClusterView) -> dict[GroupKey, int]:
        """The pool to start with."""
        ...

    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        """Targets for the groups to change this tick (others stay as they are)."""
        ...


def only_group(m: ModelView) -> GroupKey:
    """The one group of a single-type model (the reactive baselines scale one deployment)."""
    if len(m.groups) != 1:
        raise ValueError(f"{m.name}: this policy scales one group per model, found {len(m.groups)}")
    return next(iter(m.groups))


class StaticPolicy:
    def __init__(self, counts: Mapping[GroupKey, int], name: str = "static") -> None:
        self.counts = dict(counts)
        self.name = name

    def initial(self, view: ClusterView) -> dict[GroupKey, int]:
        return dict(self.counts)

    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        return {}


class StreakPolicy:
    """Faro's reactive scheme: a metric over or under the target for ``up_ticks`` (``down_ticks``)
    ticks in a row, then ``step``; the streak restarts after an action or when the side changes."""

    def __init__(
        self,
        name: str,
        metric: Callable[[ModelView], float | None],
        target: Callable[[ModelView], float],
        step: Callable[[int, float, float], int],
        up_ticks: int = 3,
        down_ticks: int = 60,
        min_replicas: int = 1,
        max_replicas: int = 100,
        start: int = 1,
    ) -> None:
        self.name = name
        self.metric, self.target, self.step = metric, target, step
        self.up_ticks, self.down_ticks = up_ticks, down_ticks
        self.min_replicas, self.max_replicas, self.start = min_replicas, max_replicas, start
        self.streak: dict[str, int] = {}  # > 0 ticks over, < 0 ticks under

    def initial(self, view: ClusterView) -> dict[GroupKey, int]:
        return {k: self.start for m in view.models.values() for k in m.groups}

    def decide(self, view: ClusterView) -> dict[GroupKey, Target]:
        out = {}
        for m in view.models.values():
            value = self.metric(m)
            if value is None:
                continue
            key, target = only_group(m), self.target(m)
            s = self.streak.get(m.name, 0)
            s = (max(s, 0) + 1) if value > target else (min(s, 0) - 1)
            if s >= self.up_ticks or -s >= self.down_ticks:
                current = m.groups[key].committed
                want = min(max(self.step(current, value, target), self.min_replicas), self.max_replicas)
                if want != current:
                    side = "over" if s > 0 else "under"
                    out[key] = Target(want, f"{self.name}: {value:.3g} {side} target {target:.3g} for {abs(s)} ticks")
                s = 0
            self.streak[m.name] = s
        return out


def oneshot(tick_s: float = 10.0, look_back_s: float = 30.0) -> StreakPolicy:
    return StreakPolicy(
        "oneshot", lambda m: m.mean_latency_ms(look_back_s), lambda m: m.target_ms,
        lambda n, value, target: math.ceil(n * value / target - 1e-9),
        up_ticks=round(30 / tick_s), down_ticks=round(600 / tick_s),
    )


def aiad(tick_s: float = 10.0, look_back_s: float = 30.0) -> StreakPolicy:
    return StreakPolicy(
        "aiad", lambda m: m.mean_latency_ms(look_back_s), lambda m: m.target_ms,
        lambda n, value, target: n + (1 if value > target else -1),
        up_ticks=round(30 / tick_s), down_ticks=round(600 / tick_s),
    )


RAY_TARGET_ONGOING = 2.0  # Ray Serve's default target_ongoing_requests (2.32 and later)


def ray_serve(tick_s: float = 10.0, look_back_s: float = 30.0, target_ongoing: float = RAY_TARGET_ONGOING) -> StreakPolicy:
    """Ray Serve's default autoscaling: desired = ceil(mean ongoing / target per replica), acted on
    once the wish to go up (down) has held for 30 s (600 s)."""

    def metric(m: ModelView) -> float | None:
        # per replica counted: n * metric / target is then ceil(total ongoing / target)
        return m.mean_ongoing(look_back_s) / max(m.groups[only_group(m)].committed, 1)

    return StreakPolicy(
        "ray-serve", metric, lambda m: target_ongoing,
        lambda n, value, target: math.ceil(n * value / target - 1e-9),
        up_ticks=round(30 / tick_s), down_ticks=round(600 / tick_s),
    )


def equal_split(view: ClusterView) -> dict[GroupKey, int]:
    """The cap split equally between the models' groups (Faro's FairShare: cap // jobs each)."""
    if view.cap_units is None:
        raise ValueError("fairshare needs a capacity cap")
    keys = [only_group(m) for m in view.models.values()]
    return dict.fromkeys(keys, view.cap_units // len(keys))


class FairShare(StaticPolicy):
    def __init__(self) -> None:
        super().__init__({}, "fairshare")

    def initial(self, view: ClusterView) -> dict[GroupKey, int]:
        return equal_split(view)
