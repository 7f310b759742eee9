"""Refine a plan against the simulator: the gateway's own dispatcher on a virtual clock.

The queueing model sees each group (one variant on one type) as its own queue, but the dispatcher
pools a model's groups (a small query takes whichever instance frees first, GPU included), so a
mixed pool carries more than the model credits it with (docs/planner.md). ``refine_model`` makes
a model's pool cheaper by local search (one instance off, or one traded for cheaper ones) while it
still meets every class's target in simulation (an upper confidence bound of each class's
misses, within a margin of what it may miss) and stays under ``max_utilisation``; the plan then
reports what the simulator measured.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from allocator.fluid import FluidModel, build_fluid_model, fluid_limit
from allocator.planner.request import PlanRequest, RefineOptions
from gateway.config import ServiceClass
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.sim.engine import simulate
from gateway.sim.result import SimResult
from gateway.variants import kind_of, split_kind
from gateway.workload import make_workload
from gateway.workload.arrivals import PoissonArrivals

GroupKey = tuple[str, str]  # (variant, type)
MAX_TRADE = 8  # instances of a cheaper type one instance may be traded for
BATCHES = 10
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class ModelRun:
    """One simulated run of a model's pool at its planned load."""

    within: dict[str, float]  # class -> share within target
    miss_bound: dict[str, float]  # class -> upper confidence bound of its share missed (batch means)
    rate_qps: dict[GroupKey, float]  # per group: queries/s it served
    utilisation: dict[GroupKey, float]  # per group: busy share of its instances
    max_batch: dict[GroupKey, int]

    @property
    def busy(self) -> float:
        """The busiest group's utilisation."""
        return max(self.utilisation.values(), default=0.0)


@dataclass(frozen=True, slots=True)
class Refinement:
    moves: tuple[str, ...]  # "rm2: -1 r5n.large", "rm2: 1 g4dn.xlarge -> 2 r5n.large" (variant@type)
    simulations: int
    time_s: float


def simulation_profiles(req: PlanRequest, mi: int) -> ProfileSet:
    """Model ``mi``'s profiles under the names the simulator looks up (variant or model, type).
    One model at a time: variant names are unique within a model only."""
    out: dict[tuple[str, str], LatencyProfile] = {}
    for v in req.models[mi].variants:
        for t in req.types:
            if req.profiles.has(v.profile_model, t.name):
                p = req.profiles.get(v.profile_model, t.name)
                out[(v.name, t.name)] = LatencyProfile(v.name, t.name, p.batches, p.means, p.levels, p.quantiles)
    return ProfileSet(out)


def class_rates(req: PlanRequest, mi: int) -> np.ndarray:
    """Queries/s of each of model ``mi``'s classes at the objective's load quantile."""
    m = req.models[mi]
    q = req.objective.load_quantile
    return np.array([m.load[c.name].at(q) if c.name in m.load else 0.0 for c in m.classes])


