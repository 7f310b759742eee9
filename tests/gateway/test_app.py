"""The gateway's pools as the config gives them: checks made before anything starts."""

from __future__ import annotations

import pytest

from gateway.app import Gateway, GatewaySettings
from gateway.config import parse_config
from gateway.errors import ConfigError


def _gateway(instances: list[dict[str, str]], **gateway: object) -> Gateway:
    config = parse_config({"model": "rm2", "qos_ms": 350, "instances": instances, "gateway": gateway})
    return Gateway(config, config.primary.instances, GatewaySettings.from_config(config))


def test_one_server_listed_twice_for_a_model_is_refused() -> None:
    # Its capacity would count twice: the dispatcher would send it twice the queries it can take.
    with pytest.raises(ConfigError, match=r"a and b of model 'rm2' are one server"):
        _gateway([{"name": "a", "type": "r5n.large", "http": "http://10.0.0.7:8000"},
                  {"name": "b", "type": "r5n.large", "http": "http://10.0.0.7:8000", "grpc": "10.0.0.7:8001"}])
    with pytest.raises(ConfigError, match=r"a and b of model 'rm2' are one server"):
        _gateway([{"name": "a", "type": "r5n.large", "grpc": "10.0.0.7:8001"},
                  {"name": "b", "type": "r5n.large", "grpc": "10.0.0.7:8001"}])
    _gateway([{"name": "a", "type": "r5n.large", "http": "http://10.0.0.7:8000"},
              {"name": "b", "type": "r5n.large", "http": "http://10.0.0.8:8000"}])


def test_more_instances_than_max_instances_is_refused() -> None:
    two = [{"name": "a", "type": "r5n.large", "http": "http://10.0.0.7:8000"},
           {"name": "b", "type": "r5n.large", "http": "http://10.0.0.8:8000"}]
    with pytest.raises(ConfigError, match=r"instances: 2, more than gateway.max_instances \(1\)"):
        _gateway(two, max_instances=1)
    _gateway(two, max_instances=2)
