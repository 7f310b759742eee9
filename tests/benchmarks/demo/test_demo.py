"""The README's main command, shortened: real servers, two gateways in turn, the load generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.processes import console_script

pytestmark = pytest.mark.slow


def _small_config(tmp_path: Path) -> Path:
    doc = {
        "model": "rm2",
        "qos_ms": 350,
        "pool": [{"type": "g4dn.xlarge", "count": 1}, {"type": "r5n.large", "count": 2}],
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in args:
            found.append(args)
    return found


def test_demo_short_run_compares_policies_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [*console_script("kairos-demo", "benchmarks.demo"), "--config", str(_small_config(tmp_path)),
         "--duration", "3", "--rate", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the demo's servers and gateways run from here
    )
    assert proc.returncode == 0, proc.stderr
    assert "kairos" in proc.stdout and "fcfs" in proc.stdout
    report = json.loads((out / "demo.json").read_text())
    assert [r["policy"] for r in report["runs"]] == ["kairos", "fcfs"]
    for run in report["runs"]:
        counts = run["live"]["counts"]
        assert counts["sent"] == counts["ok"] + counts["errors"] > 0
        assert counts["errors"] == 0
        assert 0.0 <= run["sim_within_qos_pct"] <= 100.0
    assert (out / "demo.png").stat().st_size > 0
    assert "kairos-servers ready" in proc.stderr
    # Every process the demo started (all run with configs under its temp dir) is gone.
    assert _processes_mentioning(str(tmp_path)) == []


def test_demo_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "rm2", "pool": [{"type": "nope", "count": 1}]}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.demo", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pool[0].type" in proc.stderr
