"""What the planner chooses among: per model, batch-size classes of its mix, and groups (one
variant on one instance type) with, per service class, the sizes they may serve and the capacity
curve of n replicas at that class's target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from allocator.planner.capacity import CapacityCurve, ServiceDist, max_loads
from allocator.planner.request import ModelSpec, PlanRequest
from gateway.profiles import LatencyProfile

CLASS_WIDTH = 50  # batch sizes per class at most (classes also split where feasibility changes)
# Quantile levels (and their mass) that stand for a service-time distribution: finer in the tail.
_EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0])
_LEVELS = (_EDGES[1:] + _EDGES[:-1]) / 2
_MASS = np.diff(_EDGES)

_CURVES: dict[tuple[bytes, ...], tuple[ServiceDist, CapacityCurve]] = {}
MAX_CACHED_CURVES = 8192  # past it the shared cache is emptied (a request holds its own)


@dataclass(frozen=True)
class Group:
    model: int  # index into the request's models
    variant: int  # index into the model's variants
    type: str
    service_s: np.ndarray  # (C,) mean service time of each batch class (s); inf where beyond the profile
    allowed: np.ndarray  # (K, C) bool: class k may send batch class c here
    curves: tuple[CapacityCurve | None, ...]  # per class k: None where it sends nothing here
    dists: tuple[ServiceDist | None, ...]

    def curve(self, k: int) -> CapacityCurve:
        curve = self.curves[k]
        if curve is None:
            raise KeyError(f"class {k} sends nothing to {self.type}")
        return curve

    def carries(self, k: int, n: float) -> float:
        """C(n): the offered load n replicas carry at class k's target (0 for none)."""
        return float(self.curve(k).at(n)) if n >= 1 else 0.0


@dataclass(frozen=True)
class ModelTables:
    sizes_top: np.ndarray  # (C,) largest batch size of each class
    mass: np.ndarray  # (C,) probability of each class
    groups: tuple[Group, ...]


def build_tables(req: PlanRequest) -> list[ModelTables]:
    curves = _CurveBatch()
    drafts = [_model_tables(req, i, m, curves) for i, m in enumerate(req.models)]
    curves.resolve()
    for d, m in zip(drafts, req.models, strict=True):
        d.behind_lower_classes(m, curves)
    curves.resolve()
    tables = [d.finish(req.max_utilisation, curves) for d in drafts]
    running = {(c.model, c.variant, c.type) for c in req.current}
    by_accuracy = req if req.objective.kind == "accuracy" else None
    return [ModelTables(t.sizes_top, t.mass, _undominated(t.groups, by_accuracy, req, running)) for t in tables]


def _undominated(
    groups: tuple[Group, ...], by_accuracy: PlanRequest | None, req: PlanRequest, running: set[tuple[str, str, str]]
) -> tuple[Group, ...]:
    """Drop a group when another variant on the same type is at least as fast on every batch class,
    carries at least as much at every class's target, and (when accuracy counts) is as accurate:
    same price, so it can never be the better choice. Fewer integers for the MILP. A group the
    current pool runs stays: keeping it may beat stopping it and starting another."""

    def accuracy(g: Group) -> float:
        assert by_accuracy is not None
        return by_accuracy.models[g.model].variants[g.variant].accuracy or 0.0

    def dominates(a: Group, b: Group) -> bool:
        if a.type != b.type or (by_accuracy is not None and accuracy(a) < accuracy(b)):
            return False
        if (b.allowed & ~a.allowed).any() or (np.nan_to_num(a.service_s, posinf=1e18) > np.nan_to_num(b.service_s, posinf=1e18)).any():
            return False
        return all(cb is None or (ca is not None and (ca.loads >= cb.loads).all()) for ca, cb in zip(a.curves, b.curves, strict=True))

    def runs(g: Group) -> bool:
        m = req.models[g.model]
        return (m.name, m.variants[g.variant].name, g.type) in running

    keep: list[Group] = []
    for i, g in enumerate(groups):
        if runs(g) or not any(
            dominates(h, g) and (not dominates(g, h) or j < i) for j, h in enumerate(groups) if j != i
        ):
            keep.append(g)
    return tuple(keep)


