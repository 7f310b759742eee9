"""Validation in the simulator: a fake simulator for the plumbing, the real one when installed."""

from __future__ import annotations

import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from allocator.problem import Problem
from allocator.search import rank_by_budget
from allocator.validate import (
    SimSettings,
    SimulatorUnavailable,
    find_simulator,
    pick_validated,
    simulate,
    validate,
)
from gateway.policies import POLICY_NAMES

needs_sim = pytest.mark.skipif(find_simulator() is None, reason="kairos-sim (the simulator) is not installed")
SIM_QUERIES = 2000  # short runs: enough to see a pool saturate, quick on a shared 2-core machine
FIND_MAX_SLACK = 0.05  # find-max on finite runs can pass a rate a little above the true limit


def _fake_sim(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-sim"
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_validation_plumbing_with_fake_simulator(rm2: Problem, tmp_path: Path) -> None:
    # Reports the pool's size as its max rate: the smallest pool then wins the "best validated" pick.
    exe = _fake_sim(
        tmp_path,
        "args = sys.argv\npool = args[args.index('--pool') + 1]\n"
        "assert '--find-max' in args and '--json' in args\n"
        "n = sum(int(p.split('=')[1]) for p in pool.split(','))\n"
        "print('progress noise')\nprint('{\"max_qps\": %d}' % (100 - n))",
    )
    cands = rank_by_budget(rm2, 2.5, top=4).candidates
    lines: list[str] = []
    done = validate(cands, SimSettings("rm2", 350.0), k=3, progress=lines.append, executable=exe)
    assert [c.simulated_max_qps is not None for c in done] == [True, True, True, False]
    picked = pick_validated(done)
    assert picked[0].simulated_max_qps == max(c.simulated_max_qps or 0 for c in done)
    assert len(picked) == len(done)
    assert any("validate 3/3" in line for line in lines)


def test_validation_degrades_when_simulator_fails(rm2: Problem, tmp_path: Path) -> None:
    exe = _fake_sim(tmp_path, "sys.exit('boom: no simulator here')")
    cands = rank_by_budget(rm2, 2.5, top=2).candidates
    with pytest.raises(SimulatorUnavailable, match="boom"):
        validate(cands, SimSettings("rm2", 350.0), k=2, progress=lambda _: None, executable=exe)


def test_validation_degrades_when_simulator_missing(
    rm2: Problem, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", os.devnull)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    cands = rank_by_budget(rm2, 2.5, top=1).candidates
    with pytest.raises(SimulatorUnavailable, match="not installed"):
        validate(cands, SimSettings("rm2", 350.0), k=1, progress=lambda _: None)


@needs_sim
def test_validate_top_candidates_in_simulator(rm2: Problem) -> None:
    cands = rank_by_budget(rm2, 1.0, top=2).candidates  # small pools: short simulations
    done = validate(cands, SimSettings("rm2", 350.0, queries=SIM_QUERIES), k=2, progress=lambda _: None)
    for c in done:
        assert c.simulated_max_qps is not None, c.validation_error
        assert 0 < c.simulated_max_qps <= (c.fluid_limit or 0) * (1 + FIND_MAX_SLACK)


@needs_sim
def test_no_policy_beats_the_fluid_limit(rm2: Problem) -> None:
    # A small mixed pool so every policy's run is short.
    cand = next(c for c in rank_by_budget(rm2, 1.0, top=20).candidates if c.pool.count("r5n.large") > 0)
    assert cand.fluid_limit is not None
    exe = find_simulator()
    assert exe is not None

    def run(policy: str) -> tuple[float | None, str | None]:
        return simulate(exe, SimSettings("rm2", 350.0, policy=policy, queries=SIM_QUERIES), cand.pool)

    with ThreadPoolExecutor(max_workers=2) as workers:  # the machine has 2 cores
        results = dict(zip(POLICY_NAMES, workers.map(run, POLICY_NAMES), strict=True))
    for policy, (max_qps, err) in results.items():
        assert max_qps is not None, f"{policy}: {err}"
        assert max_qps <= cand.fluid_limit * (1 + FIND_MAX_SLACK), policy
