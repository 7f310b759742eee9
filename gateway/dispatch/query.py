"""A query as the dispatcher sees it: routing facts only, the payload is opaque."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Query:
    id: int
    batch: int
    arrival_ms: float
    deadline_ms: float
    payload: Any = None  # whatever the driver needs to send and answer it (never read here)
    attempts: int = 0  # dispatches so far; a retry is the second
    tried: set[str] = field(default_factory=set)  # names of the instances that failed it
    started_ms: float = 0.0
    est_ms: float = 0.0
    pipelined: bool = False  # sent to an instance still busy with its previous query
    queued: bool = False  # in the dispatcher's pending FIFO now
    sheddable: bool = True  # False: served however late, whatever the overload control says
    priority: int = 0  # its service class's: queued ahead of lower ones, shed after them
    variant: str | None = None  # pinned to this model variant's instances; None: any
    only: frozenset[str] | None = None  # restricted to these instances (by name); None: any
    cost_ms: float = 0.0  # its share of the pool's backlog while queued (admission control)
    able: Any = None  # while queued with admission control: the types that can serve it in time

    @property
    def restricted(self) -> bool:
        """Pinned to a variant or kept to some instances."""
        return self.variant is not None or self.only is not None