@dataclass
class _Draft:
    """A model's tables with its capacity curves still to compute (all models' in one batch)."""

    sizes_top: np.ndarray
    mass: np.ndarray
    groups: list[tuple[int, int, str, np.ndarray, np.ndarray, list[tuple[bytes, ...] | None]]]

    def behind_lower_classes(self, m: ModelSpec, batch: _CurveBatch) -> None:
        """A class above the lowest one on a group: its curve with the lower classes' work in service."""
        for _mi, _vi, _t, _service, allowed, keys in self.groups:
            present = [k for k in range(len(m.classes)) if keys[k] is not None and allowed[k].any()]
            if not present:
                continue
            lowest = min(present, key=lambda k: (m.classes[k].priority, -m.classes[k].target_ms))
            low_key = keys[lowest]
            assert low_key is not None
            for k in present:
                key = keys[k]
                if m.classes[k].priority > m.classes[lowest].priority and key is not None:
                    keys[k] = batch.behind(key, low_key)

    def finish(self, max_utilisation: float, batch: _CurveBatch) -> ModelTables:
        out = []
        for mi, vi, type_name, service, allowed, keys in self.groups:
            allowed = allowed.copy()
            found = [None if key is None else _capped(batch.get(key), max_utilisation) for key in keys]
            for k, hit in enumerate(found):
                if hit is None or not hit[1].usable:
                    allowed[k] = False
            if allowed.any():
                curves = tuple(hit[1] if hit is not None and allowed[k].any() else None for k, hit in enumerate(found))
                dists = tuple(hit[0] if hit is not None and allowed[k].any() else None for k, hit in enumerate(found))
                out.append(Group(mi, vi, type_name, service, allowed, curves, dists))
        return ModelTables(self.sizes_top, self.mass, tuple(out))


def _capped(hit: tuple[ServiceDist, CapacityCurve], max_utilisation: float) -> tuple[ServiceDist, CapacityCurve]:
    dist, curve = hit
    if max_utilisation >= 1.0:
        return hit
    return dist, CapacityCurve.from_loads(np.minimum(curve.loads, max_utilisation * curve.ns))


