"""The allocator plans for a model and instance types a gateway config declares, with their
profiles (e.g. written by kairos-profile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.cli import main


def _config(tmp_path: Path) -> Path:
    profile = {
        "model": "digits", "unit": "ms", "quantile_levels": [0.0, 1.0],
        "types": {
            "my-cpu": {"batch": [1, 64], "mean": [1.0, 2.0], "quantiles": [[1.0, 1.0], [2.0, 2.0]]},
            "my-big-cpu": {"batch": [1, 64], "mean": [0.5, 1.0], "quantiles": [[0.5, 0.5], [1.0, 1.0]]},
        },
    }
    (tmp_path / "digits.json").write_text(json.dumps(profile))
    config = {
        "model": "digits", "qos_ms": 20, "profiles": "digits.json",
        "instances": [{"type": "my-cpu", "http": "http://127.0.0.1:1"}],
        "instance_types": {"my-cpu": {"price_per_hour": 0.1}, "my-big-cpu": {"price_per_hour": 0.25}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_declared_types_and_their_profiles_are_planned_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    code = main(["--model", "digits", "--config", str(config), "--space", "profiled", "--budget", "0.5",
                 "--mix", "fixed:8", "--json"])
    assert code == 0
    pools = json.loads(capsys.readouterr().out)
    assert pools and all(set(p["counts"]) <= {"my-cpu", "my-big-cpu"} for p in pools)
    assert all(p["cost"] <= 0.5 + 1e-9 and p["paper_bound"] > 0 for p in pools)


def test_without_the_config_the_model_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "digits", "--space", "profiled", "--budget", "0.5", "--mix", "fixed:8"]) == 2
    assert "--space profiled: the model has no latency profile on any type" in capsys.readouterr().err


def test_a_mix_up_to_the_profiles_largest_batch_is_planned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Profiled up to batch 64 (kairos-profile --max-batch 64): a mix up to 64 is planned (batch 61
    was read at the paper's grid point 70, past the profile); the default mix, past 64, is refused
    with the way out."""
    config = _config(tmp_path)
    for mix in ("uniform:1-64", "fixed:64", "uniform:1-61"):
        assert main(["--model", "digits", "--config", str(config), "--space", "profiled", "--budget", "0.5",
                     "--mix", mix, "--json"]) == 0, mix
        assert json.loads(capsys.readouterr().out)
    assert main(["--model", "digits", "--config", str(config), "--space", "profiled", "--budget", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "the batch mix (production) reaches batch 999" in err and "give --mix uniform:1-64" in err
