"""Several models on the virtual clock from one config: each its own dispatcher, pool, classes
and variants; the same as running each alone."""

from __future__ import annotations

import numpy as np

from gateway.config import parse_config
from gateway.dispatch import OverloadControl
from gateway.sim.engine import simulate
from gateway.sim.models import model_pool, simulate_models
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

CONFIG = parse_config(
    {
        "models": [
            {
                "name": "rm2",
                "classes": [{"name": "premium", "qos_ms": 300, "priority": 1}, {"name": "batch", "qos_ms": 1000}],
                "variants": [{"name": "rm2", "accuracy": 0.8}, {"name": "wnd", "accuracy": 0.7}],
                "pool": [{"type": "r5n.large", "count": 3}, {"type": "r5n.large", "count": 2, "variant": "wnd"}],
            },
            {"name": "dien", "pool": [{"type": "r5n.large", "count": 2}]},
        ]
    }
)


def test_each_model_runs_on_its_own_pool_with_its_classes_and_variants() -> None:
    traces = {
        "rm2": make_workload(parse_arrivals("poisson", 30.0), ProductionMix(), 2000, 1),
        "dien": make_workload(parse_arrivals("poisson", 100.0), ProductionMix(), 2000, 2),
    }
    classes = {"rm2": np.random.default_rng(0).choice(2, size=2000)}
    results = simulate_models(CONFIG, traces, query_class=classes, seed=3)
    rm2, dien = results["rm2"], results["dien"]
    assert model_pool(CONFIG.model_config("rm2")) == (("r5n.large", 3), ("wnd/r5n.large", 2))
    assert set(rm2.class_summary()) == {"premium", "batch"} and 0.7 <= rm2.accuracy_served() <= 0.8
    assert set(dien.class_summary()) == {"default"} and dien.instance_types == ("r5n.large", "r5n.large")
    alone = simulate(
        traces["dien"], model="dien", qos_ms=35.0, pool=(("r5n.large", 2),), seed=3,
        overload=OverloadControl.for_mode("shed", 35.0), classes=CONFIG.model_config("dien").classes,
        query_class=np.zeros(2000, dtype=np.int64),
    )  # fmt: skip
    assert np.array_equal(alone.end_ms, dien.end_ms, equal_nan=True)
