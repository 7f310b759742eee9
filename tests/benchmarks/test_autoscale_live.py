"""The live replay of the control loop, end to end on a few compressed trace minutes: kairos-servers,
kairos-gateway, kairos-autoscale and two kairos-loadgen processes, beside the simulation of the
same queries; every query is accounted for and the pool moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.autoscale.actuator import GroupKey
from benchmarks.autoscale.live import Compressed, cost_of, main

pytestmark = pytest.mark.slow


def test_time_compression_divides_every_setting_of_the_loop() -> None:
    c = Compressed(5.0)
    args = c.autoscale_args()
    value = {args[k]: args[k + 1] for k in range(0, len(args) - 1, 2) if args[k].startswith("--")}
    assert c.scale == 12.0
    assert value["--tick"] == "0.833333" and value["--plan-every"] == "2.5" and value["--step"] == "5"
    assert value["--down-after"] == "10" and value["--measure"] == "2.5"
    assert value["--startup-delay"] == "g4dn.xlarge=5,r5n.large=2.91667"
    policy = c.policy()
    assert (policy.plan_every_s, policy.step_s, policy.down_after_s, policy.measure_s) == (2.5, 5.0, 10.0, 2.5)


def test_cost_is_price_times_held_instances_in_trace_time() -> None:
    gpu, cpu = GroupKey("m", "m", "gpu"), GroupKey("m", "m", "cpu")
    samples = [(0.0, {gpu: (1, 1), cpu: (2, 3)}), (30.0, {gpu: (1, 1)}), (60.0, {})]
    # 30 s of (1 x $1 + 3 x $0.5) then 30 s of $1, at 12x: 6 minutes and 6 minutes of trace time
    assert cost_of(samples, {"gpu": 1.0, "cpu": 0.5}, 12.0) == pytest.approx(2.5 * 0.1 + 1.0 * 0.1)


def test_a_short_live_replay_answers_its_queries_and_compares_with_the_simulation(tmp_path: Path) -> None:
    out = tmp_path / "live.json"
    rc = main(["--minutes", "4", "--minute-s", "3", "--json", str(out), "--plot", str(tmp_path / "live.png"),
               "--workdir", str(tmp_path / "run")])
    assert rc == 0
    doc = json.loads(out.read_text())
    live, sim = doc["runs"]["live (planned)"], doc["runs"]["simulated (planned)"]
    assert live["cost"] > 0 and sim["cost"] > 0
    assert 0 <= live["over_target_pct"] <= 100 and set(live["per_model_pct"]) == {"rm2", "dien"}
    reports = {m: json.loads((tmp_path / "run" / f"loadgen-{m}.json").read_text()) for m in ("rm2", "dien")}
    for m, r in reports.items():
        counts = r["counts"]
        assert counts["scheduled"] > 50 and counts["unsent"] == 0, m
        assert counts["sent"] == counts["ok"] + counts["errors"]
        # refused or shed while the pool grows from one r5n.large per model: the deadline errors only
        assert set(r["errors"]) <= {"http_503", "http_504"}, r["errors"]
        assert counts["ok"] >= 0.5 * counts["scheduled"], (m, r["errors"])
    assert live["decisions"] >= 1  # one r5n.large per model cannot carry the load: the loop grew it
    assert (tmp_path / "live.png").stat().st_size > 10_000
