"""kairos-loadgen against a real V2 server over loopback (HTTP JSON, HTTP binary, gRPC).

The server (loadgen_stub_server.py, a separate process) answers by batch size: batch 1 -> 503 /
UNAVAILABLE, batch >= 9 -> slow (well past QoS), others -> fast. With the batch mix uniform:1-10
every query's outcome is known.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.loadgen import SCHEMA, LoadConfig, run_load

HERE = Path(__file__).parent
QOS_MS = 250.0
SLOW_MS = 500.0


@pytest.fixture(scope="module")
def stub() -> Iterator[dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "loadgen_stub_server.py"), "--delay-ms", "1", "--slow-batch", "9",
         "--slow-ms", str(SLOW_MS), "--error-batch", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its ports once it listens
        if not line:
            pytest.fail(f"stub server exited with {proc.wait(5)}")
        yield json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stats(ports: dict[str, int]) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/stats", timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.parametrize(
    ("scheme", "binary", "error_kind"),
    [("http", False, "http_503"), ("http", True, "http_503"), ("grpc", False, "grpc_UNAVAILABLE")],
)
async def test_counts_and_qos_accounting_over_real_sockets(stub, scheme, binary, error_kind):
    before = _stats(stub)
    cfg = LoadConfig(
        url=f"{scheme}://127.0.0.1:{stub[scheme]}", model="ncf", rate=150.0, duration_s=2.0,
        batch_mix="uniform:1-10", qos_ms=QOS_MS, binary=binary, seed=11, timeout_s=5.0,
    )
    r = await run_load(cfg)
    after = _stats(stub)
    assert r.samples is not None
    batch = r.samples.batch
    n = len(batch)
    assert 200 < n < 400  # ~300 Poisson arrivals in 2 s
    # Every scheduled query was sent once, and answered or failed: no loss, no duplicates.
    assert r.scheduled == r.sent == n and r.sent == r.ok + r.error_count
    assert after["received"] - before["received"] == n
    assert after["distinct_ids"] - before["distinct_ids"] == n
    assert r.errors == {error_kind: int(np.count_nonzero(batch == 1))}
    fast = (batch >= 2) & (batch <= 8)
    lat_ms = (np.asarray(r.samples.done_s) - r.samples.scheduled_s) * 1000.0
    ok = np.array([e is None for e in r.samples.error])
    # Slow and failed queries never count; fast ones do when on time (a loaded shared box may
    # stall a few of them past QoS: the exact accounting is the fake-target unit test's job).
    assert r.within_qos == int(np.count_nonzero(fast & ok & (lat_ms <= QOS_MS)))
    assert np.all(lat_ms[batch >= 9] >= SLOW_MS - 5)  # the stub's uvloop timers have 1 ms resolution
    assert r.within_qos >= 0.9 * np.count_nonzero(fast)
    assert r.latency_ms is not None and r.latency_ms["max"] >= SLOW_MS - 5
    assert r.instances == {"stub-0": r.ok}
    j = r.to_json()
    assert j["schema"] == SCHEMA and j["counts"]["sent"] == j["counts"]["ok"] + j["counts"]["errors"]
    assert j["target"]["encoding"] == ("protobuf" if scheme == "grpc" else "binary" if binary else "json")
    assert j["instances"]["stub-0"]["share"] == 1.0


def test_cli_end_to_end_json_and_plot(stub, tmp_path):
    out, png = tmp_path / "run.json", tmp_path / "run.png"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen.cli", "--url", f"grpc://127.0.0.1:{stub['grpc']}",
         "--model", "rm2", "--rate", "100", "--duration", "1.5", "--batch-mix", "fixed:5",
         "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    j = json.loads(out.read_text())
    assert j["qos_ms"] == 350 and j["errors"] == {} and j["counts"]["ok"] == j["counts"]["sent"] > 100
    assert j["within_qos_pct"] == 100.0
    assert "within QoS" in proc.stdout and "sent" in proc.stderr  # table on stdout, progress on stderr
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_every_query_failing_exits_1_and_shows_the_servers_error(stub, scheme):
    """Batch 1 is the stub's error batch: every query fails with 503 / UNAVAILABLE."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen.cli", "--url", f"{scheme}://127.0.0.1:{stub[scheme]}",
         "--model", "rm2", "--rate", "50", "--duration", "0.5", "--batch-mix", "fixed:1", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    kind = "http_503" if scheme == "http" else "grpc_UNAVAILABLE"
    assert "queries failed or went unsent (100.0%, more than --max-error-rate 0)" in proc.stderr
    assert f"  {kind}: stub: overloaded" in proc.stderr


def test_errors_under_the_allowed_rate_exit_0_and_are_listed_first(stub, tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen.cli", "--url", f"http://127.0.0.1:{stub['http']}",
         "--model", "rm2", "--rate", "100", "--duration", "1", "--batch-mix", "uniform:1-4",
         "--max-error-rate", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    j = json.loads(out.read_text())
    assert 0 < j["counts"]["errors"] < 0.5 * j["counts"]["scheduled"]
    assert j["first_errors"] == ["http_503: stub: overloaded"]  # distinct: one, however many failed
    assert "first errors http_503: stub: overloaded" in " ".join(proc.stdout.split())


@pytest.mark.parametrize(("scheme", "binary"), [("http", False), ("http", True), ("grpc", False)])
async def test_routing_headers_say_what_each_body_says(stub, scheme, binary):
    before = _stats(stub)["routing_headers"]
    cfg = LoadConfig(
        url=f"{scheme}://127.0.0.1:{stub[scheme]}", model="ncf", rate=100.0, queries=60,
        batch_mix="uniform:2-8", binary=binary, seed=5, routing_headers=True,
    )  # fmt: skip
    r = await run_load(cfg)
    after = _stats(stub)["routing_headers"]
    assert r.sent == 60
    assert (after["agree"] - before["agree"], after["disagree"] - before["disagree"]) == (60, 0)
    plain = await run_load(replace(cfg, routing_headers=False))  # not sent unless asked
    assert plain.sent == 60 and _stats(stub)["routing_headers"] == after