def simulate_model(
    req: PlanRequest,
    mi: int,
    counts: Mapping[GroupKey, int],
    *,
    queries: int,
    seed: int,
    scale: float = 1.0,
    profiles: ProfileSet | None = None,
) -> ModelRun:
    """Model ``mi`` on ``counts`` replicas per (variant, type), at ``scale`` x its planned load
    (Poisson arrivals, the policy ``kairos``, each query's class drawn by its share of the load)."""
    m = req.models[mi]
    rates = class_rates(req, mi)
    total = float(rates.sum()) * scale
    pool = tuple((kind_of(m.name, v, t), n) for (v, t), n in counts.items() if n > 0)
    if total <= 0 or not pool:
        return ModelRun({c.name: 1.0 for c in m.classes}, {c.name: 0.0 for c in m.classes}, {}, {}, {})
    trace = make_workload(PoissonArrivals(total), m.mix, queries, seed)
    query_class = np.random.default_rng([seed, 7]).choice(len(rates), size=queries, p=rates / rates.sum())
    classes = tuple(ServiceClass(c.name, c.target_ms, c.attainment, c.priority) for c in m.classes)
    accuracy = {v.name: v.accuracy for v in m.variants if v.accuracy is not None and v.name != m.name}
    res = simulate(trace, model=m.name, qos_ms=m.classes[0].target_ms, pool=pool, policy="kairos", seed=seed,
                   profiles=profiles or simulation_profiles(req, mi), classes=classes, query_class=query_class,
                   accuracy=accuracy)
    summary = res.class_summary()
    # a class none of whose queries was measured missed nothing
    within = {c.name: float(summary[c.name]["within_target"]) if summary.get(c.name, {}).get("queries") else 1.0
              for c in m.classes}
    span_ms = max(float(np.nanmax(res.end_ms)), 1e-6)
    rate: dict[GroupKey, float] = {}
    util: dict[GroupKey, float] = {}
    top: dict[GroupKey, int] = {}
    kinds = np.array(res.instance_types)
    for kind, n in pool:
        key = split_kind(m.name, kind)
        mine = np.flatnonzero(kinds == kind)
        on_it = np.isin(res.instance, mine)
        rate[key] = 1000.0 * float(on_it.sum()) / span_ms
        util[key] = float(res.busy_ms[mine].sum()) / (span_ms * n)
        top[key] = int(res.batch[on_it].max()) if on_it.any() else 0
    return ModelRun(within, miss_bounds(res), rate, util, top)


def miss_bounds(res: SimResult) -> dict[str, float]:
    """Per class, the one-sided upper confidence bound (``CONFIDENCE``) of the share missed, by batch
    means over ``BATCHES`` runs of consecutive queries: misses come in bursts, so the queries of one
    run are not independent draws, but consecutive batches of a long run nearly are."""
    missed = ~res.within_qos()[res.measured]
    cls = res.query_class[res.measured]
    t = float(stats.t.ppf(CONFIDENCE, BATCHES - 1))
    out = {}
    for k, c in enumerate(res.classes):
        shares = np.array([float(b_missed[b_cls == k].mean())
                           for b_missed, b_cls in zip(np.array_split(missed, BATCHES), np.array_split(cls, BATCHES), strict=True)
                           if (b_cls == k).any()])
        if shares.size < 2:  # none of its queries measured: nothing missed; too few to bound: assume the worst
            out[c.name] = 0.0 if not (cls == k).any() else 1.0
            continue
        out[c.name] = float(shares.mean() + t * shares.std(ddof=1) / np.sqrt(shares.size))
    return out


def meets(req: PlanRequest, mi: int, run: ModelRun, margin: float = 1.0) -> bool:
    """Every class's bound on its share missed within ``margin`` x the share it may miss, and no group
    over ``max_utilisation``."""
    m = req.models[mi]
    ok = all(run.miss_bound[c.name] <= margin * (1.0 - c.attainment) + 1e-12 for c in m.classes)
    return ok and run.busy <= req.max_utilisation


