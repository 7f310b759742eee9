"""The simulator with service classes: each query's target and priority from its class, per-class
results, the same result for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import ServiceClass
from gateway.dispatch import OverloadControl
from gateway.sim.engine import simulate
from gateway.sim.pool import parse_pool
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

POOL = parse_pool("g4dn.xlarge=1,r5n.large=5")
CLASSES = (ServiceClass("premium", 350.0, 0.99, 1), ServiceClass("batch", 1000.0, 0.9, 0))


def run(rate: float, seed: int = 0, classes: tuple[ServiceClass, ...] = CLASSES) -> object:
    n = 4000
    trace = make_workload(parse_arrivals("poisson", rate), ProductionMix(), n, seed)
    query_class = np.random.default_rng(seed).choice(2, size=n, p=[0.3, 0.7])
    return simulate(
        trace, model="rm2", qos_ms=350.0, pool=POOL, seed=seed, overload=OverloadControl.for_mode("shed", 350.0),
        classes=classes, query_class=query_class,
    )  # fmt: skip


def test_under_overload_the_higher_class_keeps_its_target_and_the_lower_is_shed() -> None:
    res = run(rate=150.0)  # about twice what this pool sustains
    summary = res.class_summary()  # type: ignore[attr-defined]
    assert summary["premium"]["within_target"] >= 0.98
    assert summary["batch"]["refused_or_shed"] > 0.3 > summary["premium"]["refused_or_shed"]
    assert summary["premium"]["queries"] + summary["batch"]["queries"] == 3600  # the measured ones
    assert set(res.summary()["classes"]) == {"premium", "batch"}  # type: ignore[attr-defined]


def test_each_query_is_judged_against_its_own_class_target() -> None:
    res = run(rate=20.0)
    lat, cls = res.latency_ms, res.query_class  # type: ignore[attr-defined]
    within = res.within_qos()  # type: ignore[attr-defined]
    slow_batch = (cls == 1) & (lat > 350.0) & (lat <= 1000.0)
    assert np.all(within[slow_batch])
    assert not np.any(within[(cls == 0) & (lat > 350.0)])


def test_same_seed_same_result() -> None:
    a, b = run(rate=150.0, seed=3), run(rate=150.0, seed=3)
    assert np.array_equal(a.end_ms, b.end_ms, equal_nan=True)  # type: ignore[attr-defined]


def test_classes_need_a_class_per_query() -> None:
    trace = make_workload(parse_arrivals("poisson", 10.0), ProductionMix(), 10, 0)
    with pytest.raises(ValueError, match="one class index per query"):
        simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, classes=CLASSES)


def test_of_accepted_means_one_thing_for_the_run_and_for_its_classes() -> None:
    """A shed query was accepted, and missed: the run's accepted attainment counted it, the
    classes' left it out (0.995 against 1.0 for one class at 300 q/s)."""
    one = (ServiceClass("default", 350.0, 0.99, 0),)
    n = 4000
    trace = make_workload(parse_arrivals("poisson", 300.0), ProductionMix(), n, 0)
    res = simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=0, classes=one, query_class=np.zeros(n, dtype=int),
                   overload=OverloadControl.for_mode("shed", 350.0))
    assert res.shed[res.measured].any() and res.refused[res.measured].any()
    assert res.class_summary()["default"]["within_target_of_accepted"] == pytest.approx(res.accepted_attainment)
