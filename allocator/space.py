"""The search space: which instance types may be rented, at most how many of each, and a budget."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson

from gateway.errors import ConfigError
from gateway.profiles import Catalogue

DEFAULT_SPACE = Path(__file__).parent / "data" / "search_space.json"
# With the whole catalogue there is no per-type maximum in the data; cap what the budget allows.
CATALOGUE_MAX_COUNT = 64


@dataclass(frozen=True, slots=True)
class SearchSpace:
    types: tuple[str, ...]
    max_count: tuple[int, ...]
    prices: tuple[float, ...]  # $/hour, aligned with ``types``
    accelerator: tuple[bool, ...]
    budget: float | None = None  # the space's default budget ($/hour), if it names one

    def __post_init__(self) -> None:
        if not self.types:
            raise ConfigError("search space: expected at least one instance type")
        if len(set(self.types)) != len(self.types):
            raise ConfigError(f"search space: duplicate instance types in {list(self.types)}")

    @property
    def price_array(self) -> np.ndarray:
        return np.asarray(self.prices, dtype=float)

    @property
    def max_array(self) -> np.ndarray:
        return np.asarray(self.max_count, dtype=np.int64)

    def index(self, type_name: str) -> int:
        try:
            return self.types.index(type_name)
        except ValueError:
            raise ConfigError(
                f"instance type {type_name!r} is not in the search space; expected one of: {', '.join(self.types)}"
            ) from None

    def product_size(self) -> int:
        return math.prod(m + 1 for m in self.max_count)

    def with_max(self, overrides: Mapping[str, int]) -> SearchSpace:
        counts = list(self.max_count)
        for name, n in overrides.items():
            if n < 0:
                raise ConfigError(f"--max {name}={n}: expected a count >= 0")
            counts[self.index(name)] = n
        return replace(self, max_count=tuple(counts))

    def capped_by_budget(self, budget: float) -> SearchSpace:
        """No type can appear more often than the budget pays for: a tighter, equivalent space."""
        caps = tuple(min(m, math.floor(budget / p + 1e-9)) for m, p in zip(self.max_count, self.prices, strict=True))
        return replace(self, max_count=caps)


def _space(catalogue: Catalogue, types: list[str], max_count: list[int], budget: float | None) -> SearchSpace:
    items = [catalogue.type(t) for t in types]  # ConfigError names an unknown type
    return SearchSpace(
        types=tuple(types),
        max_count=tuple(int(m) for m in max_count),
        prices=tuple(i.price_per_hour for i in items),
        accelerator=tuple(i.accelerator for i in items),
        budget=budget,
    )


def load_search_space(catalogue: Catalogue, path: Path | None = None) -> SearchSpace:
    """Read a search-space JSON: {"types": [...], "max_count": [...], "budget": 2.5}."""
    path = path or DEFAULT_SPACE
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such search-space file") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    types = raw.get("types") if isinstance(raw, dict) else None
    counts = raw.get("max_count") if isinstance(raw, dict) else None
    if (
        not isinstance(types, list)
        or not isinstance(counts, list)
        or len(types) != len(counts)
        or not all(isinstance(t, str) for t in types)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
    ):
        raise ConfigError(
            f"{path}: expected {{\"types\": [names], \"max_count\": [integers >= 0, one per type]}}"
        )
    budget = raw.get("budget")
    return _space(catalogue, types, counts, float(budget) if isinstance(budget, (int, float)) else None)


def catalogue_space(
    catalogue: Catalogue, budget: float | None = None, only: Collection[str] | None = None
) -> SearchSpace:
    """Every type of the price catalogue (or those of ``only``), each at most
    ``CATALOGUE_MAX_COUNT`` (and what the budget pays)."""
    names = [t for t in catalogue.types if only is None or t in only]
    types = sorted(names, key=lambda t: (not catalogue.types[t].accelerator, t))
    space = _space(catalogue, types, [CATALOGUE_MAX_COUNT] * len(types), None)
    return space.capped_by_budget(budget) if budget is not None else space
