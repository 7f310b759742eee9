"""Shared fixtures: the shipped catalogue and profiles, the paper's search space, a toy problem."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.problem import Problem, build_problem
from allocator.space import SearchSpace, load_search_space
from gateway.profiles import (
    Catalogue,
    InstanceType,
    LatencyProfile,
    ProfileSet,
    load_catalogue,
    load_profiles,
)
from gateway.workload import BatchMix


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="session")
def profiles() -> ProfileSet:
    return load_profiles()


@pytest.fixture(scope="session")
def paper_space(catalogue: Catalogue) -> SearchSpace:
    return load_search_space(catalogue)


@pytest.fixture(scope="session")
def rm2(paper_space: SearchSpace, profiles: ProfileSet, catalogue: Catalogue) -> Problem:
    return build_problem("rm2", paper_space, profiles, catalogue)


class TwoSizes(BatchMix):
    """Half the queries at batch 10, half at batch 100."""

    name = "two-sizes"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.array([10, 100]), size=n)

    def pmf(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([10, 100]), np.array([0.5, 0.5])


def flat_profile(model: str, type_name: str, small_ms: float, large_ms: float) -> LatencyProfile:
    """A deterministic profile: ``small_ms`` at batch 10, ``large_ms`` at batch 100."""
    means = np.array([small_ms, large_ms])
    return LatencyProfile(
        model=model,
        instance_type=type_name,
        batches=np.array([10.0, 100.0]),
        means=means,
        levels=np.array([0.0, 1.0]),
        quantiles=np.stack([means, means], axis=1),
    )


# Toy pool, QoS 50 ms: GPU "A" ($1/h) 10 ms small, 20 ms large; CPU "B" ($0.3/h) 40 ms small,
# 200 ms large (over QoS: large queries only go to A).
TOY_QOS = 50.0


@pytest.fixture(scope="session")
def toy() -> Problem:
    profiles = ProfileSet(
        {("toy", "A"): flat_profile("toy", "A", 10.0, 20.0), ("toy", "B"): flat_profile("toy", "B", 40.0, 200.0)}
    )
    catalogue = Catalogue(
        types={"A": InstanceType("A", 1.0, True), "B": InstanceType("B", 0.3, False)}, qos_ms={"toy": TOY_QOS}
    )
    space = SearchSpace(types=("A", "B"), max_count=(3, 6), prices=(1.0, 0.3), accelerator=(True, False))
    return build_problem("toy", space, profiles, catalogue, mix=TwoSizes())
