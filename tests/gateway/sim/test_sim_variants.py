"""The simulator with model variants: kinds VARIANT/TYPE in the pool, the accurate variant while
the load allows, the fast one absorbing what it cannot serve in time, the accuracy reported."""

from __future__ import annotations

import math

import pytest

from gateway.config import ServiceClass
from gateway.sim.engine import simulate
from gateway.sim.pool import parse_pool
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

ACCURACY = {"rm2": 0.80, "wnd": 0.70}
POOL = parse_pool("r5n.large=4,wnd/r5n.large=4")


def run(rate: float, accuracy: dict[str, float] | None = ACCURACY, policy: str = "kairos"):  # type: ignore[no-untyped-def]
    trace = make_workload(parse_arrivals("poisson", rate), ProductionMix(), 3000, 1)
    return simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, policy=policy, seed=1, accuracy=accuracy)


@pytest.mark.parametrize("policy", ["kairos", "fluid"])
def test_accuracy_served_falls_with_load_while_the_target_holds(policy: str) -> None:
    light, heavy = run(5.0, policy=policy), run(50.0, policy=policy)
    assert light.accuracy_served() > 0.79  # nearly every query on the accurate variant
    assert 0.70 < heavy.accuracy_served() < light.accuracy_served()
    assert heavy.attainment > 0.98
    assert heavy.summary()["accuracy_served"] == pytest.approx(heavy.accuracy_served(), abs=1e-5)
    shares = heavy.type_share()
    assert shares["wnd/r5n.large"] > 0.05 and shares["r5n.large"] > 0.3


def test_without_accuracies_nothing_is_reported() -> None:
    res = run(20.0, accuracy=None)
    assert math.isnan(res.accuracy_served()) and "accuracy_served" not in res.summary()


def test_classes_report_their_accuracy() -> None:
    trace = make_workload(parse_arrivals("poisson", 30.0), ProductionMix(), 2000, 1)
    import numpy as np

    classes = (ServiceClass("tight", 60.0, 0.99, 1), ServiceClass("loose", 1000.0, 0.99, 0))
    qc = np.random.default_rng(0).choice(2, size=2000)
    res = simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=1, accuracy=ACCURACY, classes=classes, query_class=qc)
    summary = res.class_summary()
    assert summary["loose"]["accuracy_served"] > summary["tight"]["accuracy_served"]


def test_kairos_sim_takes_variant_kinds_and_accuracies() -> None:
    from gateway.sim.cli import main as sim_main
    from gateway.sim.cli import run as sim_cli

    out = sim_cli(["--model", "rm2", "--pool", "r5n.large=2,wnd/r5n.large=2", "--rate", "10", "--queries", "500",
                   "--accuracy", "rm2=0.8,wnd=0.7", "--json"])  # fmt: skip
    assert 0.7 <= out["accuracy_served"] <= 0.8 and set(out["type_share"]) == {"r5n.large", "wnd/r5n.large"}
    with pytest.raises(SystemExit) as exc:
        sim_main(["--model", "rm2", "--pool", "wnd/t9.huge=1", "--rate", "10"])
    assert exc.value.code == 2
