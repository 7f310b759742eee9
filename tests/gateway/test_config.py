"""Config parsing: the shipped default pool, the pipelining switch, the client margin, and one
clear error each."""

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


def test_the_client_margin_defaults_to_zero_and_stays_below_the_qos() -> None:
    assert parse_config(BASE).gateway.client_margin_ms == 0.0
    assert parse_config({**BASE, "gateway": {"client_margin_ms": 0.5}}).gateway.client_margin_ms == 0.5
    for bad in (-0.1, 350, 1000.0, "1", True):
        with pytest.raises(ConfigError, match=r"gateway\.client_margin_ms: expected"):
            parse_config({**BASE, "gateway": {"client_margin_ms": bad}})


def test_the_command_line_overrides_the_client_margin() -> None:
    from gateway.app import GatewaySettings
    from gateway.cli import parse_args

    config = parse_config({**BASE, "gateway": {"client_margin_ms": 0.5}})
    for argv, expected in (([], 0.5), (["--client-margin-ms", "1.5"], 1.5)):
        args = parse_args(argv)
        assert GatewaySettings.from_config(config, client_margin_ms=args.client_margin_ms).client_margin_ms == expected


@pytest.mark.parametrize("bad", ["350", "-1"])
def test_a_bad_client_margin_flag_exits_2_with_one_line(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from gateway.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(BASE))
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), "--client-margin-ms", bad, "--instance", "r5n.large=http://127.0.0.1:1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--client-margin-ms: expected a number of ms >= 0 and below the QoS (350 ms)" in err
