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


# -- models and instance types as data ------------------------------------------------------


def _byo(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "model": "iris",
        "qos_ms": 50,
        "instances": [{"type": "local-cpu", "http": "http://127.0.0.1:8080", "grpc": "grpc://127.0.0.1:8081"}],
        "instance_types": {"local-cpu": {"price_per_hour": 0.05}},
    }
    doc.update(extra)
    return doc


def test_a_model_with_its_own_instances_and_types_needs_no_pool() -> None:
    config = parse_config(_byo())
    assert config.model == "iris" and config.qos_ms == 50.0
    (inst,) = config.instances
    assert (inst.name, inst.type, inst.http_url, inst.grpc_address) == (
        "local-cpu-0", "local-cpu", "http://127.0.0.1:8080", "127.0.0.1:8081"
    )
    assert config.pool_spec() == (("local-cpu", 1),)  # what the simulator and the allocator take
    assert config.catalogue is not None and config.catalogue.type("local-cpu").price_per_hour == 0.05
    assert config.catalogue.type("g4dn.xlarge").accelerator  # the shipped ones stay


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"qos_ms": None}, "qos_ms: missing; it is required for a model without a shipped target"),
        ({"instance_types": {}}, "instances[0].type: expected one of"),
        ({"instances": [{"type": "local-cpu"}]}, "instances[0]: expected an http URL, a grpc address, or both"),
        ({"instances": [{"type": "local-cpu", "http": "ftp://x"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://a:1", "port": 3}]}, "instances[0].port: unknown field"),
        (
            {"instances": [{"type": "local-cpu", "http": "http://a:1", "name": "a"},
                           {"type": "local-cpu", "http": "http://a:2", "name": "a"}]},
            "instances: names must be unique",
        ),
        ({"instance_types": {"local-cpu": {"price_per_hour": "cheap"}}}, "instance_types.local-cpu.price_per_hour"),
        ({"instance_types": {"a/b": {"price_per_hour": 1}}}, "instance_types.a/b"),
        ({"model": "bad name"}, "model"),
        ({"profiles": "/no/such/profiles.json"}, "profiles: no such file or directory"),
        ({"instances": [], "pool": None}, "pool: missing; it is required"),
        # The admin API's rule for addresses, here too: each of these started a gateway that
        # served nothing, for good.
        ({"instances": [{"type": "local-cpu", "grpc": "grpc://"}]}, "instances[0].grpc: expected HOST:PORT, got 'grpc://'"),
        ({"instances": [{"type": "local-cpu", "grpc": "no port here"}]}, "instances[0].grpc: expected HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://a:99999"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://[::1:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://[zz]:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        # Accepted and left unhealthy for good, or worse (credentials echoed back by the admin API).
        ({"instances": [{"type": "local-cpu", "http": "http://a b:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://h\n:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://0.0.0.0:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://u:pw@h:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://h:80/a\x00b"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "http": "http://h\u00e9:80"}]}, "instances[0].http: expected http://HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "grpc": "::1:8001"}]}, "instances[0].grpc: expected HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "grpc": "0.0.0.0:8001"}]}, "instances[0].grpc: expected HOST:PORT"),
        ({"instances": [{"type": "local-cpu", "grpc": "a b:8001"}]}, "instances[0].grpc: expected HOST:PORT"),
        # Variants without the model's own name: an entry without a variant would serve nothing
        # (every query answered 500 once served).
        ({"variants": [{"name": "iris-small"}, {"name": "iris-big"}]},
         "instances[0]: no variant given, and 'iris' is not among the model's variants"),
    ],
)
def test_bad_declarations_name_the_field(change: dict[str, object], message: str) -> None:
    doc = _byo(**change)
    for key, value in change.items():
        if value is None:
            del doc[key]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_profiles_are_found_next_to_the_config_and_override_the_shipped_ones(tmp_path: Path) -> None:
    from gateway.profiles import load_profiles

    shipped = load_profiles().get("rm2", "r5n.large")
    mine = {
        "model": "iris", "unit": "ms", "quantile_levels": [0.0, 0.5, 1.0],
        "types": {"local-cpu": {"batch": [1, 64], "mean": [1.0, 3.0], "quantiles": [[0.8, 1.0, 1.5], [2.5, 3.0, 4.0]]}},
    }
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "iris.json").write_text(__import__("json").dumps(mine))
    (tmp_path / "config.json").write_text(__import__("json").dumps(_byo(profiles="profiles")))
    config = load_config(tmp_path / "config.json")
    profiles = config.profile_set()
    assert profiles.get("iris", "local-cpu").mean(64) == 3.0
    assert profiles.get("rm2", "r5n.large").mean(1) == shipped.mean(1)


def test_body_pacing_defaults_and_bounds() -> None:
    g = parse_config(BASE).gateway
    assert (g.max_body_bytes, g.body_pace_bytes_per_s, g.body_pace_after_bytes) == (16 << 20, 64 << 20, 256 << 10)
    off = parse_config({**BASE, "gateway": {"body_pace_bytes_per_s": 0}}).gateway
    assert off.body_pace_bytes_per_s == 0.0
    for key, bad in (("body_pace_bytes_per_s", -1), ("body_pace_bytes_per_s", "fast"), ("body_pace_bytes_per_s", 1e13),
                     ("body_pace_bytes_per_s", 1000),
                     ("body_pace_after_bytes", -1), ("body_pace_after_bytes", 1.5)):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"gateway\.{key}: expected"):
            parse_config({**BASE, "gateway": {key: bad}})


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ({"max_buffered_bytes": 1024}, "gateway.max_buffered_bytes: 1024 is below gateway.max_body_bytes"),
        ({"grpc_server": "grpcio", "max_body_bytes": 2**31}, "grpcio takes messages of at most 2147483647 bytes"),
        ({"max_body_bytes": 2**40}, "gateway.max_body_bytes"),
        ({"probe_interval_s": 0.0002}, "gateway.probe_interval_s: expected a positive number >= 0.01"),
        ({"header_timeout_s": 1e-9}, "gateway.header_timeout_s"),
        ({"body_timeout_s": 1e12}, "gateway.body_timeout_s"),
        ({"max_wait_ms": 100}, "gateway.max_wait_ms: applies to late_queries \"serve\" only"),
        ({"late_queries": "serve", "max_wait_ms": 1e12}, "gateway.max_wait_ms"),
        ({"max_pending": 10**9}, "gateway.max_pending"),
    ],
)
def test_gateway_settings_a_gateway_cannot_work_with_are_refused(gateway: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config({**BASE, "gateway": gateway})
    parse_config({**BASE, "gateway": {"late_queries": "serve", "max_wait_ms": 100}})  # fine together


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--instance", "p9.huge=http://127.0.0.1:1"], "type 'p9.huge' is not in the catalogue"),
        (["--instance", "r5n.large=grpc://"], "expected HOST:PORT"),
        (["--instance", "r5n.large=http://127.0.0.1:1,http://127.0.0.1:2"], "two http URLs"),
        (["--instance", "r5n.large=http://127.0.0.1:1", "--depth", "100000000"], "--depth: expected an integer in [1, 1000]"),
        (["--instance", "r5n.large=http://127.0.0.1:1", "--log-level", "bogus"], "--log-level: invalid choice"),
    ],
)
def test_gateway_flags_are_checked_as_the_config_is(flags: list[str], message: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(BASE))
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err, err
