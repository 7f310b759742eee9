"""A plan request: what exists (instance types), what must be served (models, variants, classes,
load), and what to optimise. Parsed from JSON with every field checked and bounded; a bad field is a
``PlanRequestError`` naming it (format: docs/planner.md)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.config import DEFAULT_ATTAINMENT, check_model_name
from gateway.errors import ConfigError, ProfileError
from gateway.fields import REQUIRED, Fields, clipped, kind, shown
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.profiles.profile import parse_profile_file
from gateway.workload import BatchMix, parse_batch_mix
from gateway.workload.batch_mix import MAX_BATCH

MAX_TYPES = 64
MAX_MODELS = 200
MAX_VARIANTS = 16
MAX_CLASSES = 8
MAX_RATE_QPS = 1e7
MIN_PLANNED_QPS = 1e-3
MAX_TARGET_MS = 3.6e6
MAX_COUNT = 100_000
MAX_PRICE = 1e6
MAX_QUANTILES = 32
MAX_REFINE_QUERIES = 200_000
DEFAULT_REFINE_QUERIES = 10_000
DEFAULT_REFINE_MARGIN = 0.75
DEFAULT_REFINE_SIMULATIONS = 30
OBJECTIVES = ("min_cost", "accuracy", "utility")
# Headroom no queueing formula sees: the dispatcher's reordering under heavy load, profile error.
DEFAULT_MAX_UTILISATION = 0.9


class PlanRequestError(ConfigError):
    """A plan request is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class TypeSpec:
    name: str
    price_per_hour: float
    accelerator: bool = False
    available: int | None = None  # None: unlimited
    startup_s: float = 60.0
    units: float = 1.0  # what one instance takes of the cluster cap (CPUs, say)


@dataclass(frozen=True, slots=True)
class ClassSpec:
    name: str
    target_ms: float
    attainment: float = DEFAULT_ATTAINMENT
    priority: int = 0
    utility_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class VariantSpec:
    name: str
    accuracy: float | None
    profile_model: str  # the model name its profiles are keyed by in the request's ProfileSet


@dataclass(frozen=True, slots=True)
class Load:
    """Queries/s: one rate, or quantiles of a forecast (level -> rate, increasing)."""

    levels: tuple[float, ...]
    rates: tuple[float, ...]

    def at(self, quantile: float) -> float:
        if len(self.rates) == 1:
            return self.rates[0]
        return float(np.interp(quantile, self.levels, self.rates))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    variants: tuple[VariantSpec, ...]
    classes: tuple[ClassSpec, ...]
    load: dict[str, Load]  # class name -> load; absent: 0
    mix: BatchMix
    has_variants: bool = True  # False: the model is its own one variant


@dataclass(frozen=True, slots=True)
class Objective:
    kind: str  # one of OBJECTIVES
    cost_weight: float = 0.0  # accuracy: accuracy points per $/hour; utility: tie-break on cost
    fairness: float = 0.0  # utility: 0 total (request-weighted), 1 the worst (model, class), between a mix
    allow_drops: bool = True  # utility only: min_cost and accuracy must carry the whole load
    load_quantile: float = 0.9  # which quantile of a forecast to plan for


@dataclass(frozen=True, slots=True)
class RefineOptions:
    """Trim a least-cost plan in the simulator (``allocator.planner.refine``)."""

    queries: int = DEFAULT_REFINE_QUERIES  # simulated queries per trial
    seed: int = 0
    margin: float = DEFAULT_REFINE_MARGIN  # a class's bound on its misses must stay within margin x what it may miss
    max_simulations: int = DEFAULT_REFINE_SIMULATIONS  # per model


@dataclass(frozen=True, slots=True)
class Current:
    model: str
    variant: str
    type: str
    count: int


@dataclass(frozen=True)
class PlanRequest:
    types: tuple[TypeSpec, ...]
    models: tuple[ModelSpec, ...]
    objective: Objective
    profiles: ProfileSet
    budget_per_hour: float | None = None
    max_units: float | None = None
    current: tuple[Current, ...] = ()
    start_cost: float | None = None  # $ per instance started; None: its price for its start-up time
    stop_cost: float = 0.0
    time_limit_s: float = 10.0
    max_utilisation: float = DEFAULT_MAX_UTILISATION
    refine: RefineOptions | None = None

    def type(self, name: str) -> TypeSpec:
        return next(t for t in self.types if t.name == name)

    def start_cost_of(self, type_name: str) -> float:
        """$ to start one instance: ``change_cost.start``, or its price for its start-up time."""
        if self.start_cost is not None:
            return self.start_cost
        t = self.type(type_name)
        return t.price_per_hour * t.startup_s / 3600

    def change_cost(self, type_name: str, before: int, after: int) -> float:
        """$ to go from ``before`` to ``after`` instances of a type (starts and stops)."""
        return self.start_cost_of(type_name) * max(after - before, 0) + self.stop_cost * max(before - after, 0)


