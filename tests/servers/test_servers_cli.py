"""The ``kairos-servers`` launcher: clean shutdown, config errors, worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers.inputs import triton_inputs
from helpers.pool import RunningPool, servers_command, write_config

from servers.cli import main

PoolFactory = Callable[..., RunningPool]


def _refuses(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) != 0


def _infer(url: str, batch: int = 2) -> dict:
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    return client.infer("rm2", triton_inputs(httpclient, "rm2", batch)).get_response()["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(server_pool: PoolFactory, sig: int) -> None:
    pool = server_pool(pool={"r5n.large": 2})
    assert _infer(pool.instances[0].http)["service_us"] / 1000 > 0
    assert pool.stop(sig) == 0
    assert "Traceback" not in pool.stderr()
    assert not pool.address_file.exists()  # removed with its pool: a gateway must not read dead addresses
    for a in pool.instances:
        assert _refuses(a.http) and _refuses(a.grpc)


@pytest.mark.slow
def test_zero_latency_flag(server_pool: PoolFactory) -> None:
    pool = server_pool(pool={"g4dn.xlarge": 1}, args=["--zero-latency"])
    assert "latency x0" in pool.ready_line
    params = _infer(pool.instances[0].http, batch=1000)
    assert params["service_us"] / 1000 == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("timers", ["timerfd", "loop"])
def test_timer_modes_reach_the_workers(server_pool: PoolFactory, timers: str) -> None:
    pool = server_pool(pool={"r5n.large": 2}, args=["--workers", "2", "--timers", timers])
    for address in pool.instances:
        params = _infer(address.http, batch=10)
        assert params["service_us"] / 1000 > 0
        # A timerfd never wakes before the end; the loop's whole-ms timers can, by under 1 ms.
        early_ms = 0.0 if timers == "timerfd" else 1.0
        assert params["observed_us"] / 1000 >= params["service_us"] / 1000 - early_ms


@pytest.mark.slow
def test_workers_spread_instances_and_survive_a_dead_worker(server_pool: PoolFactory) -> None:
    pool = server_pool(pool={"g4dn.xlarge": 1, "r5n.large": 3}, args=["--workers", "2"], admin_port=0)
    assert "in 2 processes" in pool.ready_line
    pids = {a.pid for a in pool.instances}
    assert len(pids) == 2 and pool.process.pid not in pids
    for a in pool.instances:
        assert _infer(a.http)["instance"] == a.name
        assert grpcclient.InferenceServerClient(url=a.grpc).is_server_ready()
    victim = pool.instances[0].pid
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while "exited" not in pool.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "instances gone: g4dn.xlarge-0, r5n.large-1" in pool.stderr()
    assert f"exited (code {-signal.SIGKILL})" in pool.stderr()  # reaped: its real code
    survivor = next(a for a in pool.instances if a.pid != victim)
    assert _infer(survivor.http)["instance"] == survivor.name
    # Its instances leave the address file (a gateway must not read dead addresses) and the admin
    # API lists them failed, so that a control loop replaces them; a DELETE forgets them.
    written = json.loads(pool.address_file.read_text())
    assert [i["name"] for i in written["instances"]] == ["r5n.large-0", "r5n.large-2"]
    admin = pool.ready_line.rsplit("; admin ", 1)[1].strip() + "/admin/instances"
    listed = json.loads(urllib.request.urlopen(admin, timeout=5).read())["instances"]
    assert [(i["name"], i["state"], i["origin"]) for i in listed] == [
        ("r5n.large-0", "ready", "pool"), ("r5n.large-2", "ready", "pool"),
        ("g4dn.xlarge-0", "failed", "pool"), ("r5n.large-1", "failed", "pool"),
    ]  # fmt: skip
    forget = urllib.request.Request(f"{admin}/g4dn.xlarge-0", method="DELETE")
    assert json.loads(urllib.request.urlopen(forget, timeout=5).read())["state"] == "stopped"
    listed = json.loads(urllib.request.urlopen(admin, timeout=5).read())["instances"]
    assert "g4dn.xlarge-0" not in [i["name"] for i in listed]
    assert pool.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*servers_command(), *args], capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, **changes: object) -> Path:
    path = write_config(tmp_path)
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        node = doc
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pool": [{"type": "p3.huge", "count": 1}]}, "pool[0].type: expected one of"),
        ({"servers.workers": 0}, "servers.workers: expected an integer >= 1"),
        ({"model": "gpt5"}, "no latency profile for model 'gpt5'"),
        ({"servers.http_port": 9500, "servers.grpc_port": 9501}, "overlap"),
        ({"servers.extra": 1}, "servers.extra: unknown field"),
    ],
)
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict, message: str
) -> None:
    # In-process (same code path as the script, without paying for a Python start per case).
    assert main(["--config", str(_config(tmp_path, **changes))]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.startswith("kairos-servers: error: ")
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_config_errors_through_the_script(tmp_path: Path) -> None:
    done = _run(["--config", str(tmp_path / "nope.json")])
    assert done.returncode == 2 and "no such config file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_bad_json_and_bad_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{")
    assert main(["--config", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--config", str(tmp_path / "bad.json"), "--latency-scale", "-1"])
    assert info.value.code == 2 and "--latency-scale" in capsys.readouterr().err
    for never_answers in ("inf", "1e300", "nan"):  # an instance that would stay busy for good
        with pytest.raises(SystemExit) as info:
            main(["--config", str(tmp_path / "bad.json"), "--latency-scale", never_answers])
        assert info.value.code == 2 and "--latency-scale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--config", str(tmp_path / "bad.json"), "--ready-timeout", "inf"])
    assert info.value.code == 2 and "--ready-timeout" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--config", str(tmp_path / "bad.json"), "--timers", "spin"])
    assert info.value.code == 2 and "--timers" in capsys.readouterr().err


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(["--config", str(_config(tmp_path, **{"servers.grpc_port": port}))])
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_admin_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(["--config", str(_config(tmp_path, **{"servers.admin_port": port}))])
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("kairos-servers: error: ") and "Traceback" not in done.stderr
    assert str(port) in done.stderr and len(done.stderr.strip().splitlines()) == 1
