"""The README's config examples are configs the gateway takes (the variants one with every
latency profile it needs), so the README stays true as the config grows."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _json_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [re.sub(r"^ {2}", "", b, flags=re.M) for b in re.findall(r"```json\n(.*?)```", text, flags=re.S)]


def test_the_variants_example_runs_on_the_shipped_profiles(tmp_path: Path) -> None:
    block = next(b for b in _json_blocks() if '"digits-rf512"' in b)
    doc = json.loads(block)
    doc["profiles"] = str(ROOT / doc["profiles"])  # relative to the repository's root, where the README saves it
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(doc))
    config = load_config(path)
    profiles = config.profile_set()
    for entry in config.primary.pool:
        profiles.get(entry.variant or config.model, entry.type)  # ProfileError if one is missing


def test_the_multi_model_example_is_a_valid_config(tmp_path: Path) -> None:
    block = next(b for b in _json_blocks() if '"models"' in b and '"dien-0"' in b)
    path = tmp_path / "models.json"
    path.write_text(block)
    assert [m.name for m in load_config(path).models] == ["rm2", "dien"]
