"""Importing a package changes no environment variable; the entry points set GRPC_EXPERIMENTS
before grpc loads, unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.grpc_runtime import GRPC_EXPERIMENTS_DEFAULT

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, experiments: str | None = None) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; return its stripped stdout."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def test_importing_the_packages_changes_no_environment_variable() -> None:
    code = "import os; before = dict(os.environ); import gateway, servers, allocator, gateway.app; print(dict(os.environ) == before)"
    assert run(code) == "True"


@pytest.mark.parametrize("entry_point", ["gateway.cli", "servers.cli", "benchmarks.loadgen.cli"])
def test_an_entry_point_sets_the_default_before_grpc_loads(entry_point: str) -> None:
    code = (
        "import sys, os, builtins; real = builtins.__import__; seen = []\n"
        "def spy(name, *a, **k):\n"
        "    if name == 'grpc' and 'grpc' not in sys.modules: seen.append(os.environ.get('GRPC_EXPERIMENTS'))\n"
        "    return real(name, *a, **k)\n"
        f"builtins.__import__ = spy; import {entry_point}; print(seen[0])"
    )
    assert run(code) == GRPC_EXPERIMENTS_DEFAULT


def test_a_user_value_is_kept() -> None:
    code = 'import gateway.cli, os; print(os.environ["GRPC_EXPERIMENTS"])'
    assert run(code, experiments="event_engine_listener") == "event_engine_listener"
