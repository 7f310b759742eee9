"""The discrete-event engine: the gateway's own Dispatcher on a virtual clock.

Events are arrivals (read in order from the trace), completions and deadline timers (a heap).
The clock jumps from one event time to the next. At one instant, completions are handled
first, then timers, then arrivals (each kind in the order it was scheduled), and then the
dispatcher decides once: the order is fixed, so the same inputs give the same run.

An instance serves its queries one at a time, in the order they reached it (as
``kairos-servers`` and a Triton model instance do): with a depth above 1, a query sent to a busy
instance starts when the ones ahead of it are done.

``transport_ms`` models the round trip around each service (what the live gateway learns as
its transport overhead): half of it before the instance starts a query, half after it is done.
With ``transport_p99_ms`` each query's round trip is drawn instead, log-normal with that mean
and 99th percentile (``gateway.sim.transport``).
The estimator learns it as the live gateway does, and with ``pipeline`` the dispatcher sends
an instance its next query while the last is still served (see ``Dispatcher``). Both default
to the ideal, transport-free pool.

Service times are drawn up front: for each instance type in the pool, one sample per query
from that type's profile, with a random stream keyed by (seed, type name). A query's service
time therefore depends on the type it lands on, and not on the pool's order or composition.
"""

from __future__ import annotations

import heapq
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gateway.config import ServiceClass
from gateway.dispatch import Dispatcher, OverloadControl, Query
from gateway.errors import ConfigError, InferenceError
from gateway.estimator import LatencyEstimator
from gateway.policies import Policy, make_policy
from gateway.profiles import ProfileSet, load_profiles
from gateway.sim.events import ADD, DRAIN, PoolEvent, check_events
from gateway.sim.pool import PoolSpec, expand_pool, pool_types
from gateway.sim.result import TAIL_FRACTION, SimResult
from gateway.sim.transport import round_trips
from gateway.variants import split_kind
from gateway.workload import QueryTrace

DEFAULT_WARMUP = 0.1
_COMPLETION, _TIMER, _POOL = 0, 1, 2

_PROFILE_CACHE: list[ProfileSet] = []


def default_profiles() -> ProfileSet:
    """The shipped profiles, loaded once per process."""
    if not _PROFILE_CACHE:
        _PROFILE_CACHE.append(load_profiles())
    return _PROFILE_CACHE[0]


def service_times(
    profiles: ProfileSet, model: str, types: list[str], batch: np.ndarray, seed: int
) -> np.ndarray:
    """(len(types), n) service time (ms) of each query on each type (or kind: a variant on a
    type, ``gateway.variants``)."""
    out = np.empty((len(types), len(batch)))
    for k, t in enumerate(types):
        rng = np.random.default_rng([seed, 2, zlib.crc32(t.encode())])
        out[k] = profiles.get(*split_kind(model, t)).sample_many(batch, rng)
    return out


def simulate(
    trace: QueryTrace,
    *,
    model: str,
    qos_ms: float,
    pool: PoolSpec,
    policy: str | Policy = "kairos",
    seed: int = 0,
    depth: int = 1,
    profiles: ProfileSet | None = None,
    warmup: float = DEFAULT_WARMUP,
    stop_below: float | None = None,
    transport_ms: float = 0.0,
    pipeline: bool = False,
    transport_p99_ms: float | None = None,
    overload: OverloadControl | None = None,
    classes: Sequence[ServiceClass] = (),
    query_class: np.ndarray | None = None,
    events: Sequence[PoolEvent] = (),
    accuracy: Mapping[str, float] | None = None,
    max_pending: int | None = None,
) -> SimResult:
    """Run ``trace`` through a fresh Dispatcher (policy, estimator) on ``pool``.

    ``policy``: a registered name (seeded with ``seed``) or a Policy object. ``stop_below``: stop
    as soon as the measured fraction within QoS (or that of its last quarter) can no longer
    reach this target; the result is then marked ``stopped_early`` (find-max uses it to skip the
    rest of a run that has already failed). ``overload``: the live gateway's shedding, admission
    and wait bound (``gateway.late_queries``); refused and shed queries never complete and are
    marked in the result. None: every query is served (the ideal pool).

    ``classes`` with ``query_class`` (n,) indices into them: each query has its class's target
    (deadline) and priority, as the live gateway gives a request naming its class; the result
    reports each class. Without them every query has ``qos_ms`` and one priority.

    ``events``: the pool changing during the run (``gateway.sim.events``): an instance added at
    a time joins once its start-up delay has passed, a drained one finishes what it holds, a
    removed one leaves once it holds nothing, all through the dispatcher's own add / drain /
    remove. Per-instance results list every instance the run had, in the order they joined.

    ``max_pending``: the gateway's queue bound; an arrival finding it full is refused.

    Variants: a pool entry's type may be a kind ``VARIANT/TYPE`` (its profile is the variant's);
    ``accuracy`` (variant -> accuracy) makes the policies prefer the more accurate variant where
    a deadline allows, as live, and the result reports the accuracy served.
    """
    check_events(events, [name for name, _ in expand_pool(pool)])
    run = Simulation(
        trace, model=model, qos_ms=qos_ms, pool=pool, policy=policy, seed=seed, depth=depth, profiles=profiles,
        warmup=warmup, stop_below=stop_below, transport_ms=transport_ms, pipeline=pipeline,
        transport_p99_ms=transport_p99_ms, overload=overload, classes=classes, query_class=query_class,
        accuracy=accuracy, max_pending=max_pending,
    )
    for e in events:
        run.schedule(e)
    run.advance(math.inf)
    return run.result()


