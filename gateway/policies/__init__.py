"""Distribution policies: pure functions of a snapshot of the queue and the pool."""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.policies.base import Assignment, Policy, Snapshot
from gateway.policies.baselines import (
    FcfsPaperPolicy,
    FcfsPolicy,
    LeastOutstandingPolicy,
    PowerOfTwoPolicy,
    RoundRobinPolicy,
)
from gateway.policies.fluid import FluidPolicy
from gateway.policies.kairos import KairosPolicy

_POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (KairosPolicy, FluidPolicy, FcfsPolicy, FcfsPaperPolicy, RoundRobinPolicy, LeastOutstandingPolicy,
              PowerOfTwoPolicy)
}
POLICY_NAMES = tuple(_POLICIES)


def make_policy(name: str, seed: int = 0) -> Policy:
    try:
        cls = _POLICIES[name]
    except KeyError:
        raise ConfigError(f"policy {name!r}: expected one of {', '.join(POLICY_NAMES)}") from None
    return cls(seed)  # type: ignore[call-arg]


__all__ = ["POLICY_NAMES", "Assignment", "Policy", "Snapshot", "make_policy"]
