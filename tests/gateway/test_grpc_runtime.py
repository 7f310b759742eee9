"""GRPC_EXPERIMENTS is set on import of ``gateway`` (before grpc loads) unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_importing_gateway_sets_the_default() -> None:
    assert run('import gateway, os; print(os.environ["GRPC_EXPERIMENTS"])') == GRPC_EXPERIMENTS_DEFAULT


def test_a_user_value_is_kept() -> None:
    code = 'import gateway, os; print(os.environ["GRPC_EXPERIMENTS"])'
    assert run(code, experiments="event_engine_listener") == "event_engine_listener"


def test_importing_servers_sets_it_before_grpc_loads() -> None:
    code = "import servers, sys, os; print('grpc' in sys.modules, os.environ['GRPC_EXPERIMENTS'])"
    assert run(code) == f"False {GRPC_EXPERIMENTS_DEFAULT}"
