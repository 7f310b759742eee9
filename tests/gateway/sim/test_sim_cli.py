"""kairos-sim's command line: one JSON object with max_qps, and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.sim.cli import main

POOL = ["--model", "rm2", "--qos", "350", "--pool", "g4dn.xlarge=1,r5n.large=2"]


def test_find_max_json_is_one_object_with_max_qps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*POOL, "--policy", "kairos", "--find-max", "--json", "--queries", "600", "--resolution", "0.05"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert obj["max_qps"] > 0
    for key in ("policy", "model", "qos_ms", "pool", "queries_per_step", "seed", "steps", "target"):
        assert key in obj
    assert obj["pool"] == {"g4dn.xlarge": 1, "r5n.large": 2} and obj["queries_per_step"] == 600


def test_single_run_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*POOL, "--rate", "10", "--queries", "300", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["queries"] == 300 and 0 <= obj["within_qos"] <= 1 and len(obj["instances"]) == 3
    assert main([*POOL, "--rate", "10", "--queries", "300", "--batch-mix", "fixed:50"]) == 0
    assert "within QoS" in capsys.readouterr().out


def test_trace_replay(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("timestamp_ms,batch\n" + "".join(f"{i * 50},{10 + i % 90}\n" for i in range(200)))
    assert main([*POOL, "--trace", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"] == 200


@pytest.mark.parametrize(
    "argv",
    [
        ["--policy", "nope", "--rate", "5"],
        ["--pool", "g4dn.xlarge:1", "--rate", "5"],
        ["--pool", "nosuch.type=1", "--rate", "5"],
        ["--model", "bert", "--pool", "g4dn.xlarge=1", "--rate", "5"],
        ["--rate", "0"],
        ["--rate", "-3"],
        ["--arrivals", "bursty", "--rate", "5"],
        ["--frobnicate"],
        ["--rate", "5", "--transport-ms", "-1"],
        ["--rate", "5", "--transport-ms", "nan"],
        ["--rate", "5", "--transport-p99-ms", "3"],  # no mean
        ["--rate", "5", "--transport-ms", "2", "--transport-p99-ms", "1"],  # p99 below the mean
        ["--rate", "5", "--transport-ms", "0.1", "--transport-p99-ms", "30"],  # no log-normal has it
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", "rm2", "--pool", "g4dn.xlarge=1"] if "--pool" not in argv and "--model" not in argv else []
    with pytest.raises(SystemExit) as exc:
        main([*base, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err


def test_entry_point_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.sim.cli", "--model", "rm2", "--pool", "x=y", "--rate", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not proc.stdout


def test_a_transport_round_trip_adds_to_every_latency(capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for extra in ([], ["--transport-ms", "3", "--pipeline"]):
        assert main([*POOL, "--policy", "fcfs", "--rate", "2", "--queries", "300", "--json", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    ideal, live = (r["latency_ms"]["p50"] for r in runs)
    assert live == pytest.approx(ideal + 3.0, abs=0.5)  # at 2 QPS nothing queues: the round trip shows as is


def test_a_drawn_round_trip_is_reported_and_keeps_its_mean(capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for extra in (["--transport-ms", "2"], ["--transport-ms", "2", "--transport-p99-ms", "8"]):
        assert main([*POOL, "--policy", "fcfs", "--rate", "2", "--queries", "400", "--json", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    constant, drawn = runs
    assert constant["transport_ms"] == drawn["transport_ms"] == 2.0
    assert constant["transport_p99_ms"] is None and drawn["transport_p99_ms"] == 8.0
    assert drawn["latency_ms"]["mean"] == pytest.approx(constant["latency_ms"]["mean"], abs=0.5)
