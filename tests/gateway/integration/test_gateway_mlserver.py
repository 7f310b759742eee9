"""A real MLServer behind the gateway, with default settings: a scikit-learn classifier trained
here on scikit-learn's digits, and a model that answers 500 to a wrong feature count (as a
scikit-learn model does). Driven by tritonclient (HTTP JSON, HTTP binary, gRPC) and the KServe
SDK; predictions through the gateway equal MLServer's own. Neither model has a latency profile:
the gateway starts from a prior and learns."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from gateway_process import RunningGateway, launch_gateway

from benchmarks.mlserver import MLServerProcess, mlserver_command, start_mlserver, write_custom_model
from benchmarks.processes import console_script
from gateway.profiles import load_profiles

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
KSERVE_CLIENT = ROOT / "tests" / "clients" / "kserve_client.py"

FEATURES_CODE = '''
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

IMAGES_CODE = '''
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class ImageMean(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.shape[1:] != (3, 8, 8):
            raise ValueError(f"expected images of shape [batch, 3, 8, 8], got {list(x.shape)}")
        out = NumpyCodec.encode_output("mean", x.reshape(len(x), -1).mean(axis=1))
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[out])
'''


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, object]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    return x[:40].astype(np.float64), LogisticRegression(max_iter=3000).fit(x, y)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, object]) -> Iterator[MLServerProcess]:
    if mlserver_command() is None:
        pytest.skip("MLServer is not installed")
    from benchmarks.mlserver import write_sklearn_model

    root = tmp_path_factory.mktemp("mlserver")
    repo = root / "repo"
    write_sklearn_model(repo, "digits", digits[1], inputs=[{"name": "x", "datatype": "FP64", "shape": [-1, 64]}])
    write_custom_model(repo, "features", FEATURES_CODE, "FeatureCount")
    write_custom_model(repo, "images", IMAGES_CODE, "ImageMean",
                       inputs=[{"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]}])
    server = start_mlserver(repo, ["digits", "features", "images"], root / "mlserver.log")
    yield server
    server.stop()


def gateway_for(
    server: MLServerProcess, model: str, directory: Path, grpc: bool = True, profiles: Path | None = None
) -> RunningGateway:
    """A gateway with default settings in front of ``server``, declared in its config."""
    instance = {"type": "local-cpu", "http": server.http_url}
    if grpc:
        instance["grpc"] = server.grpc_address
    config = directory / f"{model}-config.json"
    config.write_text(
        json.dumps(
            {
                "model": model,
                "qos_ms": 500,
                "instances": [instance],
                "instance_types": {"local-cpu": {"price_per_hour": 0.1}},
                "gateway": {"http_port": 0, "grpc_port": 0},
                **({"profiles": str(profiles)} if profiles else {}),
            }
        )
    )
    return launch_gateway(config, [], directory)


def triton_http(url: str, x: np.ndarray, binary: bool) -> tuple[np.ndarray, dict[str, object]]:
    client = th.InferenceServerClient(url.removeprefix("http://"))
    inp = th.InferInput("x", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = th.InferRequestedOutput("predict", binary_data=binary)
    result = client.infer("digits", [inp], outputs=[out], request_id="triton-http")
    client.close()
    return result.as_numpy("predict"), result.get_response().get("parameters", {})


def triton_grpc(address: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    client = tg.InferenceServerClient(address)
    inp = tg.InferInput("x", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    result = client.infer("digits", [inp], request_id="triton-grpc")
    client.close()
    params = result.get_response().parameters
    return result.as_numpy("predict"), {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()}


@pytest.mark.parametrize("grpc_endpoint", [True, False], ids=["http+grpc-instance", "http-only-instance"])
def test_tritonclient_predictions_through_the_gateway_equal_mlservers_own(
    mlserver: MLServerProcess, digits: tuple[np.ndarray, object], tmp_path: Path, grpc_endpoint: bool
) -> None:
    """MLServer has no binary tensor extension: the gateway reads that from its metadata and
    sends JSON tensors (HTTP binary requests rewritten; gRPC forwarded over gRPC, or sent as
    JSON to an HTTP-only instance)."""
    x, model = digits
    own, _ = triton_http(mlserver.http_url, x, binary=False)
    assert np.array_equal(own.ravel(), model.predict(x))  # type: ignore[attr-defined]
    gw = gateway_for(mlserver, "digits", tmp_path, grpc=grpc_endpoint)
    try:
        for binary in (False, True):
            got, params = triton_http(gw.url, x, binary)
            assert np.array_equal(got, own), f"HTTP binary={binary}"
            assert isinstance(params["gateway_e2e_us"], int) and params["gateway_instance"] == "local-cpu-0"
        got, params = triton_grpc(gw.grpc, x)
        assert np.array_equal(got.reshape(own.shape), own)
        assert isinstance(params["gateway_e2e_us"], int) and params["gateway_e2e_us"] > 0
        stderr = gw.stderr()
        assert "no latency profile for model digits on local-cpu" in stderr
        assert "Traceback" not in stderr
    finally:
        gw.stop(signal.SIGKILL)


def test_kserve_sdk_predictions_through_the_gateway_equal_mlservers_own(
    mlserver: MLServerProcess, digits: tuple[np.ndarray, object], tmp_path: Path
) -> None:
    if not KSERVE_PYTHON.exists():
        pytest.skip("the KServe SDK's environment (.venv-kserve, made by `make setup`) is missing")
    x, model = digits
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x).tolist()  # type: ignore[attr-defined]
    gw = gateway_for(mlserver, "digits", tmp_path)
    try:
        done = subprocess.run(
            [str(KSERVE_PYTHON), str(KSERVE_CLIENT)],
            input=json.dumps({"http": gw.url, "grpc": gw.grpc, "model": "digits", "data": str(tmp_path / "x.npy")}),
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        for key in ("rest_json", "rest_binary", "grpc"):
            assert out[key] == expected, key
        # KServe's protobuf has no double parameter: the gateway's times arrive as int64.
        assert out["parameters"]["gateway_e2e_us"]["int64_param"] > 0
        assert out["parameters"]["gateway_instance"] == {"string_param": "local-cpu-0"}
    finally:
        gw.stop(signal.SIGKILL)


def dense(rows: int, features: int, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": request_id,
            "inputs": [
                {"name": "dense", "datatype": "FP32", "shape": [rows, features], "data": [0.5] * (rows * features)}
            ],
        }
    )


async def test_mlserver_500s_for_bad_requests_eject_nothing(mlserver: MLServerProcess, tmp_path: Path) -> None:
    gw = gateway_for(mlserver, "features", tmp_path)
    infer = f"{gw.url}/v2/models/features/infer"
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
        # No profile: the estimates started from a prior and learned from the answers.
        assert 'kairos_estimator_prior{instance_type="local-cpu",model="features"} 1.0' in metrics
        learned = [line for line in metrics.splitlines() if line.startswith("kairos_estimator_observations{")]
        assert learned and float(learned[0].split()[-1]) >= 1
        assert "Traceback" not in gw.stderr()
    finally:
        gw.stop(signal.SIGKILL)


async def test_kairos_profile_profiles_the_mlserver_model_and_the_gateway_runs_with_it(
    mlserver: MLServerProcess, digits: tuple[np.ndarray, object], tmp_path: Path
) -> None:
    out = tmp_path / "profiles" / "digits.json"
    done = subprocess.run(
        [*console_script("kairos-profile", "gateway.profiles.cli"), "--url", f"grpc://{mlserver.grpc_address}",
         "--model", "digits", "--type", "local-cpu", "--out", str(out), "--batches", "1,8,32", "--samples", "10"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # Inputs shaped from MLServer's metadata; MLServer reports no service time: round trips.
    assert "inputs x FP64 [batch, 64]" in done.stderr and "client-measured" in done.stdout
    profile = load_profiles(out).get("digits", "local-cpu")
    assert profile.max_batch == 32 and 0 < profile.mean(1) < 500
    gw = gateway_for(mlserver, "digits", tmp_path, profiles=out.parent)
    try:
        got, _ = triton_http(gw.url, digits[0][:32], binary=True)
        assert np.array_equal(got.ravel(), digits[1].predict(digits[0][:32]))  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
            metrics = await r.text()
        assert 'kairos_estimator_prior{instance_type="local-cpu",model="digits"} 0.0' in metrics
        assert "no latency profile" not in gw.stderr()
        # The profile's largest batch is the gateway's limit now.
        with pytest.raises(Exception, match=r"batch size 40: model .digits. is served in batches of 1 to 32"):
            triton_http(gw.url, digits[0][:40], binary=False)
    finally:
        gw.stop(signal.SIGKILL)


def test_mlserver_grpc_errors_for_bad_requests_go_back_and_eject_nothing(mlserver: MLServerProcess, tmp_path: Path) -> None:
    """Over gRPC, forwarded to MLServer's gRPC endpoint: its error for a wrong feature count is
    the client's answer, and the next client is served."""
    gw = gateway_for(mlserver, "features", tmp_path)
    client = tg.InferenceServerClient(gw.grpc)
    try:
        for i in range(12):
            bad = tg.InferInput("dense", [2, 5], "FP32")
            bad.set_data_from_numpy(np.full((2, 5), 0.5, dtype=np.float32))
            with pytest.raises(tg.InferenceServerException) as err:
                client.infer("features", [bad], request_id=f"bad{i}")
            assert "13" in str(err.value) and "UNAVAILABLE" not in str(err.value)
        good = tg.InferInput("dense", [3, 13], "FP32")
        good.set_data_from_numpy(np.full((3, 13), 0.5, dtype=np.float32))
        result = client.infer("features", [good], request_id="good")
        assert result.as_numpy("output0").ravel().tolist() == [6.5, 6.5, 6.5]
        assert "Traceback" not in gw.stderr()
    finally:
        client.close()
        gw.stop(signal.SIGKILL)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_kairos_loadgen_drives_mlserver_models_with_inputs_from_their_metadata(
    mlserver: MLServerProcess, tmp_path: Path, scheme: str
) -> None:
    """No --input: the load generator reads digits' x FP64 [-1, 64] and images' image FP32
    [-1, 3, 8, 8] from the models' metadata (through the gateway) and every query is answered;
    a wrong --input is MLServer's error, reported."""
    for model in ("digits", "images"):
        gw = gateway_for(mlserver, model, tmp_path)
        url = gw.url if scheme == "http" else f"grpc://{gw.grpc}"
        loadgen = [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", url, "--model", model,
                   "--qos", "500", "--rate", "40", "--queries", "40", "--batch-mix", "uniform:1-16", "--quiet"]
        if scheme == "http" and model == "images":
            loadgen.append("--binary")  # rewritten to JSON tensors for MLServer, four dimensions kept
        try:
            report_path = tmp_path / f"{model}.json"
            done = subprocess.run([*loadgen, "--json", str(report_path)], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            report = json.loads(report_path.read_text())
            assert report["counts"]["ok"] == 40 and report["counts"]["errors"] == 0, model
            assert report["instances"]["local-cpu-0"]["count"] == 40
            wrong = "x:FP64:8x8" if model == "digits" else "image:FP32:3x64"
            failed = subprocess.run([*loadgen, "--input", wrong], capture_output=True, text=True, timeout=120)
            assert failed.returncode == 1 and "40 of 40 queries failed" in failed.stderr, model
            # MLServer's 500 carries its own traceback, on the error's one line; the tools print none.
            assert "Traceback (most recent call last):\n" not in failed.stderr and "Traceback" not in gw.stderr()
        finally:
            gw.stop(signal.SIGKILL)
