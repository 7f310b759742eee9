"""Several models on the virtual clock, as one gateway serves them: each model with its own
dispatcher (policy, estimator) on its own pool, its classes and variants from the config.

The models share nothing at run time (an instance serves one model), so each runs as its own
``simulate``; what they share is the plan that sized their pools (the allocator's concern).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gateway.config import Config, ModelConfig
from gateway.dispatch import OverloadControl
from gateway.profiles import ProfileSet
from gateway.sim.engine import simulate
from gateway.sim.result import SimResult
from gateway.variants import kind_of
from gateway.workload import QueryTrace


def model_pool(model: ModelConfig) -> tuple[tuple[str, int], ...]:
    """The model's pool as (kind, count): a variant's instances as ``VARIANT/TYPE``."""
    counts: dict[str, int] = {}
    for e in model.pool:
        kind = kind_of(model.name, e.variant, e.type)
        counts[kind] = counts.get(kind, 0) + e.count
    return tuple(counts.items())


def simulate_models(
    config: Config,
    traces: Mapping[str, QueryTrace],
    *,
    query_class: Mapping[str, np.ndarray] | None = None,
    policy: str | None = None,
    seed: int = 0,
    profiles: ProfileSet | None = None,
    shed: bool = True,
) -> dict[str, SimResult]:
    """One run per model of ``traces`` (model name -> its queries). ``query_class``: per model,
    each query's index into that model's classes (default: all in its default class). ``shed``:
    the live gateway's shedding and admission (``gateway.late_queries`` "shed")."""
    out = {}
    for name, trace in traces.items():
        model = config.model_config(name)
        classes = model.classes
        idx = (query_class or {}).get(name)
        if idx is None:
            default = [c.name for c in classes].index(model.default_class)
            idx = np.full(len(trace), default, dtype=np.int64)
        out[name] = simulate(
            trace,
            model=name,
            qos_ms=model.qos_ms,
            pool=model_pool(model),
            policy=policy or config.gateway.policy,
            seed=seed,
            depth=config.gateway.depth_per_instance,
            profiles=profiles or config.profile_set(),
            overload=OverloadControl.for_mode("shed", model.qos_ms) if shed else None,
            classes=classes,
            query_class=idx,
            accuracy={v.name: v.accuracy for v in model.variants if v.accuracy is not None},
        )
    return out
