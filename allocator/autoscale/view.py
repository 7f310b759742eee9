"""What a scaling policy sees each tick: per model, the load and what serving it measured, and the
pool's groups; for the cluster, the capacity cap. The same view is built from the simulator and from
a live gateway, so one policy runs unchanged on both clocks."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from allocator.autoscale.actuator import GroupKey, GroupState


@dataclass(frozen=True, slots=True)
class Window:
    """One tick of one model: queries arrived, completed (their mean latency), over target
    (late, refused or shed) and, at the tick's end, queued and in service."""

    arrivals: int
    completed: int
    latency_sum_ms: float
    over_target: int
    queued: int
    in_service: int

    @property
    def ongoing(self) -> int:
        return self.queued + self.in_service

    def split(self, ticks: int) -> list[Window]:
        """This window as ``ticks`` ticks (it covered that many): counts shared out evenly, the
        gauges (read at its end) in each."""
        if ticks <= 1:
            return [self]

        def share(n: int) -> list[int]:
            q, r = divmod(n, ticks)
            return [q + (k < r) for k in range(ticks)]

        done = share(self.completed)
        return [
            Window(a, c, self.latency_sum_ms * (c / self.completed if self.completed else 1.0 / ticks), o,
                   self.queued, self.in_service)
            for a, c, o in zip(share(self.arrivals), done, share(self.over_target), strict=True)
        ]


# The forecaster's history, bounded: two days of 10 s ticks, trimmed a day at a time (8640 ticks
# divides by every step of 1-6, 8, 9, 10 or 12 ticks, so the steps keep their boundaries).
TRIM_TICKS = 8640
HISTORY_TICKS = 2 * TRIM_TICKS


@dataclass
class ModelView:
    """One model's recent past: a tick's windows (newest last, bounded) and per-tick arrivals
    (the forecaster's history, the last two to three days)."""

    name: str
    target_ms: float
    tick_s: float
    windows: deque[Window] = field(default_factory=lambda: deque(maxlen=360))
    arrivals: list[int] = field(default_factory=list)
    groups: dict[GroupKey, GroupState] = field(default_factory=dict)

    def record(self, w: Window) -> None:
        self.windows.append(w)
        self.arrivals.append(w.arrivals)
        if len(self.arrivals) > HISTORY_TICKS + TRIM_TICKS:
            del self.arrivals[:TRIM_TICKS]  # a multiple of any usual step's ticks: steps stay aligned

    def recent(self, seconds: float) -> list[Window]:
        k = max(1, round(seconds / self.tick_s))
        return list(self.windows)[-k:]

    def rate(self, seconds: float) -> float:
        """Arrivals per second over the last ``seconds``."""
        ws = self.recent(seconds)
        return sum(w.arrivals for w in ws) / (len(ws) * self.tick_s) if ws else 0.0

    def mean_latency_ms(self, seconds: float) -> float | None:
        ws = self.recent(seconds)
        done = sum(w.completed for w in ws)
        return sum(w.latency_sum_ms for w in ws) / done if done else None

    def over_share(self, seconds: float) -> float:
        ws = self.recent(seconds)
        total = sum(w.arrivals for w in ws)
        return sum(w.over_target for w in ws) / total if total else 0.0

    def mean_ongoing(self, seconds: float) -> float:
        ws = self.recent(seconds)
        return float(np.mean([w.ongoing for w in ws])) if ws else 0.0

    def per_step(self, step_s: float) -> np.ndarray:
        """Arrivals per second in whole steps of ``step_s`` (a multiple of the tick), oldest
        first; the step in progress is left out."""
        k = max(1, round(step_s / self.tick_s))
        whole = len(self.arrivals) // k * k
        counts = np.asarray(self.arrivals[:whole], dtype=float).reshape(-1, k).sum(axis=1)
        return counts / (k * self.tick_s)

    def step_elapsed_s(self, step_s: float) -> float:
        """How much of the step in progress (the one ``per_step`` leaves out) has passed."""
        k = max(1, round(step_s / self.tick_s))
        return len(self.arrivals) % k * self.tick_s

    @property
    def committed(self) -> int:
        return sum(s.committed for s in self.groups.values())

    @property
    def ready(self) -> int:
        return sum(s.ready for s in self.groups.values())


@dataclass
class ClusterView:
    now_s: float
    tick_s: float
    models: dict[str, ModelView]
    cap_units: int | None  # instances the cluster may hold in all; None: no cap
    held_units: int  # instances held now: serving, starting, draining, or released but not yet free

    @property
    def free_units(self) -> int | None:
        return None if self.cap_units is None else max(self.cap_units - self.held_units, 0)
