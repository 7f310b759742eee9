"""Profile files a user brings (written by kairos-profile or by hand) are checked on load, and
every problem names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import ProfileError
from gateway.profiles import load_profiles

GOOD = {
    "model": "iris",
    "unit": "ms",
    "quantile_levels": [0.0, 0.5, 1.0],
    "types": {"local-cpu": {"batch": [1, 8], "mean": [1.0, 2.0], "quantiles": [[0.5, 1.0, 2.0], [1.5, 2.0, 3.0]]}},
}


def _with(path: str, value: object) -> dict:
    doc = json.loads(json.dumps(GOOD))
    target = doc
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return doc


def test_a_single_file_or_a_directory_loads(tmp_path: Path) -> None:
    (tmp_path / "iris.json").write_text(json.dumps(GOOD))
    for path in (tmp_path / "iris.json", tmp_path):
        profile = load_profiles(path).get("iris", "local-cpu")
        assert profile.max_batch == 8 and profile.mean(8) == 2.0 and profile.quantile(1, 0.5) == 1.0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "expected a JSON object"),
        (_with("model", None), "model: expected a non-empty string"),
        (_with("types", {}), "types: expected an object"),
        (_with("unit", "s"), 'unit: expected "ms"'),
        (_with("quantile_levels", [0.2, 1.0]), "quantile_levels: expected increasing levels from 0 to 1"),
        (_with("types.local-cpu.batch", [0, 8]), r"types.local-cpu.batch: expected increasing batch sizes"),
        (_with("types.local-cpu.batch", [8, 1]), r"types.local-cpu.batch: expected increasing batch sizes"),
        (_with("types.local-cpu.mean", [1.0]), r"types.local-cpu.mean: expected one mean of at least 0.001 ms"),
        (_with("types.local-cpu.mean", [1.0, -2.0]), r"types.local-cpu.mean: expected one mean of at least 0.001 ms"),
        (_with("types.local-cpu.mean", ["a", 2]), r"types.local-cpu.mean: expected numbers"),
        (_with("types.local-cpu.quantiles", [[1, 0.5, 2], [1, 2, 3]]), r"types.local-cpu.quantiles: expected one non-decreasing row of 3"),
        (_with("types.local-cpu", 3), "types.local-cpu: expected an object"),
        # Replayed as they are: a negative time would be served, and a mean beyond the range
        # seen would set the estimator (means) apart from the replay (quantiles).
        (_with("types.local-cpu.quantiles", [[-50, -1, 2], [1, 2, 3]]), r"types.local-cpu.quantiles: expected service times >= 0"),
        (_with("types.local-cpu.mean", [1000.0, 2.0]), r"types.local-cpu.mean: batch 1 has mean 1000 ms outside its quantiles' range \[0.5, 2\]"),
        (_with("types.local-cpu.mean", [1.0, 1.0]), r"types.local-cpu.mean: batch 8 has mean 1 ms outside"),
        # An instance builds a table per batch size up to the largest: bounded.
        (_with("types.local-cpu.batch", [1, 1e12]), r"types.local-cpu.batch: expected whole batch sizes of at most 1,048,576"),
        (_with("types.local-cpu.batch", [1, 7.5]), r"types.local-cpu.batch: expected whole batch sizes"),
    ],
)
def test_a_bad_file_names_itself_and_the_field(tmp_path: Path, doc: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=f"{path}: {message}"):
        load_profiles(path)


def test_not_json_and_an_empty_directory_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile files"):
        load_profiles(tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_profiles(tmp_path)


def test_quantile_table_interpolates_in_level_then_in_batch(tmp_path: Path) -> None:
    (tmp_path / "iris.json").write_text(json.dumps(GOOD))
    profile = load_profiles(tmp_path).get("iris", "local-cpu")
    table = profile.quantile_table(np.array([1, 4, 8]), np.array([0.0, 0.25, 0.5, 1.0]))
    # Batch 1: levels 0/0.5/1 -> 0.5/1/2; batch 8: 1.5/2/3; batch 4 is 3/7 of the way.
    expected_1 = [0.5, 0.75, 1.0, 2.0]
    expected_8 = [1.5, 1.75, 2.0, 3.0]
    np.testing.assert_allclose(table[0], expected_1)
    np.testing.assert_allclose(table[2], expected_8)
    np.testing.assert_allclose(table[1], np.array(expected_1) + 3 / 7 * (np.array(expected_8) - expected_1))
    np.testing.assert_allclose(profile.quantiles_for(np.array([1, 4, 8]), 0.25), table[:, 1])
    with pytest.raises(ProfileError, match="batch size 9 is outside"):
        profile.quantile_table(np.array([1, 9]), np.array([0.5]))
