"""Fixtures shared by every test package.

* ``server_pool``: a factory that starts a real ``kairos-servers`` pool in a subprocess from a
  temp config (free ports, address file in the test's tmp dir), waits for its ready line and
  returns a ``helpers.pool.RunningPool`` (``.instances[i].http`` / ``.grpc``, ``.stop()``).
  Arguments: ``pool={"g4dn.xlarge": 1, "r5n.large": 2}``, ``model="rm2"``,
  ``args=["--zero-latency", ...]`` (extra CLI flags), and any ``servers`` config field.
  Every pool it started is stopped at teardown.
* ``free_port``: a currently free TCP port on 127.0.0.1.

For a pool shared by a whole module, use ``helpers.pool.start_pool`` in a module-scoped fixture.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Make ``import helpers`` work whatever the import mode or working directory.
sys.path.insert(0, str(Path(__file__).parent))

from helpers.pool import RunningPool, launch

from benchmarks.processes import free_port as _free_port


@pytest.fixture
def server_pool(tmp_path: Path) -> Iterator[Callable[..., RunningPool]]:
    started: list[RunningPool] = []

    def start(**kwargs: Any) -> RunningPool:
        directory = tmp_path / f"pool{len(started)}"
        running = launch(directory, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def free_port() -> int:
    return _free_port()
