"""``fluid``: deadline-aware list scheduling, priced by the fluid LP's split of the batch mix.

Where ``kairos`` loses: its heterogeneity weight sends almost everything to the CPUs (the GPU
idles while the CPUs queue), a CPU may take a query it cannot finish within QoS, and a query
that has already missed competes with those that can still make it. This policy

1. learns the batch mix online from what it dispatches and now and then solves the fluid LP of
   that mix on the pool (``fluid_split``): a price per ms of each type, so that
   ``price x estimated service time`` is a placement's cost in the scarce capacity;
2. plans the window with the work already queued on each instance: first the queries only one
   type can still serve in time, then the others, each group in deadline order (EDF). A query
   goes to the cheapest instance where it still finishes by its deadline, ties by earliest
   finish. It is dispatched if that instance has a free slot now; otherwise it waits for it;
3. trunk reservation: a query with a choice of types may not leave a type unable to serve, on
   arrival, the largest query that only that type serves within QoS;
4. a query that can no longer finish in time anywhere only takes a free slot nobody else wants,
   and leaves the last free instance of a type alone; once late by ``LATE_LIMIT`` QoS it comes
   first, wherever it finishes soonest, so it is never starved.

Pure function of the snapshot and of the learned mix: deterministic, no clock.
"""

from __future__ import annotations

import numpy as np

from gateway.policies.base import Assignment, Policy, Snapshot
from gateway.policies.fluid_split import MixLearner, forced_need, type_prices

# Headroom on the mean estimate when testing a deadline. 0 measured best on all five models
# (0.02 and 0.05 cost 1-5%): a margin only marks more queries as lost, and they then are.
MARGIN = 0.0
LATE_LIMIT = 3.0  # QoS multiples of lateness after which a query is served first


class FluidPolicy(Policy):
    name = "fluid"
    urgent_after = LATE_LIMIT

    def __init__(self, seed: int = 0) -> None:
        self._mix: MixLearner | None = None  # deterministic: the seed is not used
        self._prices = np.zeros(0)
        self._forced = np.zeros(0)
        self._counts = np.zeros(0, dtype=np.int64)
        self._qos = 0.0  # the target the split and the reserve were computed for

    def window(self, n_instances: int, free_slots: int) -> int:
        return 2 * n_instances

    def _update(self, snap: Snapshot) -> None:
        """Re-solve the split when it is due or when the healthy pool changed."""
        n_types = snap.est_ms.shape[1]
        if self._mix is None or self._mix.est.shape[1] != n_types:
            self._mix = MixLearner(n_types)
            self._prices = np.ones(n_types)  # until the first solve: earliest finish
            self._forced = np.zeros(n_types)
        counts = np.bincount(snap.inst_type[snap.healthy], minlength=n_types)
        if (self._mix.due() or not np.array_equal(counts, self._counts)) and self._mix.seen:
            self._counts = counts
            self._qos = float(snap.qos_ms.min())  # the split must serve the tightest target present
            self._prices = type_prices(self._mix.counts, self._mix.est, counts, self._qos)
            self._forced = forced_need(self._mix.counts, self._mix.est, counts, self._qos)
            self._mix.solved()

    def decide(self, snap: Snapshot) -> list[Assignment]:
        instances = np.flatnonzero(snap.healthy)
        if snap.n_queries == 0 or instances.size == 0:
            return []
        self._update(snap)
        out = plan(snap, instances, self._prices, self._forced, self._qos)
        if out:
            assert self._mix is not None
            rows = np.fromiter((i for i, _ in out), dtype=np.int64, count=len(out))
            self._mix.observe(snap.batch[rows], snap.est_ms[rows])
        return out


