"""The event-driven dispatcher core: the pending FIFO, pool state and the policy call.

It does no I/O and reads no clock: a driver tells it the time with each event (arrival,
completion, failure, health change, timer) and carries out the assignments it returns. The
live gateway drives it on the wall clock and the simulator on a virtual clock.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from gateway.dispatch.query import Query
from gateway.errors import DeadlineExceeded, Overloaded
from gateway.estimator import LatencyEstimator
from gateway.policies import Policy, Snapshot
from gateway.profiles import LatencyProfile
from gateway.variants import split_kind

# An instance past its estimate is still working: its answer has not come. Without a floor its
# time left reads 0, the same as an idle instance's, and a policy may pick it over an idle one
# (a tie) and hold the query back until it answers.
OVERDUE_LEFT_MS = 1e-3
ADMISSION_STEP_UP = 1.1
ADMISSION_FACTOR_MAX = 8.0
URGENT_STEP_MS = 1e-3  # a re-decision this far past the moment a late query turns urgent (a strict bound)
# The per-instance numpy columns (besides the type column), grown and shrunk together.
_COLUMNS = ("_held", "_ok", "_span_start", "_span_total", "_span_end", "_floor", "_free", "_full")


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


@dataclass(slots=True, eq=False)
class InstanceState:
    """One instance in the pool. ``name`` is its stable id; ``index`` is its column in the
    dispatcher's arrays (and in a snapshot), which moves when another instance is removed."""

    index: int
    name: str
    type_name: str
    type_index: int
    healthy: bool = True  # what probes and failures say
    draining: bool = False  # takes no new query; finishes what it holds
    removed: bool = False  # gone from the pool (it held nothing, or its last query ended)
    in_flight: dict[int, Query] = field(default_factory=dict)
    served: int = 0
    busy_ms: float = 0.0  # summed service time, for the busy fraction

    @property
    def in_rotation(self) -> bool:
        """Takes new queries: healthy and not draining."""
        return self.healthy and not self.draining

    @property
    def state(self) -> str:
        if self.removed:
            return "removed"
        if self.draining:
            return "draining"
        return "healthy" if self.healthy else "unhealthy"


@dataclass(frozen=True, slots=True)
class OverloadControl:
    """What the dispatcher does with queries the pool cannot serve in time.

    ``shed_late``: a queued query that can no longer meet its deadline on any healthy instance
    is removed (``Dispatcher.shed``) and answered at once with a deadline error, instead of being
    served late. ``admission``: ``submit`` refuses a query when, on the best type that can serve
    its batch in time, the work queued for that type and held by its instances plus its own
    service would end past its deadline, times a factor that learns from shedding: up by
    ``ADMISSION_STEP_UP`` at every query shed, down a little at every query dispatched in time,
    so that about ``shed_target`` of the admitted queries are shed at equilibrium (the estimate
    ignores the policy's order and the spread of service times; the factor absorbs both).
    ``max_wait_ms``: a
    query that has waited this long is served next, whatever the policy prefers (bounds every
    query's wait when late queries are served, within its priority: one queued behind higher
    priorities is aged only once it reaches the head of the queue).

    With several priorities (service classes), a query queues ahead of every lower-priority one,
    its admission counts only the work queued at its priority or above, and each priority learns
    its own factor: a low class, overtaken by every higher arrival, is shed more and so refused
    sooner, which keeps room for the classes above it. A full queue makes room for a query by
    refusing the newest queued query of a lower priority (``submit`` returns it).
    """

    shed_late: bool = False
    admission: bool = False
    shed_target: float = 0.005
    max_wait_ms: float | None = None

    @classmethod
    def for_mode(cls, late_queries: str, qos_ms: float, max_wait_ms: float | None = None) -> OverloadControl:
        """``gateway.late_queries``: "shed" (deadline errors at once, admission control) or
        "serve" (late, but each query within ``max_wait_ms``, default the QoS, of arriving)."""
        if late_queries == "shed":
            return cls(shed_late=True, admission=True)
        if late_queries == "serve":
            return cls(max_wait_ms=max_wait_ms if max_wait_ms is not None else qos_ms)
        raise ValueError(f"late_queries: expected shed or serve, got {late_queries!r}")


