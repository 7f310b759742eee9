"""Pool specifications for the simulator: ``g4dn.xlarge=1,r5n.large=13`` and config pools."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import ConfigError
from gateway.profiles import Catalogue, ProfileSet

PoolSpec = tuple[tuple[str, int], ...]  # (instance type, count) in pool order


def parse_pool(spec: str) -> PoolSpec:
    """Parse ``TYPE=COUNT[,TYPE=COUNT...]``; a type may not repeat and the pool may not be empty."""
    entries: list[tuple[str, int]] = []
    for part in spec.split(","):
        name, sep, count = part.strip().partition("=")
        name = name.strip()
        try:
            n = int(count)
        except ValueError:
            n = -1
        if not sep or not name or n < 0:
            raise ConfigError(f"pool {spec!r}: expected TYPE=COUNT[,TYPE=COUNT...], e.g. g4dn.xlarge=1,r5n.large=13")
        if any(name == t for t, _ in entries):
            raise ConfigError(f"pool {spec!r}: instance type {name!r} appears twice")
        entries.append((name, n))
    pool = tuple(entries)
    if pool_size(pool) == 0:
        raise ConfigError(f"pool {spec!r}: expected at least one instance")
    return pool


def pool_size(pool: PoolSpec) -> int:
    return sum(n for _, n in pool)


def format_pool(pool: PoolSpec) -> str:
    return ",".join(f"{t}={n}" for t, n in pool if n > 0)


def expand_pool(pool: PoolSpec) -> list[tuple[str, str]]:
    """(instance name, type) for each instance, in pool order: ``r5n.large-0``, ``r5n.large-1``..."""
    return [(f"{t}-{k}", t) for t, n in pool for k in range(n)]


def pool_types(pool: PoolSpec) -> list[str]:
    """Distinct types with at least one instance, in pool order."""
    return [t for t, n in pool if n > 0]


def pool_cost(pool: PoolSpec, catalogue: Catalogue) -> float:
    """$/hour of the pool (a kind ``VARIANT/TYPE`` costs its type's price)."""
    return sum(catalogue.type(t.rpartition("/")[2]).price_per_hour * n for t, n in pool)


def check_pool(pool: Iterable[tuple[str, int]], model: str, profiles: ProfileSet, catalogue: Catalogue) -> None:
    """Every type must be in the catalogue and have a latency profile for ``model``."""
    if model not in profiles.models():
        raise ConfigError(f"model {model!r}: no latency profiles; expected one of {', '.join(profiles.models())}")
    for kind, n in pool:
        variant, _, t = kind.rpartition("/")
        catalogue.type(t)
        if n > 0 and t not in profiles.types(variant or model):
            raise ConfigError(
                f"instance type {t!r} has no latency profile for {variant or model}; "
                f"expected one of {', '.join(profiles.types(variant or model))}"
            )
