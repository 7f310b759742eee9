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
from gateway.errors import InferenceError
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
    profiles = profiles or default_profiles()
    started = time.perf_counter()
    pol = make_policy(policy, seed) if isinstance(policy, str) else policy
    instances = expand_pool(pool)
    types = pool_types(pool)
    estimator = LatencyEstimator(profiles, model, types)
    check_events(events, [name for name, _ in instances])
    dispatcher = Dispatcher(
        pol, estimator, instances, depth=depth, pipeline=pipeline, overload=overload, model=model, accuracy=accuracy,
        max_pending=max_pending,
    )
    control = dispatcher.overload
    sheds = control.shed_late
    n = len(trace)
    legs = [rt / 2.0 for rt in round_trips(n, transport_ms, transport_p99_ms, seed)]
    observe_overhead = transport_ms > 0
    batch = np.asarray(trace.batch, dtype=np.int64)
    all_types = types + [t for t in dict.fromkeys(e.type for e in events if e.action == ADD) if t not in types]
    svc = service_times(profiles, model, all_types, batch, seed)
    svc_rows: list[list[float]] = svc.tolist()
    # Per instance, by the order it joined (its "ordinal", stable while columns move): its state,
    # its service-time row and when it is done with what it holds.
    sim_insts = list(dispatcher.instances)
    ordinal = {inst.name: k for k, inst in enumerate(sim_insts)}
    row_of_instance = [all_types.index(t) for _, t in instances]
    busy_until = [0.0] * len(instances)

    arrivals: list[float] = np.asarray(trace.arrival_ms, dtype=float).tolist()
    batches: list[int] = batch.tolist()
    cls_idx = np.zeros(0, dtype=np.int64)
    if classes:
        if query_class is None or len(query_class) != n:
            raise ValueError("classes need one class index per query (query_class)")
        cls_idx = np.asarray(query_class, dtype=np.int64)
        qos_of: list[float] = np.array([c.qos_ms for c in classes])[cls_idx].tolist()
        prio_of: list[int] = np.array([c.priority for c in classes], dtype=np.int64)[cls_idx].tolist()
    else:
        qos_of = [float(qos_ms)] * n
        prio_of = [0] * n
    start = [math.nan] * n
    end = [math.nan] * n
    where = [-1] * n
    refused = np.zeros(n, dtype=bool)
    shed = np.zeros(n, dtype=bool)

    # Early stop bookkeeping: misses among the measured queries (and their last quarter).
    first_measured = min(math.ceil(warmup * n), n - 1)
    measured = n - first_measured
    first_tail = n - max(int(measured * TAIL_FRACTION), 1)
    if stop_below is not None:
        budget = math.floor((1.0 - stop_below) * measured + 1e-9)
        tail_budget = math.floor((1.0 - stop_below) * (n - first_tail) + 1e-9)
    else:
        budget = tail_budget = n + 1
    misses = tail_misses = 0

    heap: list[tuple[float, int, int, Query | None, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    free = depth * len(instances)  # sum over instances in rotation of depth minus what they hold
    timers: set[float] = set()
    for k, e in enumerate(events):
        push(heap, (e.at_ms + (e.startup_ms if e.action == ADD else 0.0), _POOL, seq, None, k))
        seq += 1
    decide: Callable[[float], list] = dispatcher.decide
    submit, complete = dispatcher.submit, dispatcher.complete
    pending = dispatcher.pending
    i = 0
    inf = math.inf
    stopped = False
    while i < n or heap:
        t_arr = arrivals[i] if i < n else inf
        now = heap[0][0] if heap and heap[0][0] <= t_arr else t_arr
        while heap and heap[0][0] == now:
            _, kind, _, q, j = pop(heap)
            if kind == _COMPLETION:
                assert q is not None
                qid = q.id
                inst = sim_insts[j]
                complete(q, inst, svc_rows[row_of_instance[j]][qid], now)
                if observe_overhead and not q.pipelined:  # as live: only a query that found its instance idle
                    estimator.observe_overhead(now - q.started_ms - svc_rows[row_of_instance[j]][qid])
                end[qid] = now
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
                    row_of_instance.append(all_types.index(e.type))
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
            if control.admission or max_pending is not None:
                try:
                    for q in submit(query, now):  # displaced from a full queue by a higher class
                        refused[q.id] = True
                except InferenceError:
                    refused[i] = True
            else:
                submit(query)
            i += 1
        if sheds and pending:
            for q in dispatcher.shed(now):
                shed[q.id] = True
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
                # The policy left a free instance idle: re-decide when a query turns late.
                due = dispatcher.next_deadline_ms()
                if due is not None and due > now and due not in timers:
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

    return SimResult(
        policy=pol.name,
        model=model,
        qos_ms=float(qos_ms),
        pool=tuple(pool),
        seed=seed,
        depth=depth,
        warmup=warmup,
        arrival_ms=np.asarray(trace.arrival_ms, dtype=float),
        batch=batch,
        start_ms=np.asarray(start),
        end_ms=np.asarray(end),
        instance=np.asarray(where, dtype=np.int64),
        instance_names=tuple(inst.name for inst in sim_insts),
        instance_types=tuple(inst.type_name for inst in sim_insts),
        busy_ms=np.array([inst.busy_ms for inst in sim_insts]),
        decisions=dispatcher.decisions,
        stopped_early=stopped,
        wall_s=time.perf_counter() - started,
        **({"refused": refused, "shed": shed} if control.admission or sheds or max_pending is not None else {}),
        classes=tuple(classes),
        query_class=cls_idx if classes else np.zeros(0, dtype=np.int64),
        qos_per_query=np.asarray(qos_of) if classes else np.zeros(0),
        accuracy=dict(accuracy or {}),
    )
