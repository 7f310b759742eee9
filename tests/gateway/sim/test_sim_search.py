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


def test_integer_poisson_gaps_are_drawn_at_each_tried_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's whole-ms Poisson gaps do not scale: drawn at 1 q/s and shrunk they would be nearly
    constant (variation 0.03). Each step draws them at its own rate, with the same batches."""
    import numpy as np

    import gateway.sim.search as search

    seen = []
    real = search.simulate

    def spy(trace, **kw):  # type: ignore[no-untyped-def]
        seen.append(trace)
        return real(trace, **kw)

    monkeypatch.setattr(search, "simulate", spy)
    res = find_max(model="dien", qos_ms=35.0, pool=parse_pool("g4dn.xlarge=2"), queries=2000,
                   arrivals="integer-poisson", resolution=0.2)
    assert res.max_qps > 0 and len(seen) >= 2
    for trace, step in zip(seen, res.steps, strict=True):
        gaps = np.diff(trace.arrival_ms)
        mean = 1000.0 / step.rate
        assert gaps.mean() == pytest.approx(mean, rel=0.1)
        assert gaps.var() == pytest.approx(mean, rel=0.25)  # Poisson: variance = mean, not ~0
        assert np.all(gaps == np.round(gaps))
        assert np.array_equal(trace.batch, seen[0].batch)


def test_find_max_takes_a_pool_of_variants() -> None:
    """``variant/type`` kinds in the pool: the first guess read profiles by the kind and failed."""
    from gateway.sim.cli import run

    out = run(["--model", "rm2", "--pool", "r5n.large=2,wnd/r5n.large=2", "--find-max", "--queries", "500"])
    assert out["max_qps"] > 0
