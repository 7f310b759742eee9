"""Bad input: one clear line and exit code 2 from the CLI; ConfigError from the API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from allocator.problem import Problem, build_problem
from allocator.search import rank_by_budget, size_for_load
from allocator.space import SearchSpace, load_search_space
from gateway.errors import ConfigError
from gateway.profiles import Catalogue, ProfileSet


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "rm2", "--budget", "2.5", "--max", "p9.huge=2"], "not in the search space"),
        (["--model", "rm2", "--budget", "-1"], "budget must be a non-negative"),
        (["--model", "rm2", "--budget", "0.1"], "buys no pool"),
        (["--model", "rm2", "--budget", "2.5", "--qos", "1"], "out of reach"),
        (["--model", "bert", "--budget", "2.5"], "unknown model 'bert'"),
        (["--budget", "2.5"], "--model: which model to allocate for"),
    ],
)
def test_cli_errors(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "allocator.cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_api_errors(rm2: Problem, paper_space: SearchSpace, profiles: ProfileSet, catalogue: Catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="non-negative"):
        rank_by_budget(rm2, -1.0)
    with pytest.raises(ConfigError, match="buys no pool"):
        rank_by_budget(rm2, 0.1)
    with pytest.raises(ConfigError, match="out of reach"):
        build_problem("rm2", paper_space, profiles, catalogue, qos_ms=1.0)
    with pytest.raises(ConfigError, match="unknown model"):
        build_problem("bert", paper_space, profiles, catalogue)
    with pytest.raises(ConfigError, match="carries"):
        size_for_load(rm2, 1e6)
    bad = tmp_path / "space.json"
    bad.write_text('{"types": ["g4dn.xlarge", "z9.mega"], "max_count": [1, 2]}')
    with pytest.raises(ConfigError, match=r"unknown instance type 'z9\.mega'"):
        load_search_space(catalogue, bad)


def test_the_model_defaults_to_the_configs() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "allocator.cli", "--config", str(repo / "config.json"), "--budget", "2.5",
                           "--top", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rm2:")


def test_a_config_whose_model_runs_as_variants_needs_model_naming_one(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "variants.json"
    config.write_text(json.dumps({
        "model": "digits", "qos_ms": 80, "instance_types": {"dev-2vcpu": {"price_per_hour": 0.0832}},
        "profiles": str(repo / "gateway/profiles/data/variants/profiles"),
        "variants": [{"name": "digits-rf512", "accuracy": 0.9759}, {"name": "digits-rf8", "accuracy": 0.9389}],
        "pool": [{"type": "dev-2vcpu", "count": 1, "variant": "digits-rf512"},
                 {"type": "dev-2vcpu", "count": 2, "variant": "digits-rf8"}],
    }))
    base = [sys.executable, "-m", "allocator.cli", "--config", str(config), "--space", "profiled", "--budget", "1"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "name one (digits-rf512, digits-rf8)" in proc.stderr
    proc = subprocess.run([*base, "--model", "digits-rf8", "--mix", "uniform:1-16", "--top", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digits-rf8: pools within 1 $/hour") and "QoS 80 ms" in proc.stdout  # the config's
