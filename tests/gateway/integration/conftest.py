"""Fixtures of the gateway's integration tests.

* ``gateway_proc(pool, *args, gateway={...})``: starts ``kairos-gateway`` in front of a running
  ``kairos-servers`` pool (its address file), with free ports and fast probes; ``gateway``
  overrides fields of the config's gateway section. Every gateway it started is killed at
  teardown. See ``gateway_process.py`` for the helpers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import RunningGateway, gateway_config, launch_gateway
from helpers.pool import RunningPool


@pytest.fixture
def gateway_proc(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(pool: RunningPool, *args: str, gateway: dict[str, Any] | None = None) -> RunningGateway:
        config = gateway_config(pool.config_path, tmp_path, **(gateway or {}))
        running = launch_gateway(config, ["--address-file", str(pool.address_file), *args], tmp_path)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(signal.SIGKILL)
