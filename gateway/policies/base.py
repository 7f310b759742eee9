"""What a policy sees and returns.

A policy is a function of a snapshot: it does no I/O and reads no clock, so the same code
runs in the live gateway (wall clock) and in the simulator (virtual clock).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

# An input given as its array, or as a function that computes it when a policy first reads it.
Lazy = np.ndarray | Callable[[], np.ndarray]


class _LazyInput:
    """A snapshot input computed on first read. Why: the baselines never read the estimates,
    the time left to deadlines or the instances' work left, and computing them anyway was a
    third of a baseline's decision, which the gateway takes once per query."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, snap: object, owner: object = None) -> np.ndarray:
        value = getattr(snap, self.slot)
        if not isinstance(value, np.ndarray):
            value = value()
            setattr(snap, self.slot, value)
        return value


class Snapshot:
    """Pending queries (head of the FIFO first) and instances at one decision. A policy reads
    it and never writes to its arrays (the dispatcher passes read-only views of its own)."""

    __slots__ = (
        "_allowed",
        "_busy_left_ms",
        "_est_ms",
        "_qos_ms",
        "_time_left_ms",
        "accuracy_rank",
        "batch",
        "coefficient",
        "free_slots",
        "healthy",
        "inst_type",
        "outstanding",
    )  # fmt: skip

    time_left_ms = _LazyInput()  # (Q,) time to each query's deadline; negative once late
    qos_ms = _LazyInput()  # (Q,) each query's own latency target: deadline minus arrival
    busy_left_ms = _LazyInput()  # (N,) estimated time until the instance has finished its work
    est_ms = _LazyInput()  # (Q, T) estimated mean service time of each query on each type
    _allowed: Lazy | None

    @property
    def allowed(self) -> np.ndarray | None:
        """(Q, N) where each query may go, or None when every query may go anywhere."""
        if self._allowed is not None and not isinstance(self._allowed, np.ndarray):
            self._allowed = self._allowed()
        return self._allowed

    def __init__(
        self,
        *,
        batch: np.ndarray,  # (Q,) int batch sizes
        time_left_ms: Lazy,
        qos_ms: Lazy | float,  # a float: the same target for every query
        inst_type: np.ndarray,  # (N,) type index of each instance
        healthy: np.ndarray,  # (N,) bool
        free_slots: np.ndarray,  # (N,) int: queries the instance may still take (0 when unhealthy)
        outstanding: np.ndarray,  # (N,) int: queries in flight on the instance
        busy_left_ms: Lazy,
        est_ms: Lazy,
        coefficient: np.ndarray,  # (T,) heterogeneity coefficient, 1 for the reference type
        # (T,) int: each kind's variant's rank by accuracy (0: least accurate); None: one variant,
        # or no accuracies given. A policy prefers a higher rank where the deadline allows.
        accuracy_rank: np.ndarray | None = None,
        # (Q, N) bool: where each query may go (a query pinned to a variant); None: anywhere.
        allowed: Lazy | None = None,
    ) -> None:
        self.batch = batch
        self._time_left_ms = time_left_ms
        self._qos_ms = np.full(len(batch), float(qos_ms)) if isinstance(qos_ms, (int, float)) else qos_ms
        self.inst_type = inst_type
        self.healthy = healthy
        self.free_slots = free_slots
        self.outstanding = outstanding
        self._busy_left_ms = busy_left_ms
        self._est_ms = est_ms
        self.coefficient = coefficient
        self.accuracy_rank = accuracy_rank
        self._allowed = allowed

    def replace(self, **changes: Any) -> Snapshot:
        """A copy with some inputs changed (``dataclasses.replace`` for this class)."""
        fields = {name.lstrip("_"): getattr(self, name) for name in self.__slots__}
        fields["allowed"] = self._allowed
        return Snapshot(**{**fields, **changes})

    @property
    def n_queries(self) -> int:
        return len(self.batch)

    @property
    def n_instances(self) -> int:
        return len(self.inst_type)


Assignment = tuple[int, int]  # (query position in the snapshot, instance index)


class Policy(ABC):
    """Chooses which pending queries go to which instances now.

    Each returned instance must have a free slot for every query given to it, and each query
    position appears at most once. Queries left out stay pending, in order.
    """

    name: str
    # Places at most one query on each instance per call, whatever its free slots: the
    # dispatcher then calls it again while an instance it chose keeps a free slot.
    one_per_instance = False
    # QoS multiples past its deadline at which a late query's treatment changes (fluid serves it
    # first from then): a driver re-decides then. None: nothing changes after the deadline.
    urgent_after: float | None = None

    def window(self, n_instances: int, free_slots: int) -> int:
        """How many queries from the head of the queue the policy wants to see."""
        return free_slots

    @abstractmethod
    def decide(self, snap: Snapshot) -> list[Assignment]: ...
