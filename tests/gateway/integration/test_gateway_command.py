"""The ``kairos-gateway`` command. The hand session, started back to back: the gateway waits for
kairos-servers' address file (with a bound and a clear message), refuses a stale one, and the
servers remove theirs on exit. Exit codes as in every command: usage and config 2, runtime 1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from helpers.pool import launch, write_config

from benchmarks.processes import console_script

pytestmark = pytest.mark.slow


def gateway(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*console_script("kairos-gateway", "gateway.cli"), "--config", str(config),
                             "--http-port", "0", "--grpc-port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_gateway_started_before_the_servers_waits_for_their_addresses(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"r5n.large": 2})
    gw = gateway(config)
    try:
        assert gw.stderr is not None and gw.stdout is not None
        assert "waiting up to 30 s for kairos-servers to write" in gw.stderr.readline()
        pool = launch(tmp_path, pool={"r5n.large": 2})  # the same config: the same address file
        try:
            ready = gw.stdout.readline()
            assert ready.startswith("kairos-gateway ready") and "instances=2 healthy=2" in ready, ready
        finally:
            gw.send_signal(signal.SIGTERM)
            assert gw.wait(30) == 0
            assert pool.stop() == 0
        assert not pool.address_file.exists()  # gone with its pool: a later gateway must not read it
    finally:
        if gw.poll() is None:
            gw.kill()


def test_no_address_file_in_time_is_a_clear_runtime_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = subprocess.run([*console_script("kairos-gateway", "gateway.cli"), "--config", str(config),
                          "--wait-for-addresses", "0.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1  # the pool is not there: not a usage error
    assert "no address file after 0.5 s; is kairos-servers running with this config?" in out.stderr


def test_the_addresses_of_a_pool_that_has_exited_are_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "instances.json").write_text(json.dumps({"model": "rm2", "pid": dead.pid, "instances": [
        {"index": 0, "name": "rm2-r5n.large-0", "type": "r5n.large", "model": "rm2",
         "http": "http://127.0.0.1:9", "grpc": "127.0.0.1:9"}]}))
    out = subprocess.run([*console_script("kairos-gateway", "gateway.cli"), "--config", str(config),
                          "--wait-for-addresses", "0.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"written by kairos-servers pid {dead.pid}, which has exited" in out.stderr


@pytest.mark.parametrize("value", ["-1", "nan", "7200"])
def test_a_bad_wait_is_a_usage_error(tmp_path: Path, value: str) -> None:
    out = subprocess.run([*console_script("kairos-gateway", "gateway.cli"), "--config", str(write_config(tmp_path)),
                          "--wait-for-addresses", value], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--wait-for-addresses" in out.stderr


def test_a_port_in_use_is_a_runtime_failure_exit_1_as_in_the_servers(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doc = {"model": "rm2", "qos_ms": 350,
               "instances": [{"name": "a", "type": "r5n.large", "http": "http://127.0.0.1:9"}],
               "gateway": {"http_port": port, "grpc_port": 0}}
        config = tmp_path / "config.json"
        config.write_text(json.dumps(doc))
        out = subprocess.run([*console_script("kairos-gateway", "gateway.cli"), "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "kairos-gateway: error: cannot listen" in out.stderr and "Traceback" not in out.stderr
