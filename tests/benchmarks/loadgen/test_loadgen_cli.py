"""kairos-loadgen's command line: bad input exits 2 with one clear line; no endpoint exits 1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from benchmarks.loadgen.cli import main

OK = ["--model", "ncf", "--rate", "10", "--duration", "1"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--url", "ftp://127.0.0.1:1", *OK], "expected http://HOST:PORT or grpc://HOST:PORT"),
        (["--url", "http://127.0.0.1:1", "--model", "ncf", "--rate", "0", "--duration", "1"], "--rate 0"),
        (["--url", "http://127.0.0.1:1", "--model", "ncf", "--rate", "-5", "--duration", "1"], "--rate -5"),
        (["--url", "http://127.0.0.1:1", "--model", "bert", "--rate", "1", "--duration", "1"], "no QoS target for model 'bert'"),
        (["--url", "http://127.0.0.1:1", "--model", "ncf", "--rate", "1"], "needs a bound"),
        (["--url", "http://127.0.0.1:1", *OK, "--batch-mix", "odd"], "batch mix 'odd'"),
        (["--url", "http://127.0.0.1:1", *OK, "--ramp", "x"], "--ramp 'x'"),
        (["--url", "http://127.0.0.1:1", *OK, "--protocol", "grpc"], "does not match"),
        (["--url", "http://127.0.0.1:1", *OK, "--rate", "abc"], "invalid float value"),
        (["--model", "ncf"], "--url"),
        (["--url", "http://127.0.0.1:1", *OK, "--max-error-rate", "1.5"], "expected a fraction in [0, 1]"),
        (["--url", "http://127.0.0.1:1", *OK, "--max-error-rate", "nan"], "expected a fraction in [0, 1]"),
        (["--url", "http://127.0.0.1:1", "--model", "ncf", "--rate", "10", "--find-max", "--min-rate", "0"], "--min-rate 0"),
        (["--url", "http://127.0.0.1:1", "--model", "ncf", "--rate", "10", "--find-max", "--start-at",
          str(int(time.time()) + 5)], "not with --find-max"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and err.startswith("kairos-loadgen: error:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_endpoint_exits_1(scheme, capsys):
    code = main(["--url", f"{scheme}://127.0.0.1:{_free_port()}", *OK, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot reach" in err and err.count("\n") == 1
    assert "the connection failed (refused, or nothing listening there)" in err or scheme == "http"


def test_installed_entry_point_reports_bad_scheme():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen.cli", "--url", "tcp://x:1", *OK],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "tcp://x:1" in proc.stderr
