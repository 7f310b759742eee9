"""kairos-loadgen against a real ``kairos-gateway`` in front of a real pool: counts, QoS
accounting, per-instance share from the gateway's parameters, and the JSON schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.loadgen import SCHEMA, LoadConfig, run_load
from benchmarks.processes import GatewayProcess, start_gateway

pool_helpers = pytest.importorskip("helpers.pool")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, list[str]]]:
    directory: Path = tmp_path_factory.mktemp("loadgen-gateway")
    with pool_helpers.start_pool(directory, pool={"g4dn.xlarge": 1, "r5n.large": 2}, model="ncf") as pool:
        gw = start_gateway(pool.config_path, ["--address-file", str(pool.address_file), "--http-port", "0",
                                              "--grpc-port", "0"], directory)
        try:
            yield gw, [inst.name for inst in pool.instances]
        finally:
            assert gw.stop() == 0


@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_loadgen_through_the_gateway(gateway: tuple[GatewayProcess, list[str]], scheme: str) -> None:
    gw, names = gateway
    url = gw.url if scheme == "http" else f"grpc://{gw.grpc}"
    qos = 20.0
    r = await run_load(LoadConfig(url=url, model="ncf", rate=150.0, queries=300, qos_ms=qos, seed=2))
    assert r.samples is not None
    assert r.scheduled == r.sent == 300 and r.sent == r.ok + r.error_count
    assert r.errors == {}
    # Every answer names the instance the gateway chose, and only pool members appear.
    assert sum(r.instances.values()) == r.ok and set(r.instances) <= set(names)
    lat_ms = (np.asarray(r.samples.done_s) - r.samples.scheduled_s) * 1000.0
    assert r.within_qos == int(np.count_nonzero(lat_ms <= qos + 1e-6))
    doc = r.to_json()
    assert doc["schema"] == SCHEMA and doc["qos_ms"] == qos
    assert doc["counts"]["sent"] == 300 and abs(sum(v["share"] for v in doc["instances"].values()) - 1) < 1e-3
    assert {"p50", "p90", "p99", "p99_9", "max"} <= set(doc["latency_ms"])


async def test_a_query_the_gateway_refuses_for_its_deadline_keeps_the_gateways_words(
    gateway: tuple[GatewayProcess, list[str]]
) -> None:
    """gRPC DEADLINE_EXCEEDED from the gateway (no instance can meet 0.05 ms) is the gateway's
    answer, with its reason, not the client's own timeout."""
    gw, _ = gateway
    cfg = LoadConfig(url=f"grpc://{gw.grpc}", model="ncf", rate=50, queries=10, qos_ms=0.05)
    report = await run_load(cfg)
    assert report.errors == {"grpc_DEADLINE_EXCEEDED": 10}
    assert report.first_errors and "deadline" in report.first_errors[0].lower()
