"""The README's session by hand, run as written (in a copy of the default config's directory):
servers and gateway started back to back, the load generator, the metrics, then both stopped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def session_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A session by hand\s+```bash\n(.*?)```", text, re.S)
    assert block, "the README has no session by hand"
    lines = [ln.split("  #", 1)[0].rstrip() for ln in block[1].splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("make setup")]  # the venv is this one


def test_the_session_by_hand_works_as_written(tmp_path: Path) -> None:
    commands = session_commands()
    assert commands[0].startswith("kairos-servers") and commands[1].startswith("kairos-gateway")
    assert commands[-1].startswith("kill")
    shutil.copy(ROOT / "config.json", tmp_path / "config.json")
    # on any failure the background jobs go too: they hold the ports and the output pipes
    script = "set -e\ntrap 'rc=$?; kill $(jobs -p) 2>/dev/null || true; exit $rc' EXIT\n" + "\n".join(commands) + "\nwait\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "100.00% of sent" in out.stdout or "within QoS" in out.stdout, out.stdout[-2000:]
    assert "kairos_requests_total" in out.stdout  # the metrics, through curl
    assert (tmp_path / "run.png").stat().st_size > 10_000
    assert not (tmp_path / ".kairos" / "instances.json").exists()  # the servers removed theirs
