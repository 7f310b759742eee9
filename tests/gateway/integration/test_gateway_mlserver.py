"""A real MLServer behind the gateway, answering 500 to a request with the wrong feature count
(as a scikit-learn model does): the client gets that answer, the instance stays in rotation, and
the next client is served. Skipped where MLServer is not installed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from gateway_process import RunningGateway, launch_gateway
from helpers.pool import free_port

pytestmark = pytest.mark.slow

MODEL_CODE = '''
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class FeatureCount(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.ndim != 2 or x.shape[1] != 13:
            raise ValueError(f"X has {x.shape[-1]} features, but the model is expecting 13")
        out = NumpyCodec.encode_output("output0", x.sum(axis=1, keepdims=True))
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[out])
'''


def mlserver_command() -> list[str] | None:
    script = Path(sys.executable).parent / "mlserver"
    if script.exists():
        return [str(script)]
    found = shutil.which("mlserver")
    return [found] if found else None


@pytest.fixture
def mlserver(tmp_path: Path) -> Iterator[str]:
    """A started MLServer serving "rm2" (the feature-count model); its HTTP URL."""
    command = mlserver_command()
    if command is None:
        pytest.skip("MLServer is not installed")
    root = tmp_path / "mlserver"
    (root / "rm2").mkdir(parents=True)
    (root / "rm2" / "features.py").write_text(MODEL_CODE)
    (root / "rm2" / "model-settings.json").write_text(
        json.dumps({"name": "rm2", "implementation": "features.FeatureCount"})
    )
    http_port = free_port()
    settings = {"http_port": http_port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
    (root / "settings.json").write_text(json.dumps(settings))
    log = open(tmp_path / "mlserver.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([*command, "start", str(root)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"MLServer exited: {(tmp_path / 'mlserver.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v2/models/rm2/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("MLServer did not become ready in 60 s")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def dense(rows: int, features: int, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": request_id,
            "inputs": [
                {"name": "dense", "datatype": "FP32", "shape": [rows, features], "data": [0.5] * (rows * features)}
            ],
        }
    )


async def test_mlserver_500s_for_bad_requests_eject_nothing(mlserver: str, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": "rm2",
                "pool": [{"type": "r5n.large", "count": 1}],
                "gateway": {"http_port": 0, "grpc_port": 0, "probe_interval_s": 30.0},
            }
        )
    )
    gw: RunningGateway = launch_gateway(config, ["--instance", f"r5n.large={mlserver}"], tmp_path)
    infer = f"{gw.url}/v2/models/rm2/infer"
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(12):  # one client's bad requests, more than any run that ejects
                async with s.post(infer, data=dense(2, 5, f"bad{i}"), headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 500, await r.text()
            async with s.post(infer, data=dense(3, 13, "good"), headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
            assert doc["id"] == "good" and doc["outputs"][0]["data"] == [6.5, 6.5, 6.5]
            async with s.get(f"{gw.url}/metrics") as r:
                metrics = await r.text()
        assert "kairos_health_changes_total{" not in metrics  # no instance left the rotation
        assert "Traceback" not in gw.stderr()
    finally:
        gw.stop(signal.SIGKILL)