def plan(
    snap: Snapshot, instances: np.ndarray, prices: np.ndarray, forced: np.ndarray, reserve_qos: float
) -> list[Assignment]:
    """List-schedule the window onto ``instances`` (healthy); return the dispatches possible now.
    ``forced``: per type, the time the largest query only it serves needs, within ``reserve_qos``."""
    types = snap.inst_type[instances]
    est = snap.est_ms[:, types]  # (Q, M)
    cost = est * prices[types]
    need = est * (1.0 + MARGIN)
    avail = snap.busy_left_ms[instances].astype(float)  # when each instance could start more work
    slots = snap.free_slots[instances].copy()
    time_left = snap.time_left_ms
    qos = snap.qos_ms  # (Q,) each query's own target
    # Per query: how many types it could still make its deadline on, with nothing else planned.
    ok0 = avail[None, :] + need <= time_left[:, None]
    n_ok_types = np.zeros((snap.n_queries, int(types.max()) + 1), dtype=bool)
    rows, cols = np.nonzero(ok0)
    n_ok_types[rows, types[cols]] = True
    flexible = n_ok_types.sum(axis=1) > 1
    urgent = time_left < -LATE_LIMIT * qos
    reserve = forced[types] * (1.0 + MARGIN)  # (M,) headroom each instance's type must keep
    reserving = bool(forced.any())
    same = (types[:, None] == types[None, :]) & ~np.eye(types.size, dtype=bool) if reserving else None
    out: list[Assignment] = []
    doomed: list[int] = []
    free_now = int(slots.sum())
    # Python scalars for the per-query flags: the loop below is the policy's hot path.
    urgent_l: list[bool] = urgent.tolist()
    flexible_l: list[bool] = flexible.tolist()
    time_left_l: list[float] = time_left.tolist()
    slots_l: list[int] = slots.tolist()
    instances_l: list[int] = instances.tolist()
    allowed = None if snap.allowed is None else snap.allowed[:, instances]
    rank = None if snap.accuracy_rank is None else snap.accuracy_rank[types]
    for i in np.lexsort((time_left, flexible, ~urgent)).tolist():
        if free_now == 0:
            break
        finish = avail + need[i]
        if urgent_l[i]:
            ok = np.ones(finish.size, dtype=bool)  # bounded wait: wherever it finishes first, ahead of the rest
            if allowed is not None:
                ok = allowed[i].copy()
                if not ok.any():
                    continue
        else:
            ok = finish <= time_left_l[i]
            if allowed is not None:
                ok &= allowed[i]
            if not ok.any():
                doomed.append(i)
                continue
        if flexible_l[i] and same is not None:
            # After this placement, each type must still take its largest forced query on arrival.
            after = np.minimum(np.where(same, avail[None, :], np.inf).min(axis=1), avail + est[i])
            keep = after + reserve <= reserve_qos
            if (ok & keep).any():
                ok &= keep
        # The cheapest allowed instance; among equal costs (one type), the earliest finish. With
        # variants, the most accurate one that makes the deadline first.
        keys: tuple[np.ndarray, ...] = (finish, np.where(ok, cost[i], np.inf))
        if rank is not None and not urgent_l[i]:
            keys = (*keys, np.where(ok, -rank, 0))
        m = int(np.lexsort(keys)[0])
        avail[m] += est[i, m]
        if slots_l[m] > 0:
            slots_l[m] -= 1
            free_now -= 1
            out.append((i, instances_l[m]))
    slots = np.array(slots_l)
    # Queries that miss anyway take the free slots left, where they cost least, but not the last
    # free instance of a type: a query that can still make it may arrive any moment.
    for i in doomed:
        if free_now == 0:
            break
        free_of_type = np.bincount(types, weights=slots > 0)[types]
        usable = (slots > 0) & (free_of_type > 1)
        if allowed is not None:
            usable &= allowed[i]
        c = np.where(usable, cost[i], np.inf)
        if not np.isfinite(c).any():
            continue
        m = int(np.argmin(c))
        slots[m] -= 1
        free_now -= 1
        out.append((i, int(instances[m])))
    return out
