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
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.protocol.addresses import AddressList, InstanceAddress, read_address_file

READY_PREFIX = "kairos-servers ready:"
DEFAULT_POOL: Mapping[str, int] = {"g4dn.xlarge": 1, "r5n.large": 2}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def servers_command() -> list[str]:
    """The ``kairos-servers`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "kairos-servers"
    if script.exists():
        return [str(script)]
    found = shutil.which("kairos-servers")
    return [found] if found else [sys.executable, "-m", "servers.cli"]


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


@dataclass
class RunningPool:
    process: subprocess.Popen[str]
    config_path: Path
    address_file: Path
    stderr_path: Path
    ready_line: str
    addresses: AddressList

    @property
    def instances(self) -> tuple[InstanceAddress, ...]:
        return self.addresses.instances

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status (SIGKILL after ``timeout_s``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return int(self.process.returncode)


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
    stderr_path = directory / "servers.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [*servers_command(), "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    line = _read_ready_line(proc, timeout_s)
    if line is None:
        code = proc.poll()
        if code is None:
            proc.kill()
            proc.wait()
        raise RuntimeError(
            f"kairos-servers did not become ready (exit {proc.returncode}): {stderr_path.read_text()}"
        )
    doc = json.loads(config.read_text())
    address_file = Path(doc["servers"]["address_file"])
    return RunningPool(proc, config, address_file, stderr_path, line, read_address_file(address_file))


@contextlib.contextmanager
def start_pool(directory: Path, **kwargs: Any) -> Iterator[RunningPool]:
    """``launch`` as a context manager that stops the pool on exit."""
    running = launch(directory, **kwargs)
    try:
        yield running
    finally:
        running.stop()


def _read_ready_line(proc: subprocess.Popen[str], timeout_s: float) -> str | None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:  # EOF: it exited
            return None
        if line.startswith(READY_PREFIX):
            return line.strip()
    return None
