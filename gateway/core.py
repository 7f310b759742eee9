"""The transport-agnostic gateway core: admission, the event-driven drive loop around the shared
``Dispatcher``, backend calls, retries, health and metrics.

Front ends (HTTP, gRPC) turn a request into a ``RoutedRequest`` and await ``infer``: it returns
one ``InferResult`` or raises one ``InferenceError``, exactly once per call.

Each query lives in the front end's task from arrival to answer: that task waits to be placed,
makes the backend call itself, and retries there. Why: a task per dispatch, and a future to hand
its answer back, cost a loop hop each way and a task on every query.

The dispatcher is driven on the monotonic clock (ms): ``decide`` runs, coalesced to once per
loop iteration, after every arrival, completion, failure and health change, and at a timer set
to the next deadline a policy could care about. Nothing polls. Why coalesced, and why not
``loop.time()``: docs/decisions.md, D1.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.backend import Backend, BackendReply, InstanceFailure, RoutedRequest
from gateway.clock import Clock, LoopClock, TimerHandle
from gateway.config import DEFAULT_CLASS, ServiceClass, Variant
from gateway.dispatch import Dispatcher, InstanceState, Query
from gateway.dispatch.dispatcher import DecisionFailed
from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    InternalError,
    ModelNotFound,
    NoHealthyInstance,
    Overloaded,
    Unavailable,
)
from gateway.metrics import GatewayMetrics
from gateway.outlier import DEFAULT_CONSECUTIVE_ERRORS, ConsecutiveErrors
from gateway.profiles import LatencyProfile
from gateway.protocol.limits import quote

log = logging.getLogger("kairos.gateway")

MIN_BACKEND_TIMEOUT_MS = 1000.0  # an instance that takes longer than this and 3 QoS has failed
DEFAULT_MAX_ATTEMPTS = 3
COLD_ROUND_TRIPS = 2  # an instance's first round trips set up its connection: no overhead learned


@dataclass(slots=True)
class InferResult:
    reply: BackendReply  # the instance's answer, unchanged (a result or a client error)
    instance: str
    queue_ms: float  # time in the gateway's queue before the (last) dispatch
    e2e_ms: float  # from arrival in the core to the instance's reply
    attempts: int
    variant: str | None = None  # the variant that served it, for a model with several


@dataclass(slots=True, eq=False)
class _Ticket:
    """What the core keeps with a query (``Query.payload``): how a decision reaches the query's
    task. It leaves the instance in ``placed`` (or the error in ``error``) and wakes the task
    through ``waiter`` if it waits."""

    request: RoutedRequest
    service_class: str
    # Reported times use perf_counter: uvloop's loop.time() moves in whole milliseconds, fine for
    # deadlines and timers but too coarse (and a different clock) for the parameters a client reads.
    arrived_s: float = field(default_factory=time.perf_counter)
    queue_ms: float = 0.0
    placed: InstanceState | None = None  # dispatched there, not yet sent
    error: InferenceError | None = None  # failed while pending
    waiter: asyncio.Future[None] | None = None

    def place(self, instance: InstanceState) -> None:
        self.placed = instance
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: InferenceError) -> None:
        self.error = error
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)


class GatewayCore:
    def __init__(
        self,
        model: str,
        qos_ms: float,
        dispatcher: Dispatcher,
        clients: Sequence[Backend],
        metrics: GatewayMetrics | None = None,
        classes: Sequence[ServiceClass] = (),
        default_class: str | None = None,
        variants: Sequence[Variant] = (),
        backend_timeout_ms: float | None = None,
        client_margin_ms: float = 0.0,
        consecutive_errors: int = DEFAULT_CONSECUTIVE_ERRORS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        clock: Clock | None = None,
    ) -> None:
        if len(clients) != len(dispatcher.instances):
            raise ValueError("one client per dispatcher instance is required")
        # By instance name (its stable id): instances come and go while queries flow.
        self.clients: dict[str, Backend] = {
            inst.name: client for inst, client in zip(dispatcher.instances, clients, strict=True)
        }
        self._closing_clients: set[asyncio.Task[None]] = set()
        self.model = model
        self.clock = clock or LoopClock()  # the dispatcher's time and its timers (gateway.clock)
        # Service classes by name; none given: one, "default", with target ``qos_ms``.
        self.classes = {c.name: c for c in classes} or {DEFAULT_CLASS: ServiceClass(DEFAULT_CLASS, qos_ms)}
        self.default_class = self.classes[default_class or next(iter(self.classes))]
        self.qos_ms = self.default_class.qos_ms
        # Variants by name (more than one: queries may pin one, answers name theirs).
        self.variants = {v.name: v for v in variants} if len(variants) > 1 else {}
        self.dispatcher = dispatcher
        gateway_metrics = metrics or GatewayMetrics()
        gateway_metrics.watch(model, dispatcher)
        self.metrics = gateway_metrics.for_model(model)
        self.backend_timeout_ms = backend_timeout_ms
        # Each deadline leaves this much of the QoS to the client legs, which the gateway cannot see.
        self.client_margin_ms = client_margin_ms
        self.max_batch = dispatcher.estimator.max_batch
        self.max_attempts = max_attempts
        self._outliers = ConsecutiveErrors(consecutive_errors)
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0
        self._scheduled = False
        self._outstanding = 0  # accepted queries not yet answered
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- public API ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Ready while accepting and at least one healthy instance serves the model."""
        return not self._closing and self.dispatcher.has_healthy()

    def model_ready(self, model: str) -> bool:
        return model == self.model and self.ready

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def infer(self, request: RoutedRequest) -> InferResult:
        """Route one request and return the instance's reply, or raise one ``InferenceError``:
        ModelNotFound, Overloaded (queue full or shutting down), Unavailable (no healthy
        instance, or the instance failed and no retry was possible), DeadlineExceeded."""
        if request.model != self.model:
            raise ModelNotFound(f"unknown model {quote(request.model)}: this gateway serves {self.model!r}")
        cls = self._service_class(request.service_class)
        if request.variant is not None and request.variant not in self.variants and request.variant != self.model:
            served = ", ".join(self.variants) or self.model
            raise BadRequest(
                f"unknown variant {quote(request.variant)} of model {self.model!r}: expected one of {served}"
            )
        if not 1 <= request.batch <= self.max_batch:
            raise BadRequest(
                f"batch size {request.batch}: model {self.model!r} is served in batches of 1 to {self.max_batch}"
            )
        if self._closing:
            self._refused("shutting_down", request, cls)
            raise Overloaded("the gateway is shutting down", retry_after_s=1.0)
        if not self.dispatcher.has_healthy():
            self._refused("no_healthy_instance", request, cls)
            raise NoHealthyInstance(f"no healthy instance serves model {self.model!r}")
        now = self.clock.now_ms()
        if request.received_s is not None:
            now = min(now, request.received_s * 1000.0)
        qos = request.qos_ms if request.qos_ms is not None else cls.qos_ms
        ticket = _Ticket(request, cls.name)
        deadline = now + max(qos - self.client_margin_ms, 0.0)
        query = Query(
            id=next(self._ids),
            batch=request.batch,
            arrival_ms=now,
            deadline_ms=deadline,
            payload=ticket,
            sheddable=request.late != "serve",  # a client may ask for a late answer instead
            priority=cls.priority,
            variant=request.variant if self.variants else None,
            only=request.only,
        )
        if query.restricted and not self.dispatcher.servable(query):
            self._refused("no_healthy_instance", request, cls)
            raise NoHealthyInstance(self._none_for(query))
        try:
            displaced = self.dispatcher.submit(query, now)
        except DeadlineExceeded:
            self._refused("deadline", request, cls)
            raise
        except Overloaded as exc:
            self._refused(exc.reason, request, cls)
            raise
        for other in displaced:  # a lower class's query made room for this one
            self.metrics.refused(other.payload.service_class, "displaced")
            other.payload.fail(
                Overloaded(
                    f"refused: the queue is full and a query of a higher class took this one's place "
                    f"(class {other.payload.service_class!r})",
                    retry_after_s=1.0,
                    reason="displaced",
                )
            )
        self._outstanding += 1
        self._idle.clear()
        try:
            self._kick()
            while True:
                instance = await self._placement(query, ticket)
                result = await self._serve(query, instance)
                if result is not None:
                    break
        except InferenceError:
            self.metrics.violation(cls.name)
            raise
        finally:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.set()
        self.metrics.e2e(cls.name, request.protocol, result.e2e_ms / 1000.0)
        if result.variant is not None:
            accuracy = self.variants[result.variant].accuracy
            if accuracy is not None:
                self.metrics.served_accuracy(cls.name, accuracy)
        if self.clock.now_ms() > query.deadline_ms:
            self.metrics.violation(cls.name)
        return result

    def _service_class(self, name: str | None) -> ServiceClass:
        if name is None:
            return self.default_class
        cls = self.classes.get(name)
        if cls is None:
            raise BadRequest(
                f"unknown class {quote(name)} for model {self.model!r}: expected one of {', '.join(self.classes)}"
            )
        return cls

    def metadata_clients(self) -> list[tuple[Backend, str]]:
        """Instances to ask for model metadata, with the model name each serves: the healthy
        ones first, and those serving the model itself before a variant's."""
        kinds = self.dispatcher.kind_variant

        def served(inst: InstanceState) -> str:
            return str(kinds[inst.type_index]) if self.variants else self.model

        order = sorted(self.dispatcher.instances, key=lambda i: (not i.in_rotation, served(i) != self.model))
        return [(self.clients[i.name], served(i)) for i in order]

    async def drain(self) -> None:
        """Stop accepting queries and wait until every accepted one is answered."""
        self._closing = True
        await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()

    def _refused(self, reason: str, request: RoutedRequest, cls: ServiceClass) -> None:
        self.metrics.refused(cls.name, reason)
        if request.received_s is not None:
            self.metrics.refusal_time.observe(max(time.monotonic() - request.received_s, 0.0))

    def abort_pending(self, error: InferenceError) -> int:
        """Answer every query still waiting to be placed with ``error`` (a drain that ran out of
        time); returns how many."""
        n = len(self.dispatcher.pending)
        self._fail_pending(error)
        return n

    def set_instance_health(self, name: str, healthy: bool) -> None:
        """Probe results and failures: an instance leaves or rejoins the rotation (a result for
        an instance no longer in the pool is ignored)."""
        inst = self.instance(name)
        if inst is None or not self.dispatcher.set_healthy(inst, healthy):
            return
        self._outliers.reset(name)
        state = "up" if healthy else "down"
        self.metrics.health_change(inst.name, state)
        log.warning(
            "instance %s (%s) is %s",
            inst.name,
            inst.type_name,
            "back in rotation" if healthy else "out of rotation",
        )
        self._rotation_changed(inst)

    def _rotation_changed(self, inst: InstanceState) -> None:
        if inst.in_rotation:
            self._kick()
        elif not self.dispatcher.has_healthy():
            self._fail_pending(NoHealthyInstance(f"no healthy instance serves model {self.model!r}"))
        else:
            for query in self.dispatcher.stranded():  # their instances all left rotation
                self.dispatcher.cancel(query)
                query.payload.fail(NoHealthyInstance(self._none_for(query)))

    def instance(self, name: str) -> InstanceState | None:
        """The instance of that name in this model's pool, if any."""
        try:
            return self.dispatcher.instance(name)
        except KeyError:
            return None

    # -- pool changes -------------------------------------------------------------------------

    def add_instance(
        self,
        name: str,
        type_name: str,
        client: Backend,
        healthy: bool = True,
        profile: LatencyProfile | None = None,
        prior: bool = False,
    ) -> InstanceState:
        """A new instance joins the pool; with ``healthy`` False it waits for a probe. A type new
        to the pool needs its latency ``profile`` (measured, or a ``prior``)."""
        inst = self.dispatcher.add(name, type_name, healthy=healthy, profile=profile, prior=prior)
        self.clients[name] = client
        log.info("instance %s (%s) added%s", name, type_name, "" if healthy else ", waiting for a probe")
        self._rotation_changed(inst)
        return inst

    def drain_instance(self, name: str) -> InstanceState:
        """The instance takes no new query and finishes what it holds (KeyError: no such one)."""
        inst = self.dispatcher.instance(name)
        self.dispatcher.drain(inst)
        log.info("instance %s draining (%d in flight)", name, len(inst.in_flight))
        self._rotation_changed(inst)
        return inst

    def remove_instance(self, name: str) -> InstanceState:
        """Drain the instance; it leaves the pool, and its client is closed, once it holds
        nothing (now, or when its last query is answered)."""
        inst = self.dispatcher.instance(name)
        self.dispatcher.remove(inst)
        self._rotation_changed(inst)
        self._released(inst)
        return inst

    def _released(self, inst: InstanceState) -> None:
        """After an instance let go of a query: close the client of one that left the pool."""
        if inst.removed and (client := self.clients.pop(inst.name, None)) is not None:
            self._outliers.reset(inst.name)
            self.metrics.forget_instance(inst.name)  # its series end: names come and go for good
            log.info("instance %s removed", inst.name)
            task = (self._loop or self._bind_loop()).create_task(client.close())
            self._closing_clients.add(task)
            task.add_done_callback(self._closing_clients.discard)

    async def close(self) -> None:
        for client in list(self.clients.values()):
            await client.close()
        if self._closing_clients:
            await asyncio.gather(*self._closing_clients, return_exceptions=True)

    # -- drive loop ---------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _on_timer(self) -> None:
        self._timer = None
        self._decide()

    def _kick(self) -> None:
        """Run a decision soon: once per loop iteration however many events arrive in it (and
        none while no query waits: nothing could move)."""
        if not self._scheduled and self.dispatcher.pending:
            self._scheduled = True
            (self._loop or self._bind_loop()).call_soon(self._scheduled_decide)

    def _scheduled_decide(self) -> None:
        self._scheduled = False
        self._decide()

    def _decide(self) -> None:
        d = self.dispatcher
        if not d.pending:  # nothing could move
            return
        now = self.clock.now_ms()
        for query in d.shed(now):
            self.metrics.refused(query.payload.service_class, "shed")
            query.payload.fail(
                DeadlineExceeded(
                    f"shed: this query cannot be served within its deadline any more "
                    f"({query.deadline_ms - now:.1f} ms left, batch {query.batch})"
                )
            )
        if not d.pending:
            return
        before = d.decisions
        start = time.perf_counter()
        try:
            dispatches = d.decide(now)
        except Exception as exc:
            # A bug in a decision must fail the queries it saw, never stop dispatching for all;
            # the queries it had placed already go where it placed them.
            log.exception("dispatch decision failed; failing the pending queries")
            for dispatch in exc.placed if isinstance(exc, DecisionFailed) else ():
                dispatch.query.payload.place(dispatch.instance)
            self._fail_pending(InternalError("the gateway failed to dispatch this query"))
            return
        if d.decisions != before:
            self.metrics.decision.observe(time.perf_counter() - start)
        for dispatch in dispatches:
            dispatch.query.payload.place(dispatch.instance)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        """Re-decide at the next moment a decision could change without an event: when a query
        turns late (or urgent, or aged: ``next_change_ms``) while a policy leaves free instances
        idle (the rule the simulator follows), or when a pipelining instance opens. A timer
        already due earlier is kept: it re-decides early at worst, and re-arming on every
        dispatch costs more than that decision."""
        d = self.dispatcher
        if not d.pending:
            return  # a stale timer only re-runs a cheap decision
        due = d.next_change_ms(now) if d.free_left else None
        opening = d.next_opening_ms(now)
        if opening is not None and (due is None or opening < due):
            due = opening
        shed = d.next_shed_ms()
        if shed is not None and (due is None or shed < due):
            due = max(shed, now)
        if due is None:
            return
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.clock.call_at(due, self._on_timer)

    # -- one dispatch -------------------------------------------------------------------------

    def _timeout_s(self, query: Query) -> float:
        if self.backend_timeout_ms is not None:
            return self.backend_timeout_ms / 1000.0
        qos = query.deadline_ms - query.arrival_ms
        return max(3.0 * qos, MIN_BACKEND_TIMEOUT_MS) / 1000.0

    async def _placement(self, query: Query, ticket: _Ticket) -> InstanceState:
        """Wait until a decision places the query (or fails it while pending)."""
        if ticket.placed is None:
            if ticket.error is not None:
                raise ticket.error
            ticket.waiter = (self._loop or self._bind_loop()).create_future()
            try:
                await ticket.waiter
            except asyncio.CancelledError:
                # The client went away: drop the query if it still waits; if a decision placed it
                # in the meantime, give the slot it never used back.
                if not self.dispatcher.cancel(query) and ticket.placed is not None:
                    self._give_back(query, ticket.placed)
                raise
            finally:
                ticket.waiter = None
        instance = ticket.placed
        assert instance is not None
        ticket.placed = None
        return instance

    async def _serve(self, query: Query, inst: InstanceState) -> InferResult | None:
        """One attempt on ``inst``: the result, or None when the query went back to the queue for
        a retry elsewhere; raises the error that answers the query otherwise."""
        ticket: _Ticket = query.payload
        ticket.queue_ms = (time.perf_counter() - ticket.arrived_s) * 1000.0
        if query.attempts == 1:
            self.metrics.queued(ticket.service_class, ticket.queue_ms / 1000.0)
        self.metrics.dispatched(inst.name, inst.type_name)
        try:
            reply = await self.clients[inst.name].infer(ticket.request, self._timeout_s(query))
        except asyncio.CancelledError:
            self._orphan(query, inst)
            raise
        except InstanceFailure as exc:
            self._on_failure(query, inst, exc)
            return None
        except InferenceError:  # the instance cannot take this request at all
            self._give_back(query, inst)
            raise
        except Exception:  # the gateway's own bug: the query fails, the instance is not blamed
            log.exception("backend call to %s failed in the gateway", inst.name)
            self._give_back(query, inst)
            raise InternalError("the gateway failed to send this query") from None
        e2e_ms = (time.perf_counter() - ticket.arrived_s) * 1000.0
        service_ms = reply.service_ms if reply.service_ms is not None else reply.round_trip_ms
        self.dispatcher.complete(query, inst, service_ms if reply.ok else None, self.clock.now_ms())
        self._released(inst)
        if not inst.removed and self._outliers.record(inst.name, reply.server_error) and self._may_eject():
            self.metrics.failure(inst.name)
            log.warning("instance %s: %d error answers in a row", inst.name, self._outliers.threshold)
            self.set_instance_health(inst.name, False)
        if (reply.ok and reply.service_ms is not None and self.dispatcher.depth == 1 and not query.pipelined
                and inst.served > COLD_ROUND_TRIPS):
            # Sent to an idle instance, the round trip holds no instance queueing. Not an
            # instance's first: its connection was being set up (and, the process's first, code
            # loaded). Taken as the overhead, one such exceeded ncf's 5 ms QoS in a fresh clone,
            # and every query after it was refused at admission: nothing more was learned.
            self.dispatcher.estimator.observe_overhead(reply.round_trip_ms - reply.service_ms)
        self._kick()  # a freed slot
        variant = str(self.dispatcher.kind_variant[inst.type_index]) if self.variants else None
        return InferResult(reply, inst.name, ticket.queue_ms, e2e_ms, query.attempts, variant)

    def _may_eject(self) -> bool:
        """Outlier detection leaves at least half the pool in rotation (Envoy's
        max_ejection_percent): error answers may all be one client's bad requests, and a pool
        emptied by them answers everyone 'no healthy instance' instead."""
        active = [i for i in self.dispatcher.instances if not i.draining]
        return sum(i.healthy for i in active) - 1 >= len(active) / 2

    def _orphan(self, query: Query, inst: InstanceState) -> None:
        """The client went away mid-call. The instance still serves the query (the connection is
        dropped, its answer has no reader): its slot opens when the estimate says it is done."""
        done_ms = max(query.started_ms + query.est_ms, self.clock.now_ms())
        self.clock.call_at(done_ms, self._orphan_done, query, inst)

    def _orphan_done(self, query: Query, inst: InstanceState) -> None:
        self._give_back(query, inst)

    def _give_back(self, query: Query, inst: InstanceState) -> None:
        """The query leaves the instance unserved: its slot is free for the next one."""
        self.dispatcher.fail(query, inst)
        self._released(inst)
        self._kick()

    def _on_failure(self, query: Query, inst: InstanceState, exc: InstanceFailure) -> None:
        """Requeue the query for one retry elsewhere if its deadline allows; raise otherwise."""
        self.metrics.failure(inst.name)  # before the release, which ends a removed instance's series
        self.dispatcher.fail(query, inst)
        self._released(inst)
        log.warning("%s", exc)
        self.set_instance_health(inst.name, False)  # back in rotation when a probe succeeds
        late = self.clock.now_ms() >= query.deadline_ms
        others = any(
            i.in_rotation and i.name not in query.tried and self.dispatcher.allows(query, i)
            for i in self.dispatcher.instances
        )
        retry = query.attempts < self.max_attempts and not late and others
        if retry:
            self.metrics.retries.inc()
            self.dispatcher.requeue(query)
        self._kick()  # the slot it held, and the retry
        if retry:
            return
        # The reason stays in the log: it names the instance's address and what it sent.
        what = f"instance {inst.name} " + ("did not answer in time" if exc.timeout else "failed")
        if late or exc.timeout:
            raise DeadlineExceeded(f"query not served within its deadline: {what}")
        tries = f"tried {query.attempts} instances" if query.attempts > 1 else "no other healthy instance"
        raise Unavailable(f"{what}; {tries}")

    def _none_for(self, query: Query) -> str:
        """Why no instance may take a pinned or restricted query."""
        what = f"of model {self.model!r}"
        if query.variant is not None:
            what = f"of variant {query.variant!r} of model {self.model!r}"
        return f"no healthy instance {what}" + (" in the request's subset" if query.only is not None else "")

    def _fail_pending(self, error: InferenceError) -> None:
        d = self.dispatcher
        while d.pending:
            query = d.pending[0]
            if not d.cancel(query):
                d.pending.popleft()
            query.payload.fail(error)
