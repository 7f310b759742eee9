"""The policies table: a homogeneous column that was not run says so, not a number."""

from __future__ import annotations

from benchmarks.policies import render_markdown

_RUN = {"queries_per_step": 1000, "seed": 0, "resolution": 0.02, "budget": 2.5, "command": "c", "date": "d"}


def _row(homogeneous: dict[str, object]) -> dict[str, object]:
    return {"model": "rm2", "qos_ms": 350, "pool": "1 x g4dn.xlarge", "cost": 2.46,
            "max_qps": {"kairos": 130.7, "fcfs": 26.9}, "homogeneous": homogeneous,
            "fluid_limit": None, "paper_bound": None}


def test_a_homogeneous_baseline_not_run_is_not_shown_as_zero() -> None:
    skipped = render_markdown({**_RUN, "policies": ["kairos", "fcfs"],
                               "rows": [_row({"pool": "-", "policy": "-", "cost": 0.0, "max_qps": 0.0})]})
    assert "| not run | n/a |" in skipped and "0.0: -" not in skipped
    ran = render_markdown({**_RUN, "policies": ["kairos", "fcfs"],
                           "rows": [_row({"pool": "14 x r5n.large", "policy": "fluid", "cost": 2.1, "max_qps": 65.0})]})
    assert "| 65.0: 14 x r5n.large fluid (2.100) | 2.01x |" in ran