def parse_plan_request(raw: Any, shipped: ProfileSet) -> PlanRequest:
    """The request in ``raw`` (parsed JSON). Profiles named by a variant come from ``shipped`` unless
    the variant carries its own (``profiles``, the profile-file format)."""
    try:
        return _parse(raw, shipped)
    except PlanRequestError:
        raise
    except ConfigError as exc:
        raise PlanRequestError(str(exc)) from None


def _parse(raw: Any, shipped: ProfileSet) -> PlanRequest:
    if not isinstance(raw, dict):
        raise PlanRequestError(f"request: expected a JSON object, got {kind(raw)}")
    top = Fields(raw, "")
    top.unknown({"types", "models", "objective", "budget_per_hour", "max_units", "current", "change_cost", "time_limit_s",
                 "max_utilisation", "refine"})
    types = _types(top.get("types", REQUIRED))
    type_names = tuple(t.name for t in types)
    profiles: dict[tuple[str, str], LatencyProfile] = {}
    models = _models(top.get("models", REQUIRED), type_names, shipped, profiles)
    objective = _objective(top.get("objective", {"kind": "min_cost"}))
    if objective.kind == "accuracy":
        for i, m in enumerate(models):
            for j, v in enumerate(m.variants):
                if v.accuracy is None:
                    where = f"models[{i}].variants[{j}]" if m.has_variants else f"models[{i}]"
                    raise PlanRequestError(f"{where}.accuracy: missing; the accuracy objective needs every variant's")
    q = objective.load_quantile
    for i, m in enumerate(models):
        for name, load in m.load.items():
            if len(load.levels) > 1 and not load.levels[0] <= q <= load.levels[-1]:
                raise PlanRequestError(
                    f"models[{i}].load.{name}: quantiles {load.levels[0]:g} to {load.levels[-1]:g} do not reach "
                    f"objective.load_quantile {q:g}; give a level at or beyond it (no extrapolation)")
    change = Fields(top.get("change_cost", {}), "change_cost")
    change.unknown({"start", "stop"})
    start = change.raw.get("start")
    budget = top.raw.get("budget_per_hour")
    units = top.raw.get("max_units")
    return PlanRequest(
        types=types,
        models=models,
        objective=objective,
        profiles=ProfileSet(profiles),
        budget_per_hour=None if budget is None else top.float("budget_per_hour", hi=MAX_PRICE * MAX_COUNT),
        max_units=None if units is None else top.float("max_units", hi=1e9),
        current=_current(top.get("current", []), models, type_names),
        start_cost=None if start is None else change.float("start", positive=False, lo=0, hi=MAX_PRICE),
        stop_cost=change.float("stop", 0.0, positive=False, lo=0, hi=MAX_PRICE),
        time_limit_s=top.float("time_limit_s", 10.0, hi=600),
        max_utilisation=top.float("max_utilisation", DEFAULT_MAX_UTILISATION, lo=0.05, hi=1.0),
        refine=_refine(top.get("refine", False)),
    )


def _refine(raw: Any) -> RefineOptions | None:
    if isinstance(raw, bool):
        return RefineOptions() if raw else None
    if not isinstance(raw, dict):
        raise PlanRequestError(f"refine: expected true, false or an object {{queries, seed, margin, max_simulations}}, got {kind(raw)}")
    f = Fields(raw, "refine")
    f.unknown({"queries", "seed", "margin", "max_simulations"})
    return RefineOptions(
        queries=f.int("queries", DEFAULT_REFINE_QUERIES, lo=500, hi=MAX_REFINE_QUERIES),
        seed=f.int("seed", 0, lo=0, hi=2**31 - 1),
        margin=f.float("margin", DEFAULT_REFINE_MARGIN, lo=0.05, hi=1.0),
        max_simulations=f.int("max_simulations", DEFAULT_REFINE_SIMULATIONS, lo=1, hi=1000),
    )


def _list(raw: Any, path: str, most: int, what: str) -> list[Any]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= most:
        raise PlanRequestError(f"{path}: expected a list of 1 to {most} {what}, got {kind(raw)}")
    return raw