class _CurveBatch:
    """Capacity curves asked for, computed together (one vectorised search) and cached by content.
    The batch holds every curve it was asked for until the request is planned: the shared cache
    may be emptied between two ``resolve`` calls (it was, under a request of many curves, and the
    first call's curves were gone: a KeyError for a valid request)."""

    def __init__(self) -> None:
        self.held: dict[tuple[bytes, ...], tuple[ServiceDist, CapacityCurve]] = {}
        self.pending: dict[tuple[bytes, ...], tuple[ServiceDist, float, float]] = {}
        self.behind_of: dict[tuple[bytes, ...], tuple[ServiceDist, np.ndarray]] = {}
        self.dists: dict[tuple[bytes, bytes], ServiceDist] = {}

    def behind(self, key: tuple[bytes, ...], low_key: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """The curve of ``key``'s class served ahead of ``low_key``'s (both resolved)."""
        new = (*key, b"behind", *low_key)
        if self._cached(new) is None and new not in self.pending:
            dist, target_s, attainment = self._spec(key)
            low_dist, low_curve = self.get(low_key)
            self.pending[new] = (dist, target_s, attainment)
            self.behind_of[new] = (low_dist, low_curve.loads)
        return new

    def get(self, key: tuple[bytes, ...]) -> tuple[ServiceDist, CapacityCurve]:
        """A curve this batch was asked for, once resolved."""
        return self.held[key]

    def _cached(self, key: tuple[bytes, ...]) -> tuple[ServiceDist, CapacityCurve] | None:
        hit = self.held.get(key) or _CURVES.get(key)
        if hit is not None:
            self.held[key] = hit
        return hit

    def _spec(self, key: tuple[bytes, ...]) -> tuple[ServiceDist, float, float]:
        dist, _ = self.get(key)
        return dist, float(np.frombuffer(key[1])[0]) / 1000.0, float(np.frombuffer(key[2])[0])

    def want(self, prof: LatencyProfile, sizes: np.ndarray, probs: np.ndarray, target_ms: float, attainment: float
             ) -> tuple[bytes, ...]:
        # Keyed by content: requests build their own profile objects.
        shape = hashlib.sha1(prof.batches.tobytes() + prof.levels.tobytes() + prof.quantiles.tobytes()).digest()
        mix = hashlib.sha1(sizes.tobytes() + probs.tobytes()).digest()
        key = (shape, np.float64(target_ms).tobytes(), np.float64(attainment).tobytes(), mix)
        if self._cached(key) is None and key not in self.pending:
            # Classes often allow the same sizes: one distribution per (profile, mix).
            dist = self.dists.get((shape, mix))
            if dist is None:
                values = prof.quantile_table(sizes, _LEVELS) / 1000.0  # (S, L)
                weights = probs[:, None] * _MASS[None, :]
                dist = self.dists[(shape, mix)] = ServiceDist.compressed(values.ravel(), weights.ravel())
            self.pending[key] = (dist, target_ms / 1000.0, attainment)
        return key

    def resolve(self) -> None:
        if not self.pending:
            return
        if len(_CURVES) + len(self.pending) > MAX_CACHED_CURVES:
            _CURVES.clear()
        items = list(self.pending.items())
        loads = max_loads([d for _, (d, _, _) in items], np.array([t for _, (_, t, _) in items]),
                          np.array([a for _, (_, _, a) in items]), behind=[self.behind_of.get(k) for k, _ in items])
        for (key, (dist, _, _)), row in zip(items, loads, strict=True):
            _CURVES[key] = self.held[key] = (dist, CapacityCurve.from_loads(row))
        self.pending.clear()
        self.behind_of.clear()


def _model_tables(req: PlanRequest, mi: int, m: ModelSpec, curve_batch: _CurveBatch) -> _Draft:
    sizes, probs = m.mix.pmf()
    keep = probs > 0
    sizes, probs = sizes[keep], probs[keep] / probs[keep].sum()
    kinds = [(vi, t.name, req.profiles.get(v.profile_model, t.name))
             for vi, v in enumerate(m.variants) for t in req.types if req.profiles.has(v.profile_model, t.name)]
    # ok[j][k]: (S,) sizes of the mix kind j serves within class k's target at its attainment, idle.
    ok = [[_feasible(p, sizes, c.target_ms, c.attainment) for c in m.classes] for _, _, p in kinds]
    starts = np.ones(len(sizes), dtype=bool)
    starts[1:] = (sizes[1:] - 1) // CLASS_WIDTH != (sizes[:-1] - 1) // CLASS_WIDTH
    for row in ok:
        for f in row:
            starts[1:] |= f[1:] != f[:-1]
    cls = np.cumsum(starts) - 1
    n_cls = int(cls[-1]) + 1
    mass = np.bincount(cls, weights=probs, minlength=n_cls)
    top = np.zeros(n_cls, dtype=np.int64)
    np.maximum.at(top, cls, sizes)
    groups: list[tuple[int, int, str, np.ndarray, np.ndarray, list[tuple[bytes, ...] | None]]] = []
    for (vi, type_name, prof), row in zip(kinds, ok, strict=True):
        inside = sizes <= prof.max_batch
        means = np.full(len(sizes), np.inf)
        means[inside] = prof.means_for(sizes[inside]) / 1000.0
        service = np.where(
            np.bincount(cls, weights=probs * ~inside, minlength=n_cls) > 0,
            np.inf,
            np.bincount(cls, weights=probs * np.where(inside, means, 0.0), minlength=n_cls) / mass,
        )
        allowed = np.array([f[starts] for f in row]).reshape(len(m.classes), n_cls)
        keys = [
            curve_batch.want(prof, sizes[row[k]], probs[row[k]], c.target_ms, c.attainment) if allowed[k].any() else None
            for k, c in enumerate(m.classes)
        ]
        if allowed.any():
            groups.append((mi, vi, type_name, service, allowed, keys))
    return _Draft(top, mass, groups)


def _feasible(prof: LatencyProfile, sizes: np.ndarray, target_ms: float, attainment: float) -> np.ndarray:
    """(S,) sizes whose service time alone meets the target at the attainment."""
    out = np.zeros(len(sizes), dtype=bool)
    inside = sizes <= prof.max_batch
    out[inside] = prof.quantiles_for(sizes[inside], attainment) <= target_ms
    return out
