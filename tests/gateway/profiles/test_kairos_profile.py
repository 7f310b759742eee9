"""``kairos-profile`` against real endpoints: an emulated instance (its profile comes back within
sampling error, over HTTP and gRPC), bad arguments (one line, exit 2) and an endpoint that fails
(one line, exit 1)."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers.pool import start_pool

from benchmarks.processes import console_script
from gateway.profiles import load_profiles

pytestmark = pytest.mark.slow

BATCHES = (1, 64, 256)
SAMPLES = 120


def profile(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*console_script("kairos-profile", "gateway.profiles.cli"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_profiling_an_emulated_instance_gives_back_its_profile(tmp_path: Path, protocol: str) -> None:
    shipped = load_profiles().get("rm2", "r5n.large")
    out = tmp_path / "rm2.json"
    with start_pool(tmp_path, pool={"r5n.large": 1}, model="rm2") as pool:
        inst = pool.instances[0]
        url = inst.http if protocol == "http" else f"grpc://{inst.grpc}"
        done = profile("--url", url, "--model", "rm2", "--type", "r5n.large", "--out", str(out),
                       "--batches", ",".join(map(str, BATCHES)), "--samples", str(SAMPLES), "--warmup", "2")
    assert done.returncode == 0, done.stderr
    assert "server-measured" in done.stdout and out.with_suffix(".png").stat().st_size > 10_000
    measured = load_profiles(out).get("rm2", "r5n.large")
    assert measured.batches.tolist() == list(BATCHES)
    for b in BATCHES:
        # The instance draws from the shipped profile: the mean comes back within sampling error.
        spread = shipped.quantile(b, 0.95) - shipped.quantile(b, 0.05)
        assert abs(measured.mean(b) - shipped.mean(b)) < 4 * spread / 3.29 / np.sqrt(SAMPLES) + 0.01, b
        assert measured.quantile(b, 0.5) == pytest.approx(shipped.quantile(b, 0.5), rel=0.1)


def test_another_type_is_added_to_an_existing_file_and_client_timing_includes_the_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "rm2.json"
    with start_pool(tmp_path, pool={"r5n.large": 1, "g4dn.xlarge": 1}, model="rm2") as pool:
        for inst in pool.instances:
            done = profile("--url", inst.http, "--model", "rm2", "--type", inst.type, "--out", str(out),
                           "--batches", "8", "--samples", "20", "--timing", "client", "--no-plot")
            assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert set(doc["types"]) == {"r5n.large", "g4dn.xlarge"} and "client-measured" in doc["source"]
    shipped = load_profiles().get("rm2", "r5n.large")
    assert load_profiles(out).get("rm2", "r5n.large").mean(8) > shipped.quantile(8, 0.0)
    assert not out.with_suffix(".png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://x", "--model", "m", "--type", "t"], "--url 'ftp://x': expected http://HOST:PORT"),
        (["--url", "http://x:1", "--model", "a b", "--type", "t"], "model"),
        (["--url", "http://x:1", "--model", "m", "--type", "t", "--batches", "0,4"], "--batches: every batch size"),
        (["--url", "http://x:1", "--model", "m", "--type", "t", "--input", "x:FP64"], "--input 'x:FP64': expected"),
        (["--url", "http://x:1", "--model", "m", "--type", "t", "--samples", "0"], "--samples: expected an integer"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = profile(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_an_endpoint_that_cannot_be_reached_is_a_runtime_failure_exit_1() -> None:
    done = profile("--url", "http://127.0.0.1:9", "--model", "m", "--type", "t")
    assert done.returncode == 1, done.stderr
    assert "GET http://127.0.0.1:9/v2" in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_model_the_server_refuses_stops_with_the_servers_words(tmp_path: Path) -> None:
    with start_pool(tmp_path, pool={"r5n.large": 1}, model="rm2") as pool:
        done = profile("--url", pool.instances[0].http, "--model", "wnd", "--type", "r5n.large",
                       "--out", str(tmp_path / "wnd.json"))
    assert done.returncode == 1 and "HTTP 404" in done.stderr and "wnd" in done.stderr


def test_a_file_with_other_quantile_levels_is_not_overwritten(tmp_path: Path) -> None:
    from gateway.profiles.cli import write_profile
    from gateway.profiles.measure import Measurement

    out = tmp_path / "m.json"
    other = {"model": "m", "unit": "ms", "quantile_levels": [0.0, 1.0],
             "types": {"a": {"batch": [1], "mean": [1.0], "quantiles": [[1.0, 1.0]]}}}
    out.write_text(json.dumps(other))
    from gateway.errors import ProfileError

    with pytest.raises(ProfileError, match="other quantile levels"):
        write_profile(out, "m", "b", Measurement(samples={1: np.array([1.0, 2.0])}), "test")
    assert json.loads(out.read_text()) == other


class _OddServer(http.server.BaseHTTPRequestHandler):
    """A server that is not quite a V2 server: ``pages`` maps a path to (content type, body)."""

    pages: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:
        ctype, body = self.pages.get(self.path, ("application/json", b'{"error": "no"}'))
        self.send_response(200 if self.path in self.pages else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


V2 = ("application/json", b'{"name": "odd", "version": "1", "extensions": []}')


@pytest.mark.parametrize(
    ("pages", "message", "code"),
    [
        ({"/v2": ("text/html", b"<html>hello</html>")}, "not a V2 server's JSON", 1),
        # metadata the tool cannot use: the way out is a flag (--input), a usage error
        ({"/v2": V2, "/v2/models/m": ("application/json",
                                      b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, "n"]}]}')},
         "shape of non-integers", 2),
    ],
)
def test_a_server_that_answers_oddly_stops_with_one_line(pages: dict, message: str, code: int) -> None:
    handler = type("Odd", (_OddServer,), {"pages": pages})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = profile("--url", f"http://127.0.0.1:{server.server_address[1]}", "--model", "m", "--type", "t")
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
