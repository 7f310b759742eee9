"""Policies users would otherwise pick: all of them ignore latency profiles and deadlines.

Each takes queries strictly from the head of the queue and respects each instance's free
slots (the gateway's depth per instance); with a depth above 1 they behave like the load
balancers they are named after.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gateway.policies.base import Assignment, Policy, Snapshot

# (candidate instances, in-flight counts so far, snapshot) -> the chosen instance
PickFn = Callable[[np.ndarray, np.ndarray, Snapshot], int]


def _fill(snap: Snapshot, pick: PickFn) -> list[Assignment]:
    free = snap.free_slots.copy()
    outstanding = snap.outstanding.copy()
    out: list[Assignment] = []
    allowed = snap.allowed
    for q in range(snap.n_queries):
        candidates = np.flatnonzero(free > 0 if allowed is None else (free > 0) & allowed[q])
        if candidates.size == 0:
            if allowed is not None and (free > 0).any():
                continue  # pinned to a variant with no free instance: the next query may fit
            break
        j = pick(candidates, outstanding, snap)
        out.append((q, j))
        free[j] -= 1
        outstanding[j] += 1
    return out


class FcfsPolicy(Policy):
    """Head of the queue to any free instance (chosen at random, seeded)."""

    name = "fcfs"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def decide(self, snap: Snapshot) -> list[Assignment]:
        return _fill(snap, lambda c, o, s: int(c[self._rng.integers(c.size)]))


class FcfsPaperPolicy(Policy):
    """The Kairos paper's FCFS baseline: head of the queue to the first free instance in pool
    order (the config lists the GPU first, so it fills first)."""

    name = "fcfs-paper"

    def __init__(self, seed: int = 0) -> None:
        pass

    def decide(self, snap: Snapshot) -> list[Assignment]:
        return _fill(snap, lambda c, o, s: int(c[0]))


class RoundRobinPolicy(Policy):
    """Instances in turn, skipping those without a free slot."""

    name = "round-robin"

    def __init__(self, seed: int = 0) -> None:
        self._next = 0

    def _pick(self, candidates: np.ndarray, outstanding: np.ndarray, snap: Snapshot) -> int:
        n = snap.n_instances
        order = (candidates - self._next) % n
        j = int(candidates[np.argmin(order)])
        self._next = (j + 1) % n
        return j

    def decide(self, snap: Snapshot) -> list[Assignment]:
        return _fill(snap, self._pick)


class LeastOutstandingPolicy(Policy):
    """Join the shortest queue: fewest queries in flight, then least estimated work left."""

    name = "least-outstanding"

    def __init__(self, seed: int = 0) -> None:
        pass

    def decide(self, snap: Snapshot) -> list[Assignment]:
        def pick(c: np.ndarray, o: np.ndarray, s: Snapshot) -> int:
            return int(c[np.lexsort((s.busy_left_ms[c], o[c]))[0]])

        return _fill(snap, pick)


class PowerOfTwoPolicy(Policy):
    """Two random free instances, the one with fewer in flight wins (Envoy, Ray Serve)."""

    name = "power-of-two"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def decide(self, snap: Snapshot) -> list[Assignment]:
        def pick(c: np.ndarray, o: np.ndarray, s: Snapshot) -> int:
            if c.size == 1:
                return int(c[0])
            a, b = c[self._rng.choice(c.size, 2, replace=False)]
            return int(a if o[a] <= o[b] else b)

        return _fill(snap, pick)
