"""The gateway's metrics follow Prometheus' conventions, and the Grafana dashboard in deploy/ loads
and asks only for series the gateway and the control loop export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from allocator.autoscale.loop import LoopMetrics
from gateway.metrics import LATENCY_BUCKETS, GatewayMetrics
from gateway.protocol.errors import HTTP_OF_GRPC

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "kairos-gateway.json"


def exported(registry: CollectorRegistry) -> dict[str, str]:
    """Every series name the registry exposes, with its family's type (labelled families included
    before their first sample)."""
    out = {}
    for family in registry.collect():
        if family.type == "counter":
            out[family.name + "_total"] = "counter"
        elif family.type == "histogram":
            out.update({family.name + s: "histogram" for s in ("_bucket", "_sum", "_count")})
        else:
            out[family.name] = family.type
    return out


def test_what_only_grows_is_a_counter_and_gauges_never_say_total() -> None:
    names = exported(GatewayMetrics().registry)
    for name in ("kairos_pipelined_dispatches_total", "kairos_instance_served_total",
                 "kairos_instance_busy_seconds_total", "kairos_requests_total", "kairos_qos_violations_total"):
        assert names.get(name) == "counter", name
    assert not [n for n, t in names.items() if t == "gauge" and n.endswith("_total")]
    assert "kairos_instance_busy_ratio" not in names and names.get("kairos_build_info") == "gauge"
    assert "process_cpu_seconds_total" in names


def test_latency_buckets_do_not_depend_on_the_models_targets() -> None:
    """Two gateways with different models must expose the same bounds, or their histograms cannot
    be added up."""
    a, b = GatewayMetrics(), GatewayMetrics()
    a.e2e.labels("rm2", "default", "http").observe(0.35)
    b.e2e.labels("dien", "default", "http").observe(0.035)

    def bounds(m: GatewayMetrics) -> list[str]:
        return re.findall(r'le="([^"]+)"', m.render().decode().split("kairos_request_duration_seconds_bucket", 1)[1]
                          .split("kairos_request_duration_seconds_count", 1)[0])

    assert bounds(a) == bounds(b) and len(bounds(a)) == len(LATENCY_BUCKETS) + 1


def test_every_grpc_status_has_an_http_equivalent_for_the_code_label() -> None:
    assert set(HTTP_OF_GRPC) == set(grpc.StatusCode)
    assert HTTP_OF_GRPC[grpc.StatusCode.OK] == 200 and HTTP_OF_GRPC[grpc.StatusCode.NOT_FOUND] == 404


def test_the_dashboard_loads_and_asks_only_for_exported_series() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["uid"] and isinstance(doc["schemaVersion"], int)
    names = exported(GatewayMetrics().registry) | exported(LoopMetrics().registry)
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    variables = {v["name"] for v in doc["templating"]["list"]}
    asked = set()
    for p in panels:
        assert p["title"] and p["targets"], p
        for t in p["targets"]:
            expr = t["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr
            asked |= set(re.findall(r"\b((?:kairos|process)_[a-z0-9_]+)", expr))
    for v in doc["templating"]["list"]:
        asked |= set(re.findall(r"\b((?:kairos|process)_[a-z0-9_]+)", v.get("query", "")))
    assert asked and asked <= set(names), sorted(asked - set(names))
    # the heart of it is there: traffic, latency, the share over target, the pool
    for name in ("kairos_requests_total", "kairos_request_duration_seconds_bucket", "kairos_qos_violations_total",
                 "kairos_instance_busy_seconds_total", "kairos_autoscale_target_replicas"):
        assert name in asked, name
