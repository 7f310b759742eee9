"""MLServer, a real third-party V2 server, with scikit-learn models: a model repository written
from Python, and the server started as a process on free loopback ports.

Used by the integration tests, ``benchmarks.variants`` and the README's walk-through. Needs the
``mlserver`` and ``mlserver-sklearn`` packages (the ``test`` extra).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.processes import free_port

SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"
MODEL_FILE = "model.joblib"


def mlserver_command() -> list[str] | None:
    """The ``mlserver`` console script of this environment, or None where it is not installed."""
    script = Path(sys.executable).parent / "mlserver"
    if script.exists():
        return [str(script)]
    found = shutil.which("mlserver")
    return [found] if found else None


def write_sklearn_model(
    repo: Path, name: str, estimator: Any, version: str = "1", inputs: Sequence[dict[str, Any]] = ()
) -> Path:
    """A fitted scikit-learn estimator as an MLServer model directory (joblib + settings).
    ``inputs``: V2 tensor metadata ({"name", "datatype", "shape"}) MLServer then advertises."""
    import joblib  # scikit-learn's own dependency

    directory = repo / name
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, directory / MODEL_FILE)
    settings: dict[str, Any] = {
        "name": name,
        "implementation": SKLEARN_RUNTIME,
        "parameters": {"uri": f"./{MODEL_FILE}", "version": version},
    }
    if inputs:
        settings["inputs"] = list(inputs)
    (directory / "model-settings.json").write_text(json.dumps(settings))
    return directory


def write_custom_model(
    repo: Path, name: str, code: str, class_name: str, inputs: Sequence[dict[str, Any]] = ()
) -> Path:
    """An MLServer model directory whose runtime is ``class_name`` in the module ``code``
    (``inputs``: as for ``write_sklearn_model``)."""
    directory = repo / name
    directory.mkdir(parents=True, exist_ok=True)
    module = f"{name.replace('-', '_')}_runtime"
    (directory / f"{module}.py").write_text(code)
    settings: dict[str, Any] = {"name": name, "implementation": f"{module}.{class_name}"}
    if inputs:
        settings["inputs"] = list(inputs)
    (directory / "model-settings.json").write_text(json.dumps(settings))
    return directory


@dataclass
class MLServerProcess:
    process: subprocess.Popen[bytes]
    http_url: str
    grpc_address: str  # host:port
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mlserver(
    repo: Path, models: Sequence[str], log_path: Path, timeout_s: float = 120.0, parallel_workers: int = 0
) -> MLServerProcess:
    """``mlserver start repo`` on free ports; returns once every model in ``models`` is ready.
    RuntimeError (with the server's log) if it exits or is not ready in ``timeout_s``."""
    command = mlserver_command()
    if command is None:
        raise RuntimeError("MLServer is not installed (pip install mlserver mlserver-sklearn)")
    http_port, grpc_port = free_port(), free_port()
    settings = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": parallel_workers,
        "host": "127.0.0.1",
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*command, "start", str(repo)], stdout=log, stderr=subprocess.STDOUT, cwd=repo)
    server = MLServerProcess(proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path)
    deadline = time.monotonic() + timeout_s
    waiting = list(models)
    while waiting and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MLServer exited ({proc.returncode}): {server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/v2/models/{waiting[0]}/ready", timeout=5) as resp:
                if resp.status == 200:
                    waiting.pop(0)
                    continue
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.3)
    if waiting:
        server.stop()
        raise RuntimeError(f"MLServer: {waiting} not ready in {timeout_s:.0f} s: {server.log()[-3000:]}")
    return server
