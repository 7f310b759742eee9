"""What the planner chooses among: per model, batch-size classes of its mix, and groups (one
variant on one instance type) with, per service class, the sizes they may serve and the capacity
curve of n replicas at that class's target."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from allocator.planner.capacity import CapacityCurve, ServiceDist
from allocator.planner.request import ModelSpec, PlanRequest
from gateway.profiles import LatencyProfile

CLASS_WIDTH = 50  # batch sizes per class at most (classes also split where feasibility changes)
# Quantile levels (and their mass) that stand for a service-time distribution: finer in the tail.
_EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0])
_LEVELS = (_EDGES[1:] + _EDGES[:-1]) / 2
_MASS = np.diff(_EDGES)

_CURVES: dict[tuple[bytes, float, float, bytes], tuple[ServiceDist, CapacityCurve]] = {}


@dataclass(frozen=True)
class Group:
    model: int  # index into the request's models
    variant: int  # index into the model's variants
    type: str
    service_s: np.ndarray  # (C,) mean service time of each batch class (s); inf where beyond the profile
    allowed: np.ndarray  # (K, C) bool: class k may send batch class c here
    curves: tuple[CapacityCurve | None, ...]  # per class k: None where it sends nothing here
    dists: tuple[ServiceDist | None, ...]


@dataclass(frozen=True)
class ModelTables:
    sizes_top: np.ndarray  # (C,) largest batch size of each class
    mass: np.ndarray  # (C,) probability of each class
    groups: tuple[Group, ...]


def build_tables(req: PlanRequest) -> list[ModelTables]:
    return [_model_tables(req, i, m) for i, m in enumerate(req.models)]


def _model_tables(req: PlanRequest, mi: int, m: ModelSpec) -> ModelTables:
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
    groups = []
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
        curves: list[CapacityCurve | None] = []
        dists: list[ServiceDist | None] = []
        for k, c in enumerate(m.classes):
            if not allowed[k].any():
                curves.append(None)
                dists.append(None)
                continue
            dist, curve = _curve(prof, sizes[row[k]], probs[row[k]], c.target_ms, c.attainment)
            usable = curve.usable
            curves.append(curve if usable else None)
            dists.append(dist if usable else None)
            if not usable:
                allowed[k] = False
        if allowed.any():
            groups.append(Group(mi, vi, type_name, service, allowed, tuple(curves), tuple(dists)))
    return ModelTables(top, mass, tuple(groups))


def _feasible(prof: LatencyProfile, sizes: np.ndarray, target_ms: float, attainment: float) -> np.ndarray:
    """(S,) sizes whose service time alone meets the target at the attainment."""
    out = np.zeros(len(sizes), dtype=bool)
    inside = sizes <= prof.max_batch
    out[inside] = prof.quantiles_for(sizes[inside], attainment) <= target_ms
    return out


def _curve(
    prof: LatencyProfile, sizes: np.ndarray, probs: np.ndarray, target_ms: float, attainment: float
) -> tuple[ServiceDist, CapacityCurve]:
    # Keyed by content: requests build their own profile objects.
    shape = hashlib.sha1(prof.batches.tobytes() + prof.levels.tobytes() + prof.quantiles.tobytes()).digest()
    key = (shape, target_ms, attainment, hashlib.sha1(sizes.tobytes() + probs.tobytes()).digest())
    hit = _CURVES.get(key)
    if hit is None:
        values = np.stack([prof.quantiles_for(sizes, q) for q in _LEVELS], axis=1) / 1000.0  # (S, L)
        weights = probs[:, None] * _MASS[None, :]
        dist = ServiceDist.compressed(values.ravel(), weights.ravel())
        hit = (dist, CapacityCurve.build(dist, target_ms / 1000.0, attainment))
        if len(_CURVES) > 4096:
            _CURVES.clear()
        _CURVES[key] = hit
    return hit


def service_quantile(prof: LatencyProfile, size: int, attainment: float) -> float:
    return float(prof.quantiles_for(np.array([size]), attainment)[0])
