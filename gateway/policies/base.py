"""What a policy sees and returns.

A policy is a function of a snapshot: it does no I/O and reads no clock, so the same code
runs in the live gateway (wall clock) and in the simulator (virtual clock).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Pending queries (head of the FIFO first) and instances at one decision."""

    batch: np.ndarray  # (Q,) int batch sizes
    time_left_ms: np.ndarray  # (Q,) time to each query's deadline; negative once late
    qos_ms: float
    inst_type: np.ndarray  # (N,) type index of each instance
    healthy: np.ndarray  # (N,) bool
    free_slots: np.ndarray  # (N,) int: queries the instance may still take (0 when unhealthy)
    outstanding: np.ndarray  # (N,) int: queries in flight on the instance
    busy_left_ms: np.ndarray  # (N,) estimated time until the instance has finished its work
    est_ms: np.ndarray  # (Q, T) estimated mean service time of each query on each type
    coefficient: np.ndarray  # (T,) heterogeneity coefficient, 1 for the reference type

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

    def window(self, n_instances: int, free_slots: int) -> int:
        """How many queries from the head of the queue the policy wants to see."""
        return free_slots

    @abstractmethod
    def decide(self, snap: Snapshot) -> list[Assignment]: ...