class DecisionFailed(Exception):
    """The policy failed in a decision after some queries were already assigned (``placed``):
    the driver sends those, then fails what waits."""

    def __init__(self, placed: list[Dispatch]) -> None:
        super().__init__(f"the decision failed after {len(placed)} dispatches")
        self.placed = placed


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
        depth: int = 1,
        max_pending: int | None = None,
        pipeline: bool = False,
        overload: OverloadControl | None = None,
        model: str = "",
        accuracy: Mapping[str, float] | None = None,
    ) -> None:
        """``instances``: (name, type name) pairs; every type must be known to the estimator.

        ``overload``: what happens to queries the pool cannot serve in time (see
        ``OverloadControl``); None: every query is served, however late (the simulator's ideal).

        ``pipeline``: an instance holding ``depth`` queries takes one more once what it holds
        is estimated to be done within the round trip's 99th percentile (``overhead_p99_ms``), so
        the next query is on its way while the last is served and the instance is not left
        idle for a round trip between the two. With no overhead learned (the simulator) it
        changes nothing.

        ``model`` and ``accuracy`` (variant name -> accuracy): with variants of different
        accuracy, instance kinds (``gateway.variants``) are ranked by their variant's, and a
        policy prefers the more accurate where a deadline allows; a query may pin a variant.
        """
        self.policy = policy
        self.estimator = estimator
        self.depth = depth
        self.max_pending = max_pending
        self.pipeline = pipeline
        self.overload = overload or OverloadControl()
        self.pending: deque[Query] = deque()
        # (latest start, id, query) of queued queries, when hopeless ones are shed.
        self._latest_start: list[tuple[float, int, Query]] = []
        # Per priority, per type: the summed pool cost of the queued queries that type can serve
        # in time (admission control): a big batch only a GPU can serve queues for the GPU.
        self._backlog: dict[int, np.ndarray] = {}
        self.admission_factors: dict[int, float] = {}  # per priority; 1.0 until it sheds
        self.pinned = 0  # queued queries pinned to a variant or restricted to some instances
        # Per dispatch, the step down that balances ADMISSION_STEP_UP per shed at shed_target.
        target = self.overload.shed_target
        self._step_down = math.exp(-target * math.log(ADMISSION_STEP_UP) / (1.0 - target))
        self.instances: list[InstanceState] = []  # in column order
        self._by_name: dict[str, InstanceState] = {}
        self._types = np.zeros(0, dtype=np.int64)
        self._type_healthy = np.zeros(estimator.n_types, dtype=np.int64)  # in rotation, per type
        # Per-instance columns, kept current on every event so that a decision reads the pool as
        # whole arrays instead of walking it (the hot path: every arrival and completion). An
        # instance serves what it holds in order, so it is estimated done at the first start
        # plus the summed estimates.
        self._held = np.zeros(0, dtype=np.int64)  # queries in flight
        self._ok = np.zeros(0, dtype=bool)  # in rotation
        self._span_start = np.zeros(0)  # start of the first query held
        self._span_total = np.zeros(0)  # summed estimates of the queries held
        self._span_end = np.zeros(0)  # start + total: when it is estimated done with them
        self._floor = np.zeros(0)  # least work left: OVERDUE_LEFT_MS while it holds a query, else 0
        self._free = np.zeros(0, dtype=np.int64)  # queries it may take, pipelining aside
        self._full = np.zeros(0, dtype=bool)  # in rotation and holding ``depth``: may pipeline
        self._free_of: list[int] = []
        self._full_of: list[bool] = []
        self._total_free = 0
        self._n_full = 0
        self._healthy_count = 0  # in rotation
        self._removing: set[str] = set()  # instances removed while they still held queries
        self._add_all([(name, t) for name, t in instances])
        self.decisions = 0
        # Free slots the last ``decide`` left unused (a driver reads it right after the call).
        self.free_left = 0
        self.pipelined = 0  # dispatches to an instance still busy with its previous query
        self.model = model
        self.accuracy = dict(accuracy or {})
        self._grow_kinds()

    # -- pool changes -------------------------------------------------------------------------

    def instance(self, name: str) -> InstanceState:
        """The instance named ``name`` (KeyError if the pool has none)."""
        return self._by_name[name]

    def add(
        self,
        name: str,
        type_name: str,
        healthy: bool = True,
        profile: LatencyProfile | None = None,
        prior: bool = False,
    ) -> InstanceState:
        """A new instance joins the pool: its columns are appended, and a decision may use it at
        once. A type new to the estimator needs its ``profile`` (measured, or a ``prior``)."""
        if type_name not in self.estimator.type_names:
            if profile is None or not type_name.endswith(profile.instance_type):
                raise ValueError(f"instance type {type_name!r} is new to this pool: its latency profile is needed")
            self.estimator.add_type(profile, prior=prior, name=type_name)
            self._grow_kinds()
            grow = self.estimator.n_types - len(self._type_healthy)
            self._type_healthy = np.concatenate([self._type_healthy, np.zeros(grow, dtype=np.int64)])
            for p, backlog in self._backlog.items():
                self._backlog[p] = np.concatenate([backlog, np.zeros(grow)])
        (inst,) = self._add_all([(name, type_name)], healthy)
        return inst

    def _grow_kinds(self) -> None:
        """Per kind (the estimator's types): its variant, and its accuracy rank when variants
        differ in accuracy."""
        kinds = self.estimator.type_names
        self.kind_variant = np.array([split_kind(self.model, k)[0] for k in kinds], dtype=object)
        acc = [self.accuracy.get(v) for v in self.kind_variant.tolist()]
        known = sorted({a for a in acc if a is not None})
        self.accuracy_rank = (
            _read_only(np.array([known.index(a) + 1 if a is not None else 0 for a in acc], dtype=np.int64))
            if len(known) > 1
            else None
        )

    def _add_all(self, specs: Sequence[tuple[str, str]], healthy: bool = True) -> list[InstanceState]:
        names = [name for name, _ in specs]
        clash = next((n for n in names if n in self._by_name), None)
        if clash is not None or len(set(names)) != len(names):
            raise ValueError(f"instance {clash or names!r}: the pool already has an instance of that name")
        first = len(self.instances)
        new = [
            InstanceState(index=first + k, name=name, type_name=t, type_index=self.estimator.type_index(t))
            for k, (name, t) in enumerate(specs)
        ]
        k = len(new)
        self._types = np.concatenate([self._types, np.array([i.type_index for i in new], dtype=np.int64)])
        for col in _COLUMNS:
            old = getattr(self, col)
            setattr(self, col, np.concatenate([old, np.zeros(k, dtype=old.dtype)]))
        self._free_of += [0] * k
        self._full_of += [False] * k
        self.instances += new
        for inst in new:
            self._by_name[inst.name] = inst
            inst.healthy = False
            self._set_rotation(inst, healthy=healthy)
        self._views()
        return new

    def drain(self, instance: InstanceState) -> None:
        """The instance takes no new query; what it holds is served and answered as usual."""
        self._set_rotation(instance, draining=True)

    def remove(self, instance: InstanceState) -> bool:
        """Drain the instance and take it out of the pool once it holds nothing: now (returns
        True) or when its last query is completed or failed (``removed`` turns True then)."""
        if instance.removed:
            return True
        self.drain(instance)
        if instance.in_flight:
            self._removing.add(instance.name)
            return False
        self._delete(instance)
        return True

    def _delete(self, instance: InstanceState) -> None:
        """Swap the last column into the instance's place and shrink every column by one."""
        instance.removed = True
        self._removing.discard(instance.name)
        j, last = instance.index, len(self.instances) - 1
        moved = self.instances[last]
        for col in ("_types", *_COLUMNS):
            a = getattr(self, col)
            a[j] = a[last]
            setattr(self, col, a[:last].copy())
        self._free_of[j] = self._free_of[last]
        self._full_of[j] = self._full_of[last]
        self._free_of.pop()
        self._full_of.pop()
        self.instances[j] = moved
        moved.index = j
        self.instances.pop()
        del self._by_name[instance.name]
        self._views()

    def _views(self) -> None:
        # What a snapshot gets of the columns: read-only views, always current, never copied.
        self._types_view, self._ok_view, self._held_view, self._free_view = (
            _read_only(a) for a in (self._types, self._ok, self._held, self._free)
        )

    def _retire_if_done(self, instance: InstanceState) -> None:
        if not instance.in_flight and instance.name in self._removing:
            self._delete(instance)

    # -- events -------------------------------------------------------------------------------

    def submit(self, query: Query, now_ms: float | None = None) -> list[Query]:
        """Accept a query into the queue (behind every query of its priority or above), or refuse
        it (``Overloaded``) when the queue is full of queries of its priority or above or, with
        admission control and ``now_ms`` given, when the pool cannot serve it in time. Returns the
        queued lower-priority query it displaced from a full queue (the driver refuses it)."""
        displaced: list[Query] = []
        if self.max_pending is not None and len(self.pending) >= self.max_pending:
            last = self.pending[-1] if self.pending else None
            if last is None or last.priority >= query.priority:
                raise Overloaded(
                    f"pending queue is full ({self.max_pending} queries)", retry_after_s=1.0, reason="queue_full"
                )
            displaced.append(last)
        control = self.overload
        est = None  # the batch's estimates per type, computed once per arrival
        types = None  # the types it may go to (restricted queries), likewise
        if control.admission and now_ms is not None and query.sheddable:
            est = self._estimate(query.batch)
            types = self._types_for(query)
            fastest = self._fastest(est, types)
            if now_ms + fastest > query.deadline_ms:
                raise DeadlineExceeded(
                    f"cannot be served within its deadline even at once: {fastest:.1f} ms to serve "
                    f"batch {query.batch} on the fastest healthy instance, {query.deadline_ms - now_ms:.1f} ms left"
                )
            done = self._done_ms(now_ms, est, self._able(est, query.deadline_ms - now_ms, types), query.priority)
            if now_ms + self.admission_factors.get(query.priority, 1.0) * done > query.deadline_ms:
                raise Overloaded(
                    f"cannot be served within its deadline: expected done in about {done:.0f} ms with the "
                    f"work queued ahead, {query.deadline_ms - now_ms:.0f} ms left",
                    retry_after_s=1.0,
                    reason="deadline",
                )
        for q in displaced:
            self.cancel(q)
        self._enqueue(query, est, types)
        pending = self.pending
        if not pending or pending[-1].priority >= query.priority:
            pending.append(query)
        else:  # ahead of the lower priorities queued: scan from the tail, where they are
            i = len(pending)
            while i and pending[i - 1].priority < query.priority:
                i -= 1
            pending.insert(i, query)
        return displaced

    def requeue(self, query: Query) -> None:
        """Put a query that must be retried back at the head of its class (it has waited longest),
        behind the queries of higher classes."""
        self._enqueue(query)
        pending = self.pending
        i = 0
        while i < len(pending) and pending[i].priority > query.priority:
            i += 1
        pending.insert(i, query)

    def _enqueue(self, query: Query, est: np.ndarray | None = None, types: np.ndarray | None = None) -> None:
        query.queued = True
        if query.restricted:
            self.pinned += 1
        control = self.overload
        shed = control.shed_late and query.sheddable
        if est is None and (control.admission or shed):
            est = self._estimate(query.batch)
        if types is None and (control.admission or shed):
            types = self._types_for(query)
        if control.admission:
            assert est is not None
            able = self._able(est, query.deadline_ms - query.arrival_ms, types)
            rate = float((self._type_healthy[able] / est[able]).sum())
            query.cost_ms = 1.0 / rate if rate > 0 else 0.0
            query.able = able
            backlog = self._backlog.get(query.priority)
            if backlog is None:
                backlog = self._backlog[query.priority] = np.zeros(self.estimator.n_types)
            backlog[able] += query.cost_ms
        if shed:
            assert est is not None
            latest = query.deadline_ms - self._fastest(est, types)
            heapq.heappush(self._latest_start, (latest, query.id, query))

    def _dequeued(self, query: Query) -> None:
        query.queued = False
        if query.restricted:
            self.pinned -= 1
        if query.cost_ms:
            # ``able`` was sized when it was queued: types added since are appended after it
            self._backlog[query.priority][: len(query.able)][query.able] -= query.cost_ms
            query.cost_ms = 0.0
            if not self.pending:
                for backlog in self._backlog.values():
                    backlog[:] = 0.0  # no drift once the queue is empty

    def cancel(self, query: Query) -> bool:
        if not query.queued:
            return False
        try:
            self.pending.remove(query)
        except ValueError:
            return False
        self._dequeued(query)
        return True

    def shed(self, now_ms: float) -> list[Query]:
        """Remove and return the queued queries that can no longer meet their deadline on any
        healthy instance, even if served at once (only with ``OverloadControl.shed_late``)."""
        heap = self._latest_start
        out: list[Query] = []
        while heap and heap[0][0] <= now_ms:
            query = heapq.heappop(heap)[2]
            if query.queued and self.cancel(query):
                out.append(query)
                factor = self.admission_factors.get(query.priority, 1.0)
                self.admission_factors[query.priority] = min(factor * ADMISSION_STEP_UP, ADMISSION_FACTOR_MAX)
        if not self.pending:
            heap.clear()
        return out

    def next_shed_ms(self) -> float | None:
        """When the next queued query turns hopeless (a driver sheds it then); after ``shed(now)``
        it is later than ``now``."""
        heap = self._latest_start
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fastest_ms(self, batch: int) -> float:
        """Estimated service time of ``batch`` on the fastest type with a healthy instance."""
        return self._fastest(self._estimate(batch))

    def expected_done_ms(self, now_ms: float, batch: int, qos_ms: float, priority: int = 0) -> float:
        """Roughly how long until a query of ``batch`` arriving now is served (``_done_ms``)."""
        est = self._estimate(batch)
        return self._done_ms(now_ms, est, self._able(est, qos_ms), priority)

    def _estimate(self, batch: int) -> np.ndarray:
        """(T,) estimated service time of ``batch`` on each type."""
        return self.estimator.estimate(np.array([batch]))[0]

    def _types_for(self, query: Query) -> np.ndarray | None:
        """Mask of the types with an instance in rotation that ``query`` may go to; None when it
        may go anywhere (the common case)."""
        if not query.restricted:
            return None
        mask = np.zeros(len(self._type_healthy), dtype=bool)
        for inst in self.instances:
            if inst.in_rotation and self.allows(query, inst):
                mask[inst.type_index] = True
        return mask

    def _fastest(self, est: np.ndarray, types: np.ndarray | None = None) -> float:
        healthy = self._type_healthy > 0
        if types is not None:
            healthy &= types
        return float(est[healthy].min()) if healthy.any() else float("inf")

    def _able(self, est: np.ndarray, qos_ms: float, types: np.ndarray | None = None) -> np.ndarray:
        """Mask of the healthy types (of ``types``) whose estimate ``est`` is within ``qos_ms``
        (every such type when none is)."""
        healthy = self._type_healthy > 0
        if types is not None:
            healthy &= types
        able = healthy & (est <= qos_ms)
        return able if able.any() else healthy

    def _done_ms(self, now_ms: float, est: np.ndarray, able: np.ndarray, priority: int = 0) -> float:
        """On the best of the ``able`` types: the work queued ahead for that type (its share of
        each queued query of ``priority`` or above it could serve, 1 / the sum of their rates),
        what its instances hold on average, then this query's own service there (``est``). No
        wait while an instance is free and nothing queues."""
        if not able.any():
            return float("inf")
        if self._total_free and not self.pending:
            return float(est[able].min())
        left = np.maximum(self._span_end - now_ms, 0.0) * self._ok
        held = np.bincount(self._types, weights=left, minlength=len(est)) / np.maximum(self._type_healthy, 1)
        ahead = held + est
        for p, backlog in self._backlog.items():
            if p >= priority:
                ahead = ahead + backlog
        return float(ahead[able].min())

    def complete(
        self, query: Query, instance: InstanceState, service_ms: float | None, now_ms: float | None = None
    ) -> None:
        """The instance answered at ``now_ms``. ``service_ms`` (its own measurement) trains the
        estimator.

        What the instance still holds was queued behind this query (pipelined, or depth > 1), so
        its service started when this one was done: the estimated span of what it holds is
        rebased to the answer's arrival (docs/decisions.md, D3).
        """
        held = instance.in_flight
        held.pop(query.id, None)
        if held and now_ms is not None:
            for q in held.values():
                if q.started_ms < now_ms:
                    q.started_ms = now_ms
        self._held_changed(instance)
        instance.served += 1
        if service_ms is not None:
            instance.busy_ms += service_ms
            self.estimator.observe(instance.type_index, query.batch, service_ms)
        self._retire_if_done(instance)

    def fail(self, query: Query, instance: InstanceState) -> None:
        """The instance failed the query; the caller decides whether to retry or answer."""
        instance.in_flight.pop(query.id, None)
        self._held_changed(instance)
        query.tried.add(instance.name)
        self._retire_if_done(instance)

    def set_healthy(self, instance: InstanceState, healthy: bool) -> bool:
        """Returns whether this changed the instance's health."""
        changed = instance.healthy != healthy
        if changed:
            self._set_rotation(instance, healthy=healthy)
        return changed

    def _set_rotation(
        self, instance: InstanceState, healthy: bool | None = None, draining: bool | None = None
    ) -> None:
        was = instance.in_rotation
        if healthy is not None:
            instance.healthy = healthy
        if draining is not None:
            instance.draining = draining
        now = instance.in_rotation
        if now != was:
            self._ok[instance.index] = now
            self._healthy_count += 1 if now else -1
            self._type_healthy[instance.type_index] += 1 if now else -1
            if self._type_healthy[instance.type_index] == (1 if now else 0):  # a type came or went
                self._replan_shedding()
        self._refresh(instance)

    def _replan_shedding(self) -> None:
        """The healthy types changed, and with them the fastest: each queued query's latest start
        moves (a GPU that joins gives them longer; one that leaves, less)."""
        if not (self.overload.shed_late and self.pending) or not self._healthy_count:
            return  # with no healthy instance at all the driver fails what waits
        self._latest_start = [
            (q.deadline_ms - self._fastest(self._estimate(q.batch), self._types_for(q)), q.id, q)
            for q in self.pending
            if q.sheddable
        ]
        heapq.heapify(self._latest_start)

    def _held_changed(self, instance: InstanceState) -> None:
        """Bring the instance's span columns up to date with what it now holds."""
        held = instance.in_flight
        j = instance.index
        if not held:
            start, total = 0.0, 0.0
        elif len(held) == 1:  # the common case (depth 1): no generator overhead
            (q,) = held.values()
            start, total = q.started_ms, q.est_ms
        else:
            start, total = min(q.started_ms for q in held.values()), sum(q.est_ms for q in held.values())
        self._span_start[j] = start
        self._span_total[j] = total
        self._span_end[j] = start + total
        self._refresh(instance)

    def _refresh(self, instance: InstanceState) -> None:
        """The instance's count columns, and the pool totals, after its load or health changed.
        Python mirrors of the columns say what changed: a numpy scalar read costs more."""
        j, k, depth = instance.index, len(instance.in_flight), self.depth
        ok = instance.in_rotation
        self._held[j] = k
        self._floor[j] = OVERDUE_LEFT_MS if k else 0.0
        free = depth - k if ok and k < depth else 0
        if free != self._free_of[j]:
            self._total_free += free - self._free_of[j]
            self._free_of[j] = free
            self._free[j] = free
        full = ok and k == depth
        if full != self._full_of[j]:
            self._n_full += 1 if full else -1
            self._full_of[j] = full
            self._full[j] = full

    # -- decisions ----------------------------------------------------------------------------

    def _opened(self, now_ms: float) -> np.ndarray | None:
        """Mask of the full instances pipelining opens at ``now_ms``; None when none can."""
        lookahead = self.estimator.overhead_p99_ms if self.pipeline else 0.0
        if lookahead <= 0.0 or not self._n_full:
            return None
        # Not an instance long overdue (past twice its estimated work, or the lookahead): it may
        # be hung, and a query sent behind one would share its fate.
        fresh = self._span_end + np.maximum(self._span_total, lookahead) >= now_ms
        return self._full & (self._opens_at(lookahead) <= now_ms) & fresh

    def work_left_ms(self, now_ms: float) -> np.ndarray:
        """(N,) estimated time until each instance is done with everything it holds: 0 when
        idle, at least ``OVERDUE_LEFT_MS`` while it holds a query."""
        left = self._span_total - (now_ms - self._span_start)  # an idle instance's: -now_ms
        np.maximum(left, self._floor, out=left)
        return left

    def _opens_at(self, lookahead_ms: float) -> np.ndarray:
        """(N,) when what each instance holds is estimated done within ``lookahead_ms``."""
        return self._span_end - lookahead_ms

    def decide(self, now_ms: float) -> list[Dispatch]:
        """Run the policy if anything can move; mark and return the dispatches it chose.

        A policy that matches at most one query to each instance (``Policy.one_per_instance``:
        kairos, one matrix column per instance) is run again while an instance it just dispatched
        to still has a free slot (depth > 1) and queries wait: otherwise they would wait for the
        next event although that instance could take them now. At depth 1 a dispatched-to
        instance has no slot left.
        """
        out = self._decide_once(now_ms)
        if self.depth > 1 and self.policy.one_per_instance:
            placed = out
            while placed and self.pending and any(self._free_of[d.instance.index] for d in placed):
                try:
                    placed = self._decide_once(now_ms)
                except DecisionFailed as exc:
                    raise DecisionFailed(out + exc.placed) from exc.__cause__
                except Exception as exc:
                    raise DecisionFailed(out) from exc
                out += placed
        return out

    def _decide_once(self, now_ms: float) -> list[Dispatch]:
        self.free_left = 0
        if not self.pending:
            return []
        opened = self._opened(now_ms)
        n_opened = 0 if opened is None else int(np.count_nonzero(opened))
        total_free = self._total_free + n_opened
        if total_free == 0:
            return []
        if n_opened:
            free = self._free.copy()
            free[opened] = 1
            free.flags.writeable = False
            free_list = free.tolist()
        else:
            free = self._free_view
            free_list = list(self._free_of)
        self.free_left = total_free
        aged: list[Dispatch] = []
        max_wait = self.overload.max_wait_ms
        if max_wait is not None and self.pending[0].arrival_ms + max_wait <= now_ms:
            aged = self._serve_aged(now_ms, max_wait, free_list)
            total_free -= len(aged)
            self.free_left = total_free
            if not self.pending or total_free <= 0:
                return aged
            if n_opened:
                free = np.asarray(free_list, dtype=np.int64)
                free.flags.writeable = False
            else:
                free = self._free_view
        window = max(self.policy.window(len(self.instances), total_free), 1)
        if self.pinned:  # a query pinned to a busy variant must not hide those behind it
            window = max(window, 2 * len(self.instances))
        window = min(len(self.pending), window)
        if self.pending[0].priority != self.pending[window - 1].priority:
            window = self._priority_window(window, total_free)
        queries = list(islice(self.pending, window))
        batch = np.array([q.batch for q in queries], dtype=np.int64)
        snap = Snapshot(
            batch=batch,
            time_left_ms=lambda: np.array([q.deadline_ms for q in queries], dtype=float) - now_ms,
            qos_ms=lambda: np.array([q.deadline_ms - q.arrival_ms for q in queries], dtype=float),
            inst_type=self._types_view,
            healthy=self._ok_view,
            free_slots=free,
            outstanding=self._held_view,
            busy_left_ms=lambda: self.work_left_ms(now_ms),
            est_ms=lambda: self.estimator.estimate(batch),
            coefficient=self.estimator.coefficient,
            accuracy_rank=self.accuracy_rank,
            allowed=(lambda: self._allowed_of(queries)) if self.pinned else None,
        )
        self.decisions += 1
        try:
            chosen = self.policy.decide(snap)
            # Every pair checked before any is assigned: a bad one must leave no query half placed.
            taken: set[int] = set()
            for pos, j in chosen:
                if pos in taken or not 0 <= j < len(free_list) or free_list[j] <= 0:
                    raise RuntimeError(f"policy {self.policy.name} returned an invalid assignment {(pos, j)}")
                taken.add(pos)
                free_list[j] -= 1
        except Exception as exc:
            if aged:  # already assigned: the driver must still send them
                raise DecisionFailed(aged) from exc
            raise
        if not chosen:
            return aged
        out: list[Dispatch] = aged
        for pos, j in chosen:
            out.append(self._assign(queries[pos], self.instances[j], now_ms))
        self.free_left = total_free - len(taken)
        # Remove the dispatched queries, keeping the FIFO order of the rest.
        if len(taken) == window and window == len(self.pending):
            self.pending.clear()
        else:
            for pos in sorted(taken, reverse=True):
                del self.pending[pos]
        return out

    def allows(self, query: Query, instance: InstanceState) -> bool:
        """Whether ``query`` may go to ``instance``: of its pinned variant, in its ``only`` set."""
        return (query.variant is None or self.kind_variant[instance.type_index] == query.variant) and (
            query.only is None or instance.name in query.only
        )

    def servable(self, query: Query) -> bool:
        """Whether an instance in rotation may take ``query``."""
        return any(i.in_rotation and self.allows(query, i) for i in self.instances)

    def stranded(self) -> list[Query]:
        """The queued queries no instance in rotation may take (pinned or restricted ones whose
        instances all left): nothing would ever place them."""
        if not self.pinned:
            return []
        return [q for q in self.pending if q.restricted and not self.servable(q)]

    def _allowed_of(self, queries: list[Query]) -> np.ndarray:
        """(Q, N): each query's instances (those of its pinned variant and of its ``only`` set,
        or all)."""
        variant_of_instance = self.kind_variant[self._types]
        out = np.ones((len(queries), len(self.instances)), dtype=bool)
        for i, q in enumerate(queries):
            if q.variant is not None:
                out[i] = variant_of_instance == q.variant
            if q.only is not None:
                out[i] &= np.fromiter((inst.name in q.only for inst in self.instances), bool, len(self.instances))
        return out

    def _priority_window(self, window: int, free: int) -> int:
        """Strict priority: the window stops at the first priority boundary past which the
        queries before it can fill every free slot; a lower class only takes what is left.
        (A policy weighs queries by slack, not class: given both, it may prefer the lower.)"""
        previous = self.pending[0].priority
        for i, q in enumerate(islice(self.pending, window)):
            if q.priority != previous:
                if i >= free:
                    return i
                previous = q.priority
        return window

    def _assign(self, q: Query, inst: InstanceState, now_ms: float) -> Dispatch:
        """Mark ``q`` as sent to ``inst`` at ``now_ms`` (the caller removes it from the FIFO)."""
        if q.cost_ms:
            factor = self.admission_factors.get(q.priority, 1.0)
            if factor > 1.0:
                self.admission_factors[q.priority] = max(factor * self._step_down, 1.0)
        self._dequeued(q)
        q.attempts += 1
        q.pipelined = len(inst.in_flight) >= self.depth
        self.pipelined += q.pipelined
        q.started_ms = now_ms
        q.est_ms = self.estimator.estimate_one(inst.type_index, q.batch)
        inst.in_flight[q.id] = q
        self._held_changed(inst)
        return Dispatch(q, inst)

    def _serve_aged(self, now_ms: float, max_wait_ms: float, free_list: list[int]) -> list[Dispatch]:
        """Queries waiting past ``max_wait_ms`` go first, oldest first, each to the free instance
        estimated to finish it soonest: a policy that favours queries it can still serve in time
        would otherwise starve them (large batches under a backlog)."""
        out: list[Dispatch] = []
        left = self.work_left_ms(now_ms)
        pending, i = self.pending, 0
        while i < len(pending) and pending[i].arrival_ms + max_wait_ms <= now_ms and any(free_list):
            q = pending[i]
            mask = self._allowed_of([q])[0] if q.restricted else None
            candidates = [j for j, f in enumerate(free_list) if f > 0 and (mask is None or mask[j])]
            if not candidates:  # kept to busy instances: the aged queries behind it go first
                i += 1
                continue
            est = self.estimator.estimate(np.array([q.batch]))[0]
            j = min(candidates, key=lambda k: float(est[self._types[k]] + left[k]))
            del pending[i]
            free_list[j] -= 1
            out.append(self._assign(q, self.instances[j], now_ms))
            left[j] = float(left[j] + est[self._types[j]])
        return out

    def next_opening_ms(self, now_ms: float) -> float | None:
        """With pipelining, the next time (after ``now_ms``) a full instance is due to take one
        more query; None if there is none or no overhead is learned. A driver re-decides then:
        no other event happens at that moment."""
        lookahead = self.estimator.overhead_p99_ms
        if not self.pipeline or lookahead <= 0.0 or not self._n_full:
            return None
        opens = self._opens_at(lookahead)
        due = opens[self._full & (opens > now_ms)]
        return float(due.min()) if due.size else None

    def next_change_ms(self, now_ms: float) -> float | None:
        """After ``now_ms``, the next moment a decision could change with no event: a query the
        policy sees turns late, or late enough for the policy to serve it first
        (``Policy.urgent_after``), or one has waited ``max_wait_ms``. A driver
        re-decides then while the policy leaves an instance idle."""
        if not self.pending:
            return None
        n = min(len(self.pending), max(self.policy.window(len(self.instances), 1), 1))
        urgent = self.policy.urgent_after
        max_wait = self.overload.max_wait_ms
        best = math.inf
        for q in islice(self.pending, n):
            t = q.deadline_ms
            if t <= now_ms and urgent is not None:
                t += urgent * (q.deadline_ms - q.arrival_ms) + URGENT_STEP_MS  # past the strict bound
            if now_ms < t < best:
                best = t
            if max_wait is not None and now_ms < q.arrival_ms + max_wait < best:
                best = q.arrival_ms + max_wait
        return best if best < math.inf else None

    # -- views --------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return int(self._held.sum())

    def has_healthy(self) -> bool:
        return self._healthy_count > 0
