"""A plan request written from a gateway config plus a load: the config's models, classes and
variants, every catalogue type the variants have profiles for, and its pool as the current one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.profiles import ProfileSet


def parse_loads(specs: list[str], config: Config) -> dict[tuple[str, str], float]:
    """``RATE`` (every model's default class), ``MODEL=RATE`` or ``MODEL/CLASS=RATE``."""
    out: dict[tuple[str, str], float] = {}
    for spec in specs:
        where, sep, value = spec.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0 <= rate <= 1e7:
            raise ConfigError(f"--load {spec!r}: expected RATE, MODEL=RATE or MODEL/CLASS=RATE with 0 <= RATE <= 1e7 queries/s")
        if not sep:
            for m in config.models:
                out[(m.name, m.default_class)] = rate
            continue
        model, _, cls = where.partition("/")
        mc = config.model_config(model)
        out[(model, mc.service_class(cls).name if cls else mc.default_class)] = rate
    return out


def request_from_config(
    config: Config,
    loads: Mapping[tuple[str, str], float],
    *,
    objective: Mapping[str, Any],
    mix: str = "production",
    available: Mapping[str, int] | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """The plan request (JSON-ready) with every profile inline, so the file stands alone."""
    profiles: ProfileSet = config.profile_set()
    catalogue = config.catalogue
    assert catalogue is not None
    variant_names = {v for m in config.models for v in m.variant_names}
    used = sorted({t for v in variant_names for t in profiles.types(v) if t in catalogue.types})
    if not used:
        raise ConfigError("no catalogue instance type has a latency profile for the config's models")
    unknown = sorted(set(available or {}) - set(used))
    if unknown:
        raise ConfigError(
            f"--max: {', '.join(map(repr, unknown))} is not a type the plan can use; expected one of {', '.join(used)}"
        )
    types = []
    for name in used:
        t = catalogue.type(name)
        entry: dict[str, Any] = {"name": name, "price_per_hour": t.price_per_hour, "accelerator": t.accelerator}
        if available and name in available:
            entry["available"] = available[name]
        types.append(entry)
    models = []
    for m in config.models:
        variants = []
        for v in m.variant_names:
            body = {t: profiles.get(v, t).to_json() for t in profiles.types(v) if t in used}
            levels = next(iter(profiles.get(v, t).levels.tolist() for t in profiles.types(v) if t in used), None)
            if levels is None:
                raise ConfigError(f"{m.name}: variant {v!r} has no latency profile on a catalogue type")
            variants.append({"name": v, "accuracy": m.accuracy(v), "profiles": {"quantile_levels": levels, "types": body}})
        models.append({
            "name": m.name,
            "batch_mix": mix,
            "variants": variants,
            "classes": [
                {"name": c.name, "target_ms": c.qos_ms, "attainment": min(c.attainment, 0.9999), "priority": c.priority}
                for c in m.classes
            ],
            "load": {c: rate for (model, c), rate in loads.items() if model == m.name},
        })
    current = [
        {"model": m.name, "variant": e.variant or m.name, "type": e.type, "count": e.count}
        for m in config.models for e in m.pool if e.type in used and e.count > 0
    ]
    out: dict[str, Any] = {"types": types, "models": models, "objective": dict(objective), "current": current}
    if budget is not None:
        out["budget_per_hour"] = budget
    return out
