"""Start a real ``kairos-servers`` pool in a subprocess, for integration tests.

Usage (any test package; ``tests/`` is on ``sys.path`` through ``tests/conftest.py``)::

    from helpers.pool import start_pool

    with start_pool(tmp_path, pool={"g4dn.xlarge": 1, "r5n.large": 2}, model="rm2") as pool:
        url = pool.instances[0].http            # "http://127.0.0.1:PORT"
        target = pool.instances[0].grpc         # "127.0.0.1:PORT"
    # stopped (SIGTERM) on exit; pool.returncode is its exit status

or the ``server_pool`` fixture of ``tests/conftest.py`` (a factory taking the same arguments,
stopping every pool it started at teardown). Ports are picked by the OS (base port 0), so
pools never clash with each other or with other engineers' processes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.processes import ServersProcess, console_script, start_servers

DEFAULT_POOL: Mapping[str, int] = {"g4dn.xlarge": 1, "r5n.large": 2}


def servers_command() -> list[str]:
    """The ``kairos-servers`` console script of this interpreter's environment."""
    return console_script("kairos-servers", "servers.cli")


def write_config(
    directory: Path,
    pool: Mapping[str, int] = DEFAULT_POOL,
    model: str = "rm2",
    qos_ms: float = 350,
    **servers: Any,
) -> Path:
    """Write a config with ``pool`` (type -> count) and free ports; ``servers`` overrides fields."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model,
        "qos_ms": qos_ms,
        "pool": [{"type": t, "count": n} for t, n in pool.items()],
        "servers": {
            "http_port": 0,
            "grpc_port": 0,
            "address_file": str(directory / "instances.json"),
            **servers,
        },
    }
    path = directory / "config.json"
    path.write_text(json.dumps(doc))
    return path


RunningPool = ServersProcess


def launch(
    directory: Path,
    pool: Mapping[str, int] = DEFAULT_POOL,
    model: str = "rm2",
    args: Sequence[str] = (),
    timeout_s: float = 30.0,
    **servers: Any,
) -> RunningPool:
    """Start a pool and wait for its ready line; RuntimeError (with its stderr) if it fails."""
    config = write_config(directory, pool, model, **servers)
    address_file = Path(json.loads(config.read_text())["servers"]["address_file"])
    return start_servers(config, address_file, args, directory, timeout_s)


@contextlib.contextmanager
def start_pool(directory: Path, **kwargs: Any) -> Iterator[RunningPool]:
    """``launch`` as a context manager that stops the pool on exit."""
    running = launch(directory, **kwargs)
    try:
        yield running
    finally:
        running.stop()
