"""find-max on tiny pools: it brackets the capacity and grows with the pool."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.sim import parse_pool
from gateway.sim.engine import default_profiles
from gateway.sim.search import find_max
from gateway.workload import FixedMix

MIX = FixedMix(100)


def _max(pool: str, **kw):
    return find_max(model="rm2", qos_ms=350, pool=parse_pool(pool), policy="fcfs", queries=1000, mix=MIX, **kw)


def test_find_max_is_below_capacity_and_grows_with_the_pool() -> None:
    capacity = 1000 / default_profiles().get("rm2", "g4dn.xlarge").mean(100)
    one, two = _max("g4dn.xlarge=1"), _max("g4dn.xlarge=2")
    assert 0.3 * capacity < one.max_qps < capacity
    assert one.max_qps < two.max_qps < 2 * capacity
    assert one.at_max is not None and one.at_max.meets(0.99)
    # The final bracket: the max passed, and a rate within the resolution above it failed.
    failed = [s.rate for s in one.steps if not s.passed and s.rate > one.max_qps]
    assert failed and min(failed) <= one.max_qps * (1 + one.resolution) + 1e-9
    assert all(s.passed == (s.rate <= one.max_qps) for s in one.steps)


def test_a_looser_target_allows_more() -> None:
    assert _max("g4dn.xlarge=1", target=0.9).max_qps >= _max("g4dn.xlarge=1", target=0.99).max_qps


def test_impossible_qos_gives_zero_quickly() -> None:
    r = find_max(model="rm2", qos_ms=1.0, pool=parse_pool("g4dn.xlarge=1"), queries=500, mix=MIX)
    assert r.max_qps == 0.0 and len(r.steps) == 2


def test_bad_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _max("g4dn.xlarge=1", target=1.5)
