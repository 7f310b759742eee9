"""``python -m benchmarks.classes`` end to end on a small run: table, JSON and plot written, and
priorities protect the premium class against the baseline without them."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.classes import main


def test_the_classes_benchmark_writes_its_results(tmp_path: Path) -> None:
    assert main(["--queries", "4000", "--policies", "kairos", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "classes.json").read_text())
    with_p, without = doc["runs"]
    assert with_p["priorities"] and not without["priorities"]
    assert with_p["classes"]["premium"]["within_target"] > 0.97
    assert with_p["classes"]["premium"]["within_target"] > without["classes"]["premium"]["within_target"] + 0.3
    assert with_p["classes"]["batch"]["refused_or_shed"] > with_p["classes"]["premium"]["refused_or_shed"]
    assert "| kairos | yes |" in (tmp_path / "classes.md").read_text()
    assert (tmp_path / "classes.png").stat().st_size > 10_000
