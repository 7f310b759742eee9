"""Start real ``kairos-gateway`` processes on loopback in front of real ``kairos-servers`` pools,
and talk V2 to them with a small asynchronous client."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from helpers.pool import RunningPool

READY = re.compile(r"^kairos-gateway ready http=(\S+) grpc=(\S+)")


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "kairos-gateway"
    if script.exists():
        return [str(script)]
    found = shutil.which("kairos-gateway")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


@dataclass
class RunningGateway:
    process: subprocess.Popen[str]
    http: str
    grpc: str
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
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


def gateway_config(pool_config: Path, directory: Path, qos_ms: float | None = None, **gateway: Any) -> Path:
    """The pool's config with a gateway section for tests: free ports, fast probes."""
    doc = json.loads(pool_config.read_text())
    if qos_ms is not None:
        doc["qos_ms"] = qos_ms
    doc["gateway"] = {"http_port": 0, "grpc_port": 0, "probe_interval_s": 0.2, **gateway}
    path = directory / "gateway-config.json"
    path.write_text(json.dumps(doc))
    return path


def launch_gateway(config: Path, args: Sequence[str], directory: Path, timeout_s: float = 30.0) -> RunningGateway:
    stderr_path = directory / f"gateway-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [*gateway_command(), "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if m := READY.match(line):
            return RunningGateway(proc, m.group(1), m.group(2), stderr_path)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"kairos-gateway did not start (exit {proc.returncode}): {stderr_path.read_text()}")


def instance_flags(*pools: RunningPool) -> list[str]:
    """``--instance TYPE=http://...,grpc://...`` for every instance of ``pools``."""
    return [
        arg
        for pool in pools
        for inst in pool.instances
        for arg in ("--instance", f"{inst.type}={inst.http},grpc://{inst.grpc}")
    ]




def json_request(batch: int, request_id: str = "", **parameters: Any) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "input0", "shape": [batch, 1], "datatype": "FP32", "data": [0.5] * batch}]
    }
    if request_id:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    return orjson.dumps(doc)


async def post_infer(
    session: aiohttp.ClientSession, url: str, model: str, body: bytes
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST one infer; (status, JSON body, headers)."""
    async with session.post(f"{url}/v2/models/{model}/infer", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else {}, dict(resp.headers)
