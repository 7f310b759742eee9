"""The live benchmark's step length and its report (the live runs themselves are a benchmark)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.live import (
    GatewaySettings,
    Row,
    Steps,
    main,
    median_max,
    plot,
    render,
    sim_live_search,
    simulate_load,
)
from benchmarks.loadgen import LoadConfig, build_workload
from benchmarks.policies import POOLS
from gateway.dispatch import OverloadControl
from gateway.sim import parse_pool, simulate


def test_a_step_lasts_a_minimum_count_and_a_minimum_time() -> None:
    steps = Steps(queries=2000, seconds=12.0)
    assert steps.count(500.0) == 6000  # a fast model: the time decides
    assert steps.count(100.0) == 2000  # a slow one: the count does
    assert steps.count(500.1) == 6002  # never shorter than the time


def test_rows_compare_live_with_each_simulation() -> None:
    row = Row("dien", "kairos-gateway/kairos", sim_max=600.0, live_max=480.0, transport_ms=1.2,
              transport_p99_ms=3.0, sim_transport_max=580.0, sim_drawn_max=533.3,
              table_sim_max=618.4)  # fmt: skip
    assert row.ratio == 0.8
    assert round(row.drawn_ratio or 0, 3) == 0.9
    fixed = Row("rm2", "haproxy/leastconn", None, 0.0, fixed_rate=65.3, live_within_pct=98.6)
    assert fixed.ratio is None and fixed.drawn_ratio is None
    lines = render([row, fixed]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(c) == len(header) for c in cells)
    first = dict(zip(header, cells[0], strict=True))
    assert first["transport mean / p99"] == "1.20 / 3.00 ms"
    assert first["sim max, drawn transport"] == "533.3" and first["live / that sim"] == "0.90"
    assert first["live / sim"] == "0.80" and first["live / it"] == "0.83"
    assert first["policies-table sim max"] == "618.4" and first["sim max, same queries"] == "600.0"
    second = dict(zip(header, cells[1], strict=True))
    assert second["live / sim"] == "-" and second["live within QoS"] == "98.60%"


def test_several_searches_report_their_median_and_each_one(tmp_path: Path) -> None:
    assert median_max([531.4, 550.8, 541.1]) == 541.1
    assert median_max([531.4, 550.8, 541.1, 560.4]) == 541.1  # a rate that ran, not a midpoint
    assert median_max([512.1]) == 512.1
    row = Row("dien", "kairos-gateway/kairos", sim_max=608.7, live_max=541.1,
              live_searches=(531.4, 541.1, 550.8))  # fmt: skip
    one = Row("rm2", "kairos-gateway/kairos", sim_max=138.8, live_max=138.8, live_searches=(138.8,))
    lines = render([row, one]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [
        dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)) for line in lines[2:]
    ]
    assert cells[0]["live max QPS"] == "541.1 (median of 531.4, 541.1, 550.8)"
    assert cells[0]["live / sim"] == "0.89"
    assert cells[1]["live max QPS"] == "138.8"  # one search: just its max
    plot([row, one], tmp_path / "live.png")
    assert (tmp_path / "live.png").stat().st_size > 0


def test_the_command_refuses_a_search_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--searches", "0", "--no-haproxy"])
    assert info.value.code == 2
    assert "--searches: expected >= 1" in capsys.readouterr().err


def test_the_simulator_searches_on_the_live_search_s_own_queries() -> None:
    base = LoadConfig(url="http://127.0.0.1:1", model="rm2", rate=1.0, qos_ms=350.0, seed=3, binary=True)
    steps = Steps(queries=500, seconds=0.0)
    settings = GatewaySettings(client_margin_ms=0.5, late_queries="shed")
    found = sim_live_search(base, POOLS["rm2"], "kairos", 100.0, steps, settings)
    assert found > 0 and sim_live_search(base, POOLS["rm2"], "kairos", 100.0, steps, settings) == found
    # Its max passes as a live step passes: >= 99% of exactly the queries a live step sends, run
    # as the gateway runs them (deadlines 0.5 ms early, late queries shed).
    queries = build_workload(replace(base, rate=found, queries=steps.count(found)))
    res = simulate(
        queries, model="rm2", qos_ms=349.5, pool=parse_pool(POOLS["rm2"]), policy="kairos", seed=3, warmup=0.0,
        overload=OverloadControl(shed_late=True, admission=True),
    )
    assert len(queries) == 500 and int(res.within_qos().sum()) >= math.ceil(0.99 * 500)


def test_the_simulated_twin_runs_as_the_gateway_does() -> None:
    """Past the pool's capacity the live gateway (default late_queries: shed) refuses and sheds;
    its twin must too, and must count its deadlines less the client margin."""
    load = LoadConfig(url="http://127.0.0.1:1", model="rm2", rate=200.0, queries=2000, qos_ms=350.0, seed=1,
                      binary=True)
    shed = simulate_load(load, POOLS["rm2"], "kairos", GatewaySettings(0.5, "shed"))
    served = simulate_load(load, POOLS["rm2"], "kairos", GatewaySettings(0.5, "serve"))
    assert shed.qos_ms == served.qos_ms == 349.5
    assert (shed.refused | shed.shed).sum() > 20  # overloaded: the gateway drops some
    assert not served.refused.any() and not served.shed.any()
    assert np.isfinite(served.latency_ms).all()  # every query served, some late
    late = served.latency_ms > 349.5
    assert late.sum() > (shed.latency_ms[np.isfinite(shed.latency_ms)] > 349.5).sum()
