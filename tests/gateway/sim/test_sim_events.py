"""The simulator with a pool that changes: instances added after a start-up delay, drained and
removed mid-run, through the dispatcher's own add / drain / remove."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import ConfigError
from gateway.sim.engine import Simulation, simulate
from gateway.sim.events import PoolEvent, check_events, parse_event, parse_events
from gateway.sim.pool import parse_pool
from gateway.sim.result import SimResult
from gateway.workload import ProductionMix, make_workload
from gateway.workload.arrivals import parse_arrivals

POOL = parse_pool("r5n.large=4")


def run(events: list[PoolEvent], rate: float = 25.0, seed: int = 0) -> SimResult:
    trace = make_workload(parse_arrivals("poisson", rate), ProductionMix(), 3000, seed)
    return simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=seed, events=events)


def served_by(res: SimResult, name: str) -> np.ndarray:
    return np.flatnonzero(res.instance == res.instance_names.index(name))


def test_an_added_instance_serves_only_once_it_has_started() -> None:
    events = parse_events(["20000:add:g4dn.xlarge:5000"])
    res = run(events)
    assert res.instance_names[-1] == "g4dn.xlarge-added-0" and res.instance_types[-1] == "g4dn.xlarge"
    mine = served_by(res, "g4dn.xlarge-added-0")
    assert mine.size > 50 and res.start_ms[mine].min() >= 25_000.0
    assert res.busy_ms[-1] > 0


def test_a_drained_or_removed_instance_gets_no_query_after_the_event() -> None:
    res = run(parse_events(["30000:drain:r5n.large-0", "40000:remove:r5n.large-1"]))
    for name, at in (("r5n.large-0", 30_000.0), ("r5n.large-1", 40_000.0)):
        mine = served_by(res, name)
        assert mine.size > 20 and res.start_ms[mine].max() < at
        assert np.all(np.isfinite(res.end_ms[mine]))  # what it held was served
    assert np.isfinite(res.end_ms).all()  # every query answered by the rest


def test_adding_capacity_rescues_an_overloaded_pool_and_runs_are_deterministic() -> None:
    rate = 40.0  # above what four CPUs sustain for rm2 (about 30 QPS)
    grow = ["5000:add:g4dn.xlarge:2000", "5000:add:r5n.large:2000", "5000:add:r5n.large:2000"]
    base = run([], rate=rate, seed=2)
    grown = run(parse_events(grow), rate=rate, seed=2)
    assert base.attainment < 0.5 and grown.attainment > 0.95
    again = run(parse_events(grow), rate=rate, seed=2)
    assert np.array_equal(grown.end_ms, again.end_ms, equal_nan=True)


def test_no_events_leaves_the_run_unchanged() -> None:
    trace = make_workload(parse_arrivals("poisson", 40.0), ProductionMix(), 2000, 1)
    a = simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=1)
    b = simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=1, events=[])
    assert np.array_equal(a.end_ms, b.end_ms) and a.instance_names == b.instance_names


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("soon:add:r5n.large", "expected T:add:TYPE"),
        ("-5:drain:x", "expected T:add:TYPE"),
        ("5:grow:x", "expected T:add:TYPE"),
        ("5:drain:x:y", "expected T:drain:NAME"),
        ("5:add:r5n.large:later", "start-up delay"),
        ("5:add:", "expected T:add:TYPE"),
    ],
)
def test_bad_event_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_event(spec)


def test_events_must_name_instances_the_pool_has_then() -> None:
    with pytest.raises(ConfigError, match="no instance named 'x' to drain"):
        check_events(parse_events(["5:drain:x"]), ["a"])
    with pytest.raises(ConfigError, match="already used"):
        check_events(parse_events(["5:add:r5n.large:0:a"]), ["a"])
    with pytest.raises(ConfigError, match="no instance named 'n' to drain"):  # it joins at 15, not 10
        check_events(parse_events(["5:add:r5n.large:10:n", "10:drain:n"]), ["a"])
    with pytest.raises(ConfigError, match="to remove"):
        check_events(parse_events(["5:remove:a", "6:remove:a"]), ["a"])
    check_events(parse_events(["5:add:r5n.large:10:n", "20:drain:n", "30:remove:n"]), ["a"])


def test_kairos_sim_takes_events_for_a_single_run() -> None:
    from gateway.sim.cli import run as sim_cli

    out = sim_cli(["--pool", "r5n.large=2", "--model", "rm2", "--rate", "10", "--queries", "500", "--json",
                   "--event", "1000:add:g4dn.xlarge:500:gpu", "--event", "20000:remove:r5n.large-0"])  # fmt: skip
    assert [i["name"] for i in out["instances"]] == ["r5n.large-0", "r5n.large-1", "gpu"]
    with pytest.raises(SystemExit):
        sim_cli(["--pool", "r5n.large=2", "--model", "rm2", "--find-max", "--event", "1:drain:r5n.large-0"])
    with pytest.raises(SystemExit):
        sim_cli(["--pool", "r5n.large=2", "--model", "rm2", "--rate", "5", "--event", "1:add:t9.huge"])


def test_a_run_in_steps_with_events_scheduled_on_the_way_equals_one_run() -> None:
    """What a control loop does: advance, look, schedule, advance. The same run as one call."""
    trace = make_workload(parse_arrivals("poisson", 40.0), ProductionMix(), 3000, 3)
    grow = parse_events(["5000:add:g4dn.xlarge:2000", "12000:drain:r5n.large-0"])
    whole = simulate(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=3, events=grow)
    run = Simulation(trace, model="rm2", qos_ms=350.0, pool=POOL, seed=3, observe=True)
    seen, refused, t = 0, 0, 0.0
    while not run.done:
        for e in grow:
            if t <= e.at_ms < t + 1000.0:
                run.schedule(e)
        t += 1000.0
        run.advance(t)
        assert run.now_ms <= t and run.arrived == int(np.searchsorted(trace.arrival_ms, t, side="right"))
        latencies, refusals, _ = run.window()
        seen += len(latencies)
        refused += refusals
    stepped = run.result()
    assert np.array_equal(whole.end_ms, stepped.end_ms, equal_nan=True)
    assert stepped.instance_names == whole.instance_names
    assert seen == len(trace) and refused == 0


def test_a_scheduled_add_reuses_no_name() -> None:
    trace = make_workload(parse_arrivals("poisson", 10.0), ProductionMix(), 100, 0)
    run = Simulation(trace, model="rm2", qos_ms=350.0, pool=POOL)
    with pytest.raises(ConfigError, match="already used"):
        run.schedule(PoolEvent(0.0, "add", "r5n.large-0", "r5n.large"))


def test_queries_left_unfinished_give_infinite_percentiles_not_nan() -> None:
    """The only instance leaves mid-run: the queries after it never finish. Their latency is
    infinite; interpolating between two of them gave NaN (null in JSON) for p99."""
    trace = make_workload(parse_arrivals("poisson", 5.0), ProductionMix(), 2000, 0)
    res = simulate(trace, model="rm2", qos_ms=350.0, pool=parse_pool("g4dn.xlarge=1"), seed=0,
                   events=parse_events(["330000:remove:g4dn.xlarge-0"]))
    pct = res.percentiles()
    assert not any(np.isnan(v) for v in pct.values())
    assert pct["p99"] == pct["max"] == np.inf and np.isfinite(pct["p50"])
