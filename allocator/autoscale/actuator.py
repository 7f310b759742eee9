"""What the control loop actuates: groups of identical instances, one per (model, variant, type).

An actuator reports each group's instances by state and moves a group towards a replica count.
It owns the mechanics (start, add to the gateway once ready, drain, stop once drained); the loop
owns the decisions (how many, how fast, never below what the load needs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    """One group of identical instances. ``variant`` is the model itself when it has no variants."""

    model: str
    variant: str
    type: str

    def __str__(self) -> str:
        name = self.model if self.variant == self.model else f"{self.model}/{self.variant}"
        return f"{name}@{self.type}"


@dataclass(frozen=True, slots=True)
class GroupState:
    """A group's instances: serving, starting (not serving yet) and draining (leaving).
    ``unschedulable``: of those starting, how many the cluster has no room for (Kubernetes: no
    node fits the pod, or a quota refused it); they will not serve until the cluster changes."""

    ready: int = 0
    starting: int = 0
    draining: int = 0
    unschedulable: int = 0

    @property
    def placed(self) -> int:
        """What the group will have once what is starting and has room is ready."""
        return self.ready + self.starting - self.unschedulable

    @property
    def committed(self) -> int:
        """What the group will have once what is starting is ready (draining ones are leaving)."""
        return self.ready + self.starting


def bounded(have: int, want: int, max_change: int | None) -> int:
    """``want``, moved at most ``max_change`` away from ``have`` (no bound with None), never below 0."""
    want = max(want, 0)
    if max_change is None:
        return want
    return min(max(want, have - max_change), have + max_change)


class PartialScale(Exception):
    """``scale`` failed after it had started ``started`` of the instances asked for (the cause
    chained): they hold their units."""

    def __init__(self, message: str, started: int) -> None:
        super().__init__(message)
        self.started = started


class _Sized(Protocol):
    @property
    def replicas(self) -> int: ...


T = TypeVar("T", bound=_Sized)


def apply_order(targets: Mapping[GroupKey, T], committed: Callable[[GroupKey], int]) -> list[tuple[GroupKey, T]]:
    """Targets in the order a loop applies them: downs first, then ups, ties in the policy's order.
    Live and simulated loops share it, so a binding cap gives its room to the same groups."""
    return sorted(targets.items(), key=lambda kv: kv[1].replicas - committed(kv[0]))


class Actuator(Protocol):
    async def groups(self) -> dict[GroupKey, GroupState]:
        """Every group the actuator manages, including those scaled to zero that it knows."""
        ...

    async def scale(self, key: GroupKey, replicas: int) -> None:
        """Move ``key`` towards ``replicas`` serving instances: start what is missing (each joins
        the serving pool once ready), drain what is over and stop it once drained. Returns once
        the change is under way, not when it is done; ``PartialScale`` when a start failed after
        others had begun."""
        ...