def _unique(names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise PlanRequestError(f"{path}: {what} {n!r} is listed twice")
        seen.add(n)


def _types(raw: Any) -> tuple[TypeSpec, ...]:
    out = []
    for i, item in enumerate(_list(raw, "types", MAX_TYPES, "instance types")):
        f = Fields(item, f"types[{i}]")
        f.unknown({"name", "price_per_hour", "accelerator", "available", "startup_s", "units"})
        available = f.raw.get("available")
        out.append(
            TypeSpec(
                name=check_model_name(f.str("name"), f.name("name")),
                price_per_hour=f.float("price_per_hour", positive=False, lo=0, hi=MAX_PRICE),
                accelerator=f.bool("accelerator", False),
                available=None if available is None else f.int("available", lo=0, hi=MAX_COUNT),
                startup_s=f.float("startup_s", 60.0, positive=False, lo=0, hi=86400),
                units=f.float("units", 1.0, hi=1e6),
            )
        )
    _unique([t.name for t in out], "types", "instance type")
    return tuple(out)


def _models(
    raw: Any, type_names: tuple[str, ...], shipped: ProfileSet, profiles: dict[tuple[str, str], LatencyProfile]
) -> tuple[ModelSpec, ...]:
    out = []
    for i, item in enumerate(_list(raw, "models", MAX_MODELS, "models")):
        f = Fields(item, f"models[{i}]")
        f.unknown({"name", "variants", "classes", "load", "batch_mix", "accuracy", "profile", "profiles"})
        name = check_model_name(f.str("name"), f.name("name"))
        where = f"models[{i}]"
        if "variants" in f.raw:
            if any(k in f.raw for k in ("accuracy", "profile", "profiles")):
                raise PlanRequestError(f"{where}: give accuracy and profiles per variant when it has variants")
            variants = [
                _variant(v, f"{where}.variants[{j}]", type_names, shipped, profiles)
                for j, v in enumerate(_list(f.raw["variants"], f"{where}.variants", MAX_VARIANTS, "variants"))
            ]
        else:  # the model is its own one variant
            variants = [_variant({k: v for k, v in f.raw.items() if k in ("name", "accuracy", "profile", "profiles")},
                                 where, type_names, shipped, profiles)]
        _unique([v.name for v in variants], f"{where}.variants", "variant")
        classes = _classes(f.get("classes", REQUIRED), f"{where}.classes")
        mix = _mix(f.get("batch_mix", "production"), f"{where}.batch_mix")
        out.append(ModelSpec(name, tuple(variants), classes, _loads(f.get("load", REQUIRED), f"{where}.load", classes), mix,
                             has_variants="variants" in f.raw))
    _unique([m.name for m in out], "models", "model")
    return tuple(out)


def _variant(
    raw: Any, path: str, type_names: tuple[str, ...], shipped: ProfileSet, profiles: dict[tuple[str, str], LatencyProfile]
) -> VariantSpec:
    f = Fields(raw, path)
    f.unknown({"name", "accuracy", "profile", "profiles"})
    name = check_model_name(f.str("name"), f.name("name"))
    accuracy = None if f.raw.get("accuracy") is None else f.float("accuracy", positive=False, lo=0, hi=1)
    key = f"{path}:{name}"  # a private key for inline profiles: never collides with a shipped name
    if "profiles" in f.raw:
        if "profile" in f.raw:
            raise PlanRequestError(f"{path}: give profile (shipped) or profiles (inline), not both")
        doc = f.raw["profiles"]
        try:
            found = parse_profile_file({"model": key, **doc} if isinstance(doc, dict) else doc)
        except ProfileError as exc:
            raise PlanRequestError(f"{path}.profiles: {exc}") from None
    else:
        source = f.str("profile", name)
        if source not in shipped.models():
            raise PlanRequestError(
                f"{path}.profile: no shipped profiles for {source!r}; known: {', '.join(shipped.models())} "
                "(or give them inline as profiles)"
            )
        found = [LatencyProfile(key, p.instance_type, p.batches, p.means, p.levels, p.quantiles)
                 for p in (shipped.get(source, t) for t in shipped.types(source))]
    usable = [p for p in found if p.instance_type in type_names]
    if not usable:
        raise PlanRequestError(
            f"{path}: no latency profile on any listed type ({', '.join(type_names)}); profiled on: "
            f"{', '.join(sorted(p.instance_type for p in found))}"
        )
    for p in usable:
        profiles[(key, p.instance_type)] = p
    return VariantSpec(name, accuracy, key)


def _classes(raw: Any, path: str) -> tuple[ClassSpec, ...]:
    out = []
    for i, item in enumerate(_list(raw, path, MAX_CLASSES, "service classes")):
        f = Fields(item, f"{path}[{i}]")
        f.unknown({"name", "target_ms", "attainment", "priority", "utility_weight"})
        out.append(
            ClassSpec(
                name=check_model_name(f.str("name"), f.name("name")),
                target_ms=f.float("target_ms", hi=MAX_TARGET_MS),
                attainment=f.float("attainment", DEFAULT_ATTAINMENT, hi=0.9999),
                priority=f.int("priority", 0, lo=-1000, hi=1000),
                utility_weight=f.float("utility_weight", 1.0, positive=False, lo=0, hi=1e6),
            )
        )
    _unique([c.name for c in out], path, "class")
    return tuple(out)


def _loads(raw: Any, path: str, classes: tuple[ClassSpec, ...]) -> dict[str, Load]:
    names = [c.name for c in classes]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if len(classes) != 1:
            raise PlanRequestError(f"{path}: the model has several classes; give an object of class -> load")
        raw = {names[0]: raw}
    f = Fields(raw, path)
    f.unknown(set(names))
    out = {}
    for name, value in f.raw.items():
        where = f"{path}.{name}"
        if isinstance(value, dict):
            g = Fields(value, where)
            g.unknown({"quantiles"})
            q = Fields(g.get("quantiles", REQUIRED), f"{where}.quantiles")
            if not 1 <= len(q.raw) <= MAX_QUANTILES:
                raise PlanRequestError(f"{where}.quantiles: expected 1 to {MAX_QUANTILES} levels")
            pairs = []
            for level in q.raw:
                try:
                    if not level.isascii():  # float() reads other scripts' digits
                        raise ValueError
                    lv = float(level)
                except ValueError:
                    raise PlanRequestError(f"{where}.quantiles.{clipped(level)}: expected a level in (0, 1) as the key") from None
                if not 0.0 < lv < 1.0:
                    raise PlanRequestError(f"{where}.quantiles.{clipped(level)}: expected a level in (0, 1) as the key")
                pairs.append((lv, _planned(q.float(level, positive=False, lo=0, hi=MAX_RATE_QPS))))
            pairs.sort()
            if len({p[0] for p in pairs}) != len(pairs):
                raise PlanRequestError(f"{where}.quantiles: a level is given twice")
            if any(b[1] < a[1] for a, b in itertools.pairwise(pairs)):
                raise PlanRequestError(f"{where}.quantiles: expected rates that do not fall as the level rises")
            out[name] = Load(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
        else:
            out[name] = Load((0.5,), (_planned(f.float(name, positive=False, lo=0, hi=MAX_RATE_QPS)),))
    return out


def _planned(rate: float) -> float:
    """A positive load below MIN_PLANNED_QPS is planned as that: any load takes a replica, and
    the solver cannot tell a smaller one from none (1e-7 q/s got a plan of nothing)."""
    return rate if rate == 0.0 else max(rate, MIN_PLANNED_QPS)


def _mix(raw: Any, path: str) -> BatchMix:
    if not isinstance(raw, str):
        raise PlanRequestError(f"{path}: expected 'production', 'fixed:N' or 'uniform:LO-HI', got {kind(raw)}")
    try:
        mix = parse_batch_mix(raw)
    except ConfigError as exc:
        raise PlanRequestError(f"{path}: {exc}") from None
    assert mix.pmf()[0].max() <= MAX_BATCH
    return mix


def _objective(raw: Any) -> Objective:
    f = Fields(raw, "objective")
    f.unknown({"kind", "cost_weight", "fairness", "allow_drops", "load_quantile"})
    return Objective(
        kind=f.str("kind", choices=OBJECTIVES),
        cost_weight=f.float("cost_weight", 0.0, positive=False, lo=0, hi=1e6),
        fairness=f.float("fairness", 0.0, positive=False, lo=0, hi=1),
        allow_drops=f.bool("allow_drops", True),
        load_quantile=f.float("load_quantile", 0.9, lo=0.01, hi=0.99),
    )


def _current(raw: Any, models: tuple[ModelSpec, ...], type_names: tuple[str, ...]) -> tuple[Current, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_COUNT:
        raise PlanRequestError(f"current: expected a list of {{model, variant, type, count}}, got {kind(raw)}")
    out: list[Current] = []
    for i, item in enumerate(raw):
        f = Fields(item, f"current[{i}]")
        f.unknown({"model", "variant", "type", "count"})
        model = f.str("model")
        spec = next((m for m in models if m.name == model), None)
        if spec is None:
            raise PlanRequestError(f"current[{i}].model: {shown(model)} is not among the request's models")
        variant = f.str("variant", model)
        if variant not in [v.name for v in spec.variants]:
            raise PlanRequestError(f"current[{i}].variant: {model} has no variant {shown(variant)}")
        type_name = f.str("type", choices=type_names)
        if any((c.model, c.variant, c.type) == (model, variant, type_name) for c in out):
            raise PlanRequestError(f"current[{i}]: {model}/{variant} on {type_name} is listed twice")
        out.append(Current(model, variant, type_name, f.int("count", lo=0, hi=MAX_COUNT)))
    return tuple(out)
