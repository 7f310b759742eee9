"""One allocation problem: a model, its QoS, a batch mix and a search space, with everything
derived from them (per-type summaries, the paper's bound tables, the fluid model)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allocator.bound import PaperBound
from allocator.fluid import FluidModel, build_fluid_model
from allocator.scaled import ScaledFrom, with_scaled_profiles
from allocator.space import SearchSpace
from allocator.summary import MixOnGrid, TypeSummary, summarise
from gateway.errors import ConfigError
from gateway.profiles import Catalogue, ProfileSet
from gateway.workload import BatchMix, ProductionMix

# The MILP's classes span 10 batch sizes (100 classes, not 1000): ~10x fewer variables. Coarser
# classes can only lower a pool's limit a little; every reported limit is re-solved exactly.
MILP_CLASS_WIDTH = 10


@dataclass(frozen=True)
class Problem:
    model: str
    qos_ms: float
    space: SearchSpace
    profiles: ProfileSet
    summaries: dict[str, TypeSummary]
    bound: PaperBound
    fluid: FluidModel  # one class per batch size: exact
    fluid_coarse: FluidModel  # classes of MILP_CLASS_WIDTH sizes: what the MILP searches with
    scaled: tuple[ScaledFrom, ...]

    def notes(self) -> list[str]:
        return [s.note() for s in self.scaled]


def build_problem(
    model: str,
    space: SearchSpace,
    profiles: ProfileSet,
    catalogue: Catalogue,
    qos_ms: float | None = None,
    mix: BatchMix | None = None,
) -> Problem:
    if model not in profiles.models():
        raise ConfigError(f"unknown model {model!r}; expected one of: {', '.join(profiles.models())}")
    qos = catalogue.qos(model) if qos_ms is None else qos_ms
    if not qos > 0:
        raise ConfigError(f"QoS must be a positive number of milliseconds, got {qos}")
    profiles, scaled = with_scaled_profiles(profiles, catalogue, model, space.types)
    mix = mix or ProductionMix()
    sizes, probs = mix.pmf()
    largest = min(profiles.get(model, t).max_batch for t in space.types)
    if int(sizes[probs > 0].max()) > largest:
        short = min(space.types, key=lambda t: profiles.get(model, t).max_batch)
        raise ConfigError(
            f"the batch mix ({mix.name}) reaches batch {int(sizes[probs > 0].max())}, but the profile of {model} on "
            f"{short} stops at {largest}: give --mix uniform:1-{largest} (or fixed:N), or profile larger batches"
        )
    fluid = build_fluid_model(profiles, model, space.types, sizes, probs, qos)
    bad = fluid.unservable_from()
    if bad is not None:
        fastest = min(space.types, key=lambda t: profiles.get(model, t).mean(bad))
        best = profiles.get(model, fastest).mean(bad)
        raise ConfigError(
            f"QoS {qos:g} ms is out of reach for {model}: no instance type in the search space serves batch "
            f"size {bad} within it (fastest: {fastest} at {best:.1f} ms mean)"
        )
    summaries = summarise(profiles, model, space.types, space.accelerator, MixOnGrid.from_pmf(sizes, probs, largest=largest), qos)
    return Problem(
        model=model,
        qos_ms=float(qos),
        space=space,
        profiles=profiles,
        summaries=summaries,
        bound=PaperBound.build(summaries, space.types),
        fluid=fluid,
        fluid_coarse=build_fluid_model(profiles, model, space.types, sizes, probs, qos, MILP_CLASS_WIDTH),
        scaled=tuple(scaled),
    )


def counts_row(problem: Problem, counts: dict[str, int]) -> np.ndarray:
    return np.array([counts.get(t, 0) for t in problem.space.types], dtype=np.int64)