class Simulation:
    """One model's dispatcher on a virtual clock, run in steps: ``advance(t)`` handles every event
    up to ``t``, ``schedule`` adds a pool event on the way (what a control loop does), and
    ``result`` reports the run. ``simulate`` is one ``advance`` to the end.

    Between steps a controller reads ``now_ms``, ``arrived``, ``pending``, ``window()`` (the
    latencies completed and the queries refused or shed since the last call) and the dispatcher.
    """

    def __init__(
        self,
        trace: QueryTrace,
        *,
        model: str,
        qos_ms: float,
        pool: PoolSpec,
        policy: str | Policy = "kairos",
        seed: int = 0,
        depth: int = 1,
        profiles: ProfileSet | None = None,
        warmup: float = DEFAULT_WARMUP,
        stop_below: float | None = None,
        transport_ms: float = 0.0,
        pipeline: bool = False,
        transport_p99_ms: float | None = None,
        overload: OverloadControl | None = None,
        classes: Sequence[ServiceClass] = (),
        query_class: np.ndarray | None = None,
        accuracy: Mapping[str, float] | None = None,
        max_pending: int | None = None,
        observe: bool = False,
    ) -> None:
        """As ``simulate``; ``observe``: keep what ``window()`` reports (a control loop reads it)."""
        self.observe = observe
        self.profiles = profiles = profiles or default_profiles()
        self.started = time.perf_counter()
        self.trace, self.model, self.qos_ms, self.pool = trace, model, float(qos_ms), tuple(pool)
        self.seed, self.depth, self.warmup, self.pipeline = seed, depth, warmup, pipeline
        self.accuracy = dict(accuracy or {})
        self.policy = pol = make_policy(policy, seed) if isinstance(policy, str) else policy
        instances = expand_pool(pool)
        types = pool_types(pool)
        self.estimator = estimator = LatencyEstimator(profiles, model, types)
        self.dispatcher = dispatcher = Dispatcher(
            pol, estimator, instances, depth=depth, pipeline=pipeline, overload=overload, model=model,
            accuracy=accuracy, max_pending=max_pending,
        )
        self.control = dispatcher.overload
        self.counts_refusals = self.control.admission or max_pending is not None
        n = self.n = len(trace)
        self.legs = [rt / 2.0 for rt in round_trips(n, transport_ms, transport_p99_ms, seed)]
        # As the live core (GatewayCore._serve): only at depth 1 is a query's round trip free of
        # another's service (deeper, one held behind another would read as no overhead).
        self.observe_overhead = transport_ms > 0 and dispatcher.depth == 1
        self.batch = np.asarray(trace.batch, dtype=np.int64)
        # Service-time rows by type, drawn on first use: a type's stream is keyed by (seed, type).
        self.types: list[str] = []
        self.svc_rows: list[list[float]] = []
        # Per instance, by the order it joined (its "ordinal", stable while columns move): its state,
        # its service-time row and when it is done with what it holds.
        self.sim_insts = list(dispatcher.instances)
        self.ordinal = {inst.name: k for k, inst in enumerate(self.sim_insts)}
        self.row_of_instance = [self._row(t) for _, t in instances]
        self.busy_until = [0.0] * len(instances)
        self.names_seen = {name for name, _ in instances}

        self.arrivals: list[float] = np.asarray(trace.arrival_ms, dtype=float).tolist()
        self.batches: list[int] = self.batch.tolist()
        self.classes = tuple(classes)
        self.cls_idx = np.zeros(0, dtype=np.int64)
        if classes:
            if query_class is None or len(query_class) != n:
                raise ValueError("classes need one class index per query (query_class)")
            self.cls_idx = np.asarray(query_class, dtype=np.int64)
            self.qos_of: list[float] = np.array([c.qos_ms for c in classes])[self.cls_idx].tolist()
            self.prio_of: list[int] = np.array([c.priority for c in classes], dtype=np.int64)[self.cls_idx].tolist()
        else:
            self.qos_of = [float(qos_ms)] * n
            self.prio_of = [0] * n
        self.start = [math.nan] * n
        self.end = [math.nan] * n
        self.where = [-1] * n
        self.refused = np.zeros(n, dtype=bool)
        self.shed = np.zeros(n, dtype=bool)

        # Early stop bookkeeping: misses among the measured queries (and their last quarter).
        self.first_measured = min(math.ceil(warmup * n), n - 1)
        measured = n - self.first_measured
        self.first_tail = n - max(int(measured * TAIL_FRACTION), 1)
        if stop_below is not None:
            self.budget = math.floor((1.0 - stop_below) * measured + 1e-9)
            self.tail_budget = math.floor((1.0 - stop_below) * (n - self.first_tail) + 1e-9)
        else:
            self.budget = self.tail_budget = n + 1
        self.misses = self.tail_misses = 0

        self.heap: list[tuple[float, int, int, Query | None, int]] = []
        self.events: list[PoolEvent] = []
        self.seq = 0
        self.free = depth * len(instances)  # sum over instances in rotation of depth minus what they hold
        self.timers: set[float] = set()
        self.i = 0  # queries arrived so far
        self.now_ms = 0.0
        self.stopped = False
        self._window: list[float] = []  # latencies completed since the last window()
        self._refused_since = self._shed_since = 0

    def _row(self, type_name: str) -> int:
        if type_name not in self.types:
            self.types.append(type_name)
            self.svc_rows.extend(service_times(self.profiles, self.model, [type_name], self.batch, self.seed).tolist())
        return self.types.index(type_name)

    # -- between steps --------------------------------------------------------------------------

    @property
    def arrived(self) -> int:
        return self.i

    @property
    def pending(self) -> int:
        return len(self.dispatcher.pending)

    @property
    def done(self) -> bool:
        return self.stopped or (self.i >= self.n and not self.heap)

    def window(self) -> tuple[list[float], int, int]:
        """(latencies of the queries completed, queries refused, queries shed) since the last call."""
        out = (self._window, self._refused_since, self._shed_since)
        self._window, self._refused_since, self._shed_since = [], 0, 0
        return out

    def schedule(self, event: PoolEvent) -> None:
        """A pool event at ``event.at_ms`` (not before now): an add joins after its start-up delay."""
        if event.action == ADD:
            if event.name in self.names_seen:
                raise ConfigError(f"pool event at {event.at_ms:g} ms: the name {event.name!r} is already used in this run")
            self.names_seen.add(event.name)
            self._row(event.type)
        at = max(event.at_ms, self.now_ms) + (event.startup_ms if event.action == ADD else 0.0)
        heapq.heappush(self.heap, (at, _POOL, self.seq, None, len(self.events)))
        self.events.append(event)
        self.seq += 1

    # -- the event loop -------------------------------------------------------------------------

    def advance(self, until_ms: float) -> None:
        """Handle every event at or before ``until_ms`` (all of them: ``math.inf``)."""
        dispatcher, estimator, control = self.dispatcher, self.estimator, self.control
        sheds = control.shed_late
        n, legs, observe_overhead = self.n, self.legs, self.observe_overhead
        svc_rows, sim_insts, ordinal = self.svc_rows, self.sim_insts, self.ordinal
        row_of_instance, busy_until = self.row_of_instance, self.busy_until
        arrivals, batches, qos_of, prio_of = self.arrivals, self.batches, self.qos_of, self.prio_of
        start, end, where, refused, shed = self.start, self.end, self.where, self.refused, self.shed
        first_measured, first_tail = self.first_measured, self.first_tail
        budget, tail_budget = self.budget, self.tail_budget
        misses, tail_misses = self.misses, self.tail_misses
        heap, events, timers = self.heap, self.events, self.timers
        seq, free, i, depth, pipeline = self.seq, self.free, self.i, self.depth, self.pipeline
        window, observe = self._window, self.observe
        refused_since = shed_since = 0
        profiles, model = self.profiles, self.model
        counts_refusals = self.counts_refusals
        push, pop = heapq.heappush, heapq.heappop
        decide: Callable[[float], list] = dispatcher.decide
        submit, complete = dispatcher.submit, dispatcher.complete
        pending = dispatcher.pending
        inf = math.inf
        stopped = self.stopped
        now = self.now_ms
        while (i < n or heap) and not stopped:
            t_arr = arrivals[i] if i < n else inf
            now = heap[0][0] if heap and heap[0][0] <= t_arr else t_arr
            if now > until_ms:
                now = self.now_ms if until_ms == inf else until_ms
                break
            while heap and heap[0][0] == now:
                _, kind, _, q, j = pop(heap)
                if kind == _COMPLETION:
                    assert q is not None
                    qid = q.id
                    inst = sim_insts[j]
                    complete(q, inst, svc_rows[row_of_instance[j]][qid], now)
                    if observe_overhead and not q.pipelined:  # as live: a query that found its instance idle, depth 1
                        estimator.observe_overhead(now - q.started_ms - svc_rows[row_of_instance[j]][qid])
                    end[qid] = now
                    if observe:
                        window.append(now - q.arrival_ms)
                    if inst.in_rotation:
                        free += 1
                    if now - q.arrival_ms > qos_of[qid] and qid >= first_measured:
                        misses += 1
                        if qid >= first_tail:
                            tail_misses += 1
                        if misses > budget or tail_misses > tail_budget:
                            stopped = True
                elif kind == _TIMER:
                    timers.discard(now)
                else:
                    e = events[j]
                    if e.action == ADD:
                        profile = profiles.get(*split_kind(model, e.type))
                        inst = dispatcher.add(e.name, e.type, profile=profile)
                        ordinal[e.name] = len(sim_insts)
                        sim_insts.append(inst)
                        row_of_instance.append(self._row(e.type))
                        busy_until.append(0.0)
                        free += depth
                    else:
                        inst = dispatcher.instance(e.name)
                        if inst.in_rotation:
                            free -= depth - len(inst.in_flight)
                        if e.action == DRAIN:
                            dispatcher.drain(inst)
                        else:
                            dispatcher.remove(inst)
            if stopped:
                break
            while i < n and arrivals[i] == now:
                query = Query(id=i, batch=batches[i], arrival_ms=now, deadline_ms=now + qos_of[i], priority=prio_of[i])
                if counts_refusals:
                    try:
                        for q in submit(query, now):  # displaced from a full queue by a higher class
                            refused[q.id] = True
                            refused_since += 1
                    except InferenceError:
                        refused[i] = True
                        refused_since += 1
                else:
                    submit(query)
                i += 1
            if sheds and pending:
                for q in dispatcher.shed(now):
                    shed[q.id] = True
                    shed_since += 1
                due = dispatcher.next_shed_ms()
                if due is not None and due > now and due not in timers:
                    timers.add(due)
                    push(heap, (due, _TIMER, seq, None, -1))
                    seq += 1
            if pending and (free > 0 or pipeline):
                for d in decide(now):
                    q, j = d.query, ordinal[d.instance.name]
                    qid = q.id
                    arrive = now + legs[qid]
                    begin = arrive if busy_until[j] <= arrive else busy_until[j]
                    done = begin + svc_rows[row_of_instance[j]][qid]
                    busy_until[j] = done
                    push(heap, (done + legs[qid], _COMPLETION, seq, q, j))
                    seq += 1
                    start[qid] = begin
                    where[qid] = j
                    free -= 1
                if free > 0 and pending:
                    # The policy left a free instance idle: re-decide when that could change.
                    due = dispatcher.next_change_ms(now)
                    if due is not None and due not in timers:
                        timers.add(due)
                        push(heap, (due, _TIMER, seq, None, -1))
                        seq += 1
                if pipeline and pending:
                    # Re-decide when a full instance opens to its next query.
                    due = dispatcher.next_opening_ms(now)
                    if due is not None and due not in timers:
                        timers.add(due)
                        push(heap, (due, _TIMER, seq, None, -1))
                        seq += 1
        else:
            if until_ms != inf:
                now = max(now, until_ms)
        self.now_ms = now
        self.seq, self.free, self.i, self.stopped = seq, free, i, stopped
        self.misses, self.tail_misses = misses, tail_misses
        self._refused_since += refused_since
        self._shed_since += shed_since

    def result(self) -> SimResult:
        dispatcher, sim_insts = self.dispatcher, self.sim_insts
        return SimResult(
            policy=self.policy.name,
            model=self.model,
            qos_ms=self.qos_ms,
            pool=self.pool,
            seed=self.seed,
            depth=self.depth,
            warmup=self.warmup,
            arrival_ms=np.asarray(self.trace.arrival_ms, dtype=float),
            batch=self.batch,
            start_ms=np.asarray(self.start),
            end_ms=np.asarray(self.end),
            instance=np.asarray(self.where, dtype=np.int64),
            instance_names=tuple(inst.name for inst in sim_insts),
            instance_types=tuple(inst.type_name for inst in sim_insts),
            busy_ms=np.array([inst.busy_ms for inst in sim_insts]),
            decisions=dispatcher.decisions,
            stopped_early=self.stopped,
            wall_s=time.perf_counter() - self.started,
            **({"refused": self.refused, "shed": self.shed}
               if self.counts_refusals or self.control.shed_late else {}),
            classes=self.classes,
            query_class=self.cls_idx if self.classes else np.zeros(0, dtype=np.int64),
            qos_per_query=np.asarray(self.qos_of) if self.classes else np.zeros(0),
            accuracy=self.accuracy,
        )
