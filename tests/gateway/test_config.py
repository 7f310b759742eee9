"""Config parsing: the shipped default pool, the pipelining switch, and one clear error each."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": "rm2", "pool": [{"type": "r5n.large", "count": 2}]}


def test_the_default_pool_loads_with_pipelining_on() -> None:
    config = load_config(ROOT / "config.json")
    assert config.model == "rm2" and config.qos_ms == 350
    assert config.gateway.pipeline is True
    assert config.gateway.depth_per_instance == 1


def test_pipelining_defaults_on_and_can_be_switched_off() -> None:
    assert parse_config(BASE).gateway.pipeline is True
    assert parse_config({**BASE, "gateway": {"pipeline": False}}).gateway.pipeline is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_pipelining_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.pipeline: expected true or false"):
        parse_config({**BASE, "gateway": {"pipeline": value}})


def test_the_command_line_overrides_pipelining() -> None:
    from gateway.app import GatewaySettings
    from gateway.cli import parse_args

    config = parse_config(BASE)
    for argv, expected in (([], True), (["--no-pipeline"], False), (["--pipeline"], True)):
        args = parse_args(argv)
        settings = GatewaySettings.from_config(config, pipeline=args.pipeline, depth=args.depth)
        assert settings.pipeline is expected
