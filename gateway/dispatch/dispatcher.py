"""The event-driven dispatcher core: the pending FIFO, pool state and the policy call.

It does no I/O and reads no clock: a driver tells it the time with each event (arrival,
completion, failure, health change, timer) and carries out the assignments it returns. The
live gateway drives it on the wall clock and the simulator on a virtual clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from gateway.dispatch.query import Query
from gateway.errors import Overloaded
from gateway.estimator import LatencyEstimator
from gateway.policies import Policy, Snapshot

# An instance past its estimate is still working: its answer has not come. Without a floor its
# time left reads 0, the same as an idle instance's, and a policy may pick it over an idle one
# (a tie) and hold the query back until it answers.
OVERDUE_LEFT_MS = 1e-3


@dataclass(slots=True, eq=False)
class InstanceState:
    index: int
    name: str
    type_name: str
    type_index: int
    healthy: bool = True
    in_flight: dict[int, Query] = field(default_factory=dict)
    served: int = 0
    busy_ms: float = 0.0  # summed service time, for the busy fraction

    def work_left_ms(self, now_ms: float) -> float:
        """Estimated time until the instance is done with everything it holds (FIFO there)."""
        if not self.in_flight:
            return 0.0
        first_start, total = self._span()
        return max(total - (now_ms - first_start), OVERDUE_LEFT_MS)

    def opens_at_ms(self, lookahead_ms: float) -> float:
        """When what the instance holds is estimated done within ``lookahead_ms``."""
        first_start, total = self._span()
        return first_start + total - lookahead_ms

    def _span(self) -> tuple[float, float]:
        """(start of the first query it holds, their summed estimates): it serves them in order."""
        if len(self.in_flight) == 1:  # the common case (depth 1): no generator overhead
            (q,) = self.in_flight.values()
            return q.started_ms, q.est_ms
        held = self.in_flight.values()
        return min(q.started_ms for q in held), sum(q.est_ms for q in held)


@dataclass(frozen=True, slots=True)
class Dispatch:
    query: Query
    instance: InstanceState


class Dispatcher:
    def __init__(
        self,
        policy: Policy,
        estimator: LatencyEstimator,
        instances: Sequence[tuple[str, str]],
        qos_ms: float,
        depth: int = 1,
        max_pending: int | None = None,
        pipeline: bool = False,
    ) -> None:
        """``instances``: (name, type name) pairs; every type must be known to the estimator.

        ``pipeline``: an instance holding ``depth`` queries takes one more once what it holds
        is estimated to be done within the transport overhead (``estimator.overhead_ms``), so
        the next query is on its way while the last is served and the instance is not left
        idle for a round trip between the two. With no overhead learned (the simulator) it
        changes nothing.
        """
        self.policy = policy
        self.estimator = estimator
        self.qos_ms = qos_ms
        self.depth = depth
        self.max_pending = max_pending
        self.pipeline = pipeline
        self.pending: deque[Query] = deque()
        self.instances = [
            InstanceState(index=i, name=name, type_name=t, type_index=estimator.type_index(t))
            for i, (name, t) in enumerate(instances)
        ]
        self._types = np.array([inst.type_index for inst in self.instances], dtype=np.int64)
        self.decisions = 0
        # Free slots the last ``decide`` left unused (a driver reads it right after the call).
        self.free_left = 0
        self.pipelined = 0  # dispatches to an instance still busy with its previous query

    # -- events -------------------------------------------------------------------------------

    def submit(self, query: Query) -> None:
        """Accept a query into the FIFO, or refuse it (``Overloaded``) when the queue is full."""
        if self.max_pending is not None and len(self.pending) >= self.max_pending:
            raise Overloaded(f"pending queue is full ({self.max_pending} queries)", retry_after_s=1.0)
        self.pending.append(query)

    def requeue(self, query: Query) -> None:
        """Put a query that must be retried back at the head: it has waited longest."""
        self.pending.appendleft(query)

    def cancel(self, query: Query) -> bool:
        try:
            self.pending.remove(query)
        except ValueError:
            return False
        return True

    def complete(self, query: Query, instance: InstanceState, service_ms: float | None) -> None:
        """The instance answered. ``service_ms`` (its own measurement) trains the estimator."""
        instance.in_flight.pop(query.id, None)
        instance.served += 1
        if service_ms is not None:
            instance.busy_ms += service_ms
            self.estimator.observe(instance.type_index, query.batch, service_ms)

    def fail(self, query: Query, instance: InstanceState) -> None:
        """The instance failed the query; the caller decides whether to retry or answer."""
        instance.in_flight.pop(query.id, None)
        query.tried.add(instance.index)

    def set_healthy(self, instance: InstanceState, healthy: bool) -> bool:
        """Returns whether this changed the instance's state."""
        changed = instance.healthy != healthy
        instance.healthy = healthy
        return changed

    # -- decisions ----------------------------------------------------------------------------

    def free_slots(self) -> np.ndarray:
        return np.array(
            [self.depth - len(i.in_flight) if i.healthy else 0 for i in self.instances], dtype=np.int64
        ).clip(min=0)

    def decide(self, now_ms: float) -> list[Dispatch]:
        """Run the policy if anything can move; mark and return the dispatches it chose."""
        self.free_left = 0
        if not self.pending:
            return []
        # One pass over the pool builds the per-instance columns (this is the hot path: it runs
        # on every event, in the simulator tens of thousands of times per second).
        depth = self.depth
        instances = self.instances
        lookahead = self.estimator.overhead_ms if self.pipeline else 0.0
        healthy: list[bool] = []
        outstanding: list[int] = []
        free_list: list[int] = []
        busy_left: list[float] = []
        total_free = 0
        for inst in instances:
            k = len(inst.in_flight)
            ok = inst.healthy
            healthy.append(ok)
            outstanding.append(k)
            busy_left.append(inst.work_left_ms(now_ms) if k else 0.0)
            f = depth - k if ok and k < depth else 0
            if ok and k == depth and lookahead > 0.0 and inst.opens_at_ms(lookahead) <= now_ms:
                f = 1
            free_list.append(f)
            total_free += f
        if total_free == 0:
            return []
        self.free_left = total_free
        n = len(instances)
        window = min(len(self.pending), max(self.policy.window(n, total_free), 1))
        queries = list(islice(self.pending, window))
        batch = np.array([q.batch for q in queries], dtype=np.int64)
        deadline = np.array([q.deadline_ms for q in queries], dtype=float)
        snap = Snapshot(
            batch=batch,
            time_left_ms=deadline - now_ms,
            qos_ms=self.qos_ms,
            inst_type=self._types,
            healthy=np.array(healthy, dtype=bool),
            free_slots=np.array(free_list, dtype=np.int64),
            outstanding=np.array(outstanding, dtype=np.int64),
            busy_left_ms=np.array(busy_left, dtype=float),
            est_ms=self.estimator.estimate(batch),
            coefficient=self.estimator.coefficient,
        )
        self.decisions += 1
        chosen = self.policy.decide(snap)
        if not chosen:
            return []
        out: list[Dispatch] = []
        taken: set[int] = set()
        for pos, j in chosen:
            inst = self.instances[j]
            q = queries[pos]
            if pos in taken or free_list[j] <= 0:
                raise RuntimeError(f"policy {self.policy.name} returned an invalid assignment {(pos, j)}")
            taken.add(pos)
            free_list[j] -= 1
            q.attempts += 1
            q.pipelined = len(inst.in_flight) >= depth
            self.pipelined += q.pipelined
            q.started_ms = now_ms
            q.est_ms = float(snap.est_ms[pos, inst.type_index])
            inst.in_flight[q.id] = q
            out.append(Dispatch(q, inst))
        self.free_left = total_free - len(out)
        # Remove the dispatched queries, keeping the FIFO order of the rest.
        if len(taken) == window and window == len(self.pending):
            self.pending.clear()
        else:
            keep = [q for pos, q in enumerate(queries) if pos not in taken]
            for _ in range(window):
                self.pending.popleft()
            self.pending.extendleft(reversed(keep))
        return out

    def next_opening_ms(self, now_ms: float) -> float | None:
        """With pipelining, the next time (after ``now_ms``) a full instance is due to take one
        more query; None if there is none or no overhead is learned. A driver re-decides then:
        no other event happens at that moment."""
        lookahead = self.estimator.overhead_ms
        if not self.pipeline or lookahead <= 0.0:
            return None
        depth = self.depth
        best: float | None = None
        for inst in self.instances:
            if inst.healthy and len(inst.in_flight) == depth:
                at = inst.opens_at_ms(lookahead)
                if at > now_ms and (best is None or at < best):
                    best = at
        return best

    def next_deadline_ms(self) -> float | None:
        """Earliest deadline among the queries a policy sees: a timer there re-runs the policy,
        since a query that turns late is scored differently."""
        if not self.pending:
            return None
        n = min(len(self.pending), max(self.policy.window(len(self.instances), 1), 1))
        return min(q.deadline_ms for q in islice(self.pending, n))

    # -- views --------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(i.in_flight) for i in self.instances)

    def has_healthy(self) -> bool:
        return any(i.healthy for i in self.instances)
