"""The live replay of the control loop, end to end on a few compressed trace minutes: kairos-servers,
kairos-gateway, kairos-autoscale and two kairos-loadgen processes, beside the simulation of the
same queries; every query is accounted for and the pool moved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allocator.autoscale.actuator import GroupKey
from benchmarks.autoscale.live import LiveRun, command_policy, cost_of, main
from benchmarks.autoscale.live_settings import Compressed, FaroLive, HeteroLive
from benchmarks.planner.faro import TYPE, service_mean_ms, service_quantiles
from gateway.config import load_config

pytestmark = pytest.mark.slow


def flags(args: list[str]) -> dict[str, str]:
    return {args[k]: args[k + 1] for k in range(0, len(args) - 1, 2) if args[k].startswith("--")}


def test_time_compression_divides_every_setting_of_the_loop(tmp_path: Path) -> None:
    c = Compressed(5.0)
    setting = HeteroLive({"rm2": 40.0, "dien": 100.0})
    value = flags(setting.autoscale_args(c))
    assert c.scale == 12.0
    assert value["--tick"] == "0.833333" and value["--plan-every"] == "2.5" and value["--step"] == "5"
    assert value["--down-after"] == "10" and value["--measure"] == "2.5"
    assert value["--startup-delay"] == "g4dn.xlarge=5,r5n.large=2.91667"
    path = setting.write_config(tmp_path, 0)
    policy = command_policy(setting, path, load_config(path), c)
    assert (policy.plan_every_s, policy.step_s, policy.down_after_s, policy.measure_s) == (2.5, 5.0, 10.0, 2.5)
    assert policy.start == {GroupKey("rm2", "rm2", "r5n.large"): 1, GroupKey("dien", "dien", "r5n.large"): 1}


def test_faros_setting_runs_live_as_simulated(tmp_path: Path) -> None:
    """The live config and the command's arguments say what the simulated setting says: ten jobs of
    cpu-1 under the cap, Faro's service times, 720 ms, utility, release held, time compressed."""
    c = Compressed(5.0)
    setting = FaroLive(32)
    path = setting.write_config(tmp_path, 0)
    config = load_config(path)
    value = flags(setting.autoscale_args(c))
    assert value["--cap"] == "32" and value["--objective"] == "utility" and value["--batch-mix"] == "fixed:1"
    assert value["--release-after"] == "2.5" and value["--startup-delay"] == "cpu-1=2.91667"
    assert [m.name for m in config.models] == [f"job{k}" for k in range(10)]
    sim = setting.sim_setting(config, setting.traces(0, 2, c), c)
    assert sim.cap_units == 32 and sim.release_s == 2.5 and sim.tick_s == pytest.approx(10 / 12)
    profile = config.profile_set().get("job3", TYPE)
    assert profile.means_for(np.array([1]))[0] == pytest.approx(service_mean_ms())
    assert np.allclose(profile.quantiles[0], service_quantiles())
    policy = command_policy(setting, path, config, c)
    request = policy.template({m: 5.0 for m in setting.models}, [])
    assert request["max_units"] == 32 and request["max_utilisation"] == 1.0
    assert request["objective"] == {"kind": "utility", "load_quantile": 0.9, "fairness": 0.0}


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


def test_a_short_live_replay_of_faros_setting_answers_every_job(tmp_path: Path) -> None:
    """Ten load generators, one per job (a model the servers emulate from its profile file, driven
    with --input), the loop under the cap, all started together (--start-at)."""
    out = tmp_path / "faro.json"
    rc = main(["--setting", "faro", "--cap", "32", "--minutes", "2", "--minute-s", "4", "--json", str(out),
               "--plot", str(tmp_path / "faro.png"), "--workdir", str(tmp_path / "run")])
    assert rc == 0
    doc = json.loads(out.read_text())
    live = doc["runs"]["live (planned)"]
    assert doc["cap"] == 32 and len(live["per_model_pct"]) == 10
    for k in range(10):
        r = json.loads((tmp_path / "run" / f"loadgen-job{k}.json").read_text())
        assert r["counts"]["scheduled"] > 0 and r["counts"]["unsent"] == 0
        assert set(r["errors"]) <= {"http_503", "http_504"}, r["errors"]
    assert live["decisions"] >= 1  # one replica per job cannot carry the load: the loop grew the pool

    # the JSON keeps the live samples: the figure can be drawn again without a live run
    kept = LiveRun.from_doc(doc["live"])
    assert kept.to_doc() == doc["live"]
    assert len(kept.samples) >= 2 and kept.samples[-1][0] > kept.samples[0][0]
    assert {key.model for key in kept.samples[-1][1]} == {f"job{k}" for k in range(10)}
    assert sum(kept.queries.values()) == sum(
        json.loads((tmp_path / "run" / f"loadgen-job{k}.json").read_text())["counts"]["scheduled"] for k in range(10))
    again = tmp_path / "again.png"
    assert main(["--replot", str(out), "--plot", str(again)]) == 0
    assert again.stat().st_size > 10_000


def test_replot_refuses_a_json_without_live_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"setting": "faro", "cap": 36, "minutes": 2, "minute_s": 4, "seed": 0, "runs": {}}))
    assert main(["--replot", str(old), "--plot", str(tmp_path / "x.png")]) == 2
    assert "not a JSON this benchmark wrote with its live samples" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "junk.json").write_text("{")
    assert main(["--replot", str(tmp_path / "junk.json"), "--plot", str(tmp_path / "x.png")]) == 2
    live = LiveRun(over={}, queries={}, cost=0.0, decisions=0, wall_s=0.0).to_doc()
    for bad in ({"setting": "faro", "cap": 36, "minutes": 2, "minute_s": 0, "seed": 0, "peaks": None},
                {"setting": "hetero", "cap": None, "minutes": 2, "minute_s": 4, "seed": 0, "peaks": {"rm2": 40}},
                {"setting": "faro", "cap": 3, "minutes": 2, "minute_s": 4, "seed": 0, "peaks": None},
                {"setting": "other", "cap": 36, "minutes": 2, "minute_s": 4, "seed": 0, "peaks": None}):
        old.write_text(json.dumps({**bad, "live": live}))
        assert main(["--replot", str(old), "--plot", str(tmp_path / "x.png")]) == 2, bad
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flags", [["--rm2-peak", "0"], ["--dien-peak", "nan"], ["--seed", "-1"], ["--cap", "9"]])
def test_a_bad_flag_is_a_usage_error(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(flags)
    assert exc.value.code == 2