def refine_model(
    req: PlanRequest,
    mi: int,
    counts: Mapping[GroupKey, int],
    opts: RefineOptions,
    others: Mapping[str, int] | None = None,
    profiles: ProfileSet | None = None,
    deadline: float | None = None,
) -> tuple[dict[GroupKey, int], ModelRun, list[str], int]:
    """A cheaper pool for model ``mi`` that still meets its targets in simulation, by local search
    from ``counts``: take one replica off, or trade one for fewer dollars of another type (a GPU
    for CPUs, say), cheapest result first, until no move of at most ``opts.max_simulations`` trials
    is accepted, or ``deadline`` (``time.monotonic()``) passes. ``others``: instances of each type
    the other models hold (``available``, ``max_units`` and ``budget_per_hour`` bound the sum).
    Returns the counts, their run, the moves made and the number of simulations; a pool that
    misses as planned is left as it is."""
    m = req.models[mi]
    profiles = profiles or simulation_profiles(req, mi)
    others = others or {}
    now = {k: n for k, n in counts.items() if n > 0}
    current = {(c.variant, c.type): c.count for c in req.current if c.model == m.name}
    # a least-cost plan may trade across variants; any other keeps the variants it runs (their accuracy)
    keep = None if req.objective.kind == "min_cost" else {v for v, _t in now}
    groups = [(v.name, t.name) for v in m.variants for t in req.types
              if profiles.has(v.name, t.name) and (keep is None or v.name in keep)]
    fluid = fluid_models(req, mi, profiles)
    load = float(class_rates(req, mi).sum())

    def cost(c: Mapping[GroupKey, int]) -> float:
        """$/hour plus, when the request gives a current pool, the cost of changing it: what the
        least-cost objective counts."""
        total = 0.0
        for key in set(c) | set(current):
            n = c.get(key, 0)
            total += req.type(key[1]).price_per_hour * n
            if req.current:
                total += req.change_cost(key[1], current.get(key, 0), n)
        return total

    def allowed(c: Mapping[GroupKey, int]) -> bool:
        by_type = dict(others)
        for (_v, t), n in c.items():
            by_type[t] = by_type.get(t, 0) + n
        for t, n in by_type.items():
            available = req.type(t).available
            if available is not None and n > available:
                return False
        units = sum(req.type(t).units * n for t, n in by_type.items())
        if req.max_units is not None and units > req.max_units + 1e-9:
            return False
        hourly = sum(req.type(t).price_per_hour * n for t, n in by_type.items())
        if req.budget_per_hour is not None and hourly > req.budget_per_hour + 1e-9:
            return False  # a trade that saves a change cost may cost more per hour
        variants = {v for v, _t in c}
        if len(variants) == 1 and (fm := fluid.get(next(iter(variants)))) is not None:
            # what the pool carries in the fluid limit with no instance over max_utilisation busy
            v = next(iter(variants))
            return fluid_limit(fm, [c.get((v, t), 0) for t in fm.types]).rate * req.max_utilisation >= load
        return True

    def neighbours(c: dict[GroupKey, int]) -> list[tuple[float, dict[GroupKey, int], str]]:
        here, out = cost(c), []
        for key in c:
            fewer = {**c, key: c[key] - 1}
            if sum(fewer.values()) > 0:
                out.append((cost(fewer), fewer, f"{m.name}: -1 {_kind(m.name, key)}"))
            for other in groups:
                if other == key:
                    continue
                for k in range(1, MAX_TRADE + 1):
                    traded = {**fewer, other: fewer.get(other, 0) + k}
                    if cost(traded) >= here - 1e-9:
                        continue  # more of a current type may still cost less (stops saved)
                    out.append((cost(traded), traded, f"{m.name}: 1 {_kind(m.name, key)} -> {k} {_kind(m.name, other)}"))
        kept = [(x, {g: n for g, n in d.items() if n > 0}, why) for x, d, why in out if x < here - 1e-9]
        return sorted((x for x in kept if allowed(x[1])), key=lambda x: x[0])

    def run(c: Mapping[GroupKey, int]) -> ModelRun:
        return simulate_model(req, mi, c, queries=opts.queries, seed=opts.seed, profiles=profiles)

    best = run(now)
    sims, moves = 1, list[str]()
    if not meets(req, mi, best, opts.margin):
        return now, best, moves, sims

    def spent() -> bool:
        return sims >= opts.max_simulations or (deadline is not None and time.monotonic() >= deadline)

    while not spent():
        for _x, trial_counts, why in neighbours(now):
            if spent():
                break
            trial = run(trial_counts)
            sims += 1
            if meets(req, mi, trial, opts.margin):
                now, best = trial_counts, trial
                moves.append(why)
                break
        else:
            break
    return now, best, moves, sims


def _kind(model: str, key: GroupKey) -> str:
    return key[1] if key[0] == model else f"{key[0]}@{key[1]}"


def fluid_models(req: PlanRequest, mi: int, profiles: ProfileSet) -> dict[str, FluidModel]:
    """Per variant of model ``mi``: its fluid model over the types it runs on, at the loosest target."""
    m = req.models[mi]
    sizes, probs = m.mix.pmf()
    loosest = max(c.target_ms for c in m.classes)
    out = {}
    for v in m.variants:
        types = [t.name for t in req.types if profiles.has(v.name, t.name)]
        if types:
            out[v.name] = build_fluid_model(profiles, v.name, types, sizes, probs, loosest)
    return out
