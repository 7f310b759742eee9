"""Start ``kairos-servers`` and ``kairos-gateway`` as real processes and wait for their ready
lines. Used by the demo, the live benchmarks and the integration tests."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.protocol.addresses import AddressList, InstanceAddress, read_address_file

SERVERS_READY = re.compile(r"^kairos-servers ready:")
GATEWAY_READY = re.compile(r"^kairos-gateway ready http=(\S+) grpc=(\S+)")
PICKER_READY = re.compile(r"^kairos-gateway ready epp=(\S+) metrics=(\S+)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds of these processes so far (``/proc/<pid>/stat``)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def console_script(name: str, module: str) -> list[str]:
    """The console script of this interpreter's environment (``python -m`` as a fallback)."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


@dataclass
class Process:
    process: subprocess.Popen[str]
    stderr_path: Path
    ready_line: str

    @property
    def pid(self) -> int:
        return self.process.pid

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
    cmd: Sequence[str],
    ready: re.Pattern[str],
    stderr_path: Path,
    timeout_s: float = 60.0,
    cpus: set[int] | None = None,
) -> tuple[Process, re.Match[str]]:
    """Start ``cmd`` and wait until a stdout line matches ``ready``; RuntimeError (with the
    process's stderr) if it exits or stays silent for ``timeout_s``."""

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=pin if cpus else None,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if not line:  # EOF: it exited
            break
        if match := ready.match(line):
            return Process(proc, stderr_path, line.strip()), match
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    name = Path(cmd[0]).name
    raise RuntimeError(f"{name} did not become ready (exit {proc.returncode}): {stderr_path.read_text()}")


@dataclass
class ServersProcess(Process):
    config_path: Path = field(default_factory=Path)
    address_file: Path = field(default_factory=Path)
    addresses: AddressList = field(default_factory=lambda: AddressList(model="", pid=0, instances=()))

    @property
    def instances(self) -> tuple[InstanceAddress, ...]:
        return self.addresses.instances


@dataclass
class GatewayProcess(Process):
    http: str = ""
    grpc: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.http}"


def start_servers(
    config: Path,
    address_file: Path,
    args: Sequence[str] = (),
    directory: Path | None = None,
    timeout_s: float = 60.0,
    cpus: set[int] | None = None,
) -> ServersProcess:
    directory = directory or address_file.parent
    cmd = [*console_script("kairos-servers", "servers.cli"), "--config", str(config),
           "--address-file", str(address_file), *args]
    proc, _ = launch(cmd, SERVERS_READY, directory / f"servers-{time.monotonic_ns()}.stderr", timeout_s, cpus)
    return ServersProcess(
        proc.process, proc.stderr_path, proc.ready_line, config, address_file, read_address_file(address_file)
    )


def start_gateway(
    config: Path,
    args: Sequence[str] = (),
    directory: Path | None = None,
    timeout_s: float = 60.0,
    cpus: set[int] | None = None,
) -> GatewayProcess:
    directory = directory or config.parent
    cmd = [*console_script("kairos-gateway", "gateway.cli"), "--config", str(config), *args]
    proc, match = launch(cmd, GATEWAY_READY, directory / f"gateway-{time.monotonic_ns()}.stderr", timeout_s, cpus)
    return GatewayProcess(proc.process, proc.stderr_path, proc.ready_line, http=match[1], grpc=match[2])


@dataclass
class PickerProcess(Process):
    epp: str = ""  # the ext_proc service, host:port
    metrics: str = ""  # /metrics and health, host:port


def start_picker(
    config: Path,
    args: Sequence[str] = (),
    directory: Path | None = None,
    timeout_s: float = 60.0,
    cpus: set[int] | None = None,
) -> PickerProcess:
    """``kairos-gateway --mode epp``: the endpoint picker for Envoy."""
    directory = directory or config.parent
    cmd = [*console_script("kairos-gateway", "gateway.cli"), "--config", str(config), "--mode", "epp", *args]
    proc, match = launch(cmd, PICKER_READY, directory / f"picker-{time.monotonic_ns()}.stderr", timeout_s, cpus)
    return PickerProcess(proc.process, proc.stderr_path, proc.ready_line, epp=match[1], metrics=match[2])


@contextlib.contextmanager
def running(proc: Process) -> Iterator[Process]:
    """Stop ``proc`` on the way out, however the block ends."""
    try:
        yield proc
    finally:
        proc.stop()
