"""kairos-loadgen against a real ``kairos-servers`` pool (1 emulated instance, model ncf)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.loadgen import SCHEMA, LoadConfig, run_load

pool_helpers = pytest.importorskip("helpers.pool")


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> Iterator[dict[str, str]]:
    with pool_helpers.start_pool(tmp_path_factory.mktemp("ncf-pool"), pool={"g4dn.xlarge": 1}, model="ncf") as pool:
        inst = pool.instances[0]
        yield {"http": inst.http, "grpc": f"grpc://{inst.grpc}", "name": inst.name}


@pytest.mark.parametrize(("scheme", "binary"), [("http", False), ("http", True), ("grpc", False)])
async def test_loadgen_drives_a_real_instance(instance, scheme, binary):
    cfg = LoadConfig(url=instance[scheme], model="ncf", rate=100.0, duration_s=1.5, binary=binary, seed=4)
    r = await run_load(cfg)
    assert r.samples is not None
    assert r.scheduled == r.sent and r.sent == r.ok + r.error_count
    assert r.errors == {} and r.ok > 100
    assert r.instances == {instance["name"]: r.ok}  # the instance reports itself on every response
    lat_ms = (np.asarray(r.samples.done_s) - r.samples.scheduled_s) * 1000.0
    assert r.within_qos == int(np.count_nonzero(lat_ms <= 5.0))  # ncf's QoS, the default
    j = r.to_json()
    assert j["schema"] == SCHEMA and j["qos_ms"] == 5.0
    assert j["instances"][instance["name"]]["share"] == 1.0
