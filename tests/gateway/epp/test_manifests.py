"""The endpoint picker's deployment files: the Envoy bootstrap (checked by Envoy itself), the
Kubernetes manifests of the picker and of Envoy (their schemas are checked with the others in
tests/allocator/autoscale/test_kubernetes.py; here, that they agree with each other and with the
picker's config), and the InferencePool example, against the fields of the inference
extension's v1 API."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from benchmarks.envoy import BOOTSTRAP, envoy_binary
from gateway.backend.picked import not_an_ip_address
from gateway.config import parse_config
from gateway.epp.processor import DESTINATION
from gateway.epp.server import EXT_PROC_SERVICE, READINESS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"


def documents(path: Path) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text()) if d}


def envoy_validates(bootstrap: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_envoy_accepts_the_shipped_bootstrap_and_the_kubernetes_one(tmp_path: Path) -> None:
    shipped = yaml.safe_load(BOOTSTRAP.read_text())
    result = envoy_validates(shipped, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    in_cluster = yaml.safe_load(documents(K8S / "envoy-deployment.yaml")["ConfigMap/kairos-envoy-config"]["data"]["envoy.yaml"])
    result = envoy_validates(in_cluster, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(shipped)
    broken["static_resources"]["clusters"][0]["lb_policy"] = "NO_SUCH_POLICY"
    assert envoy_validates(broken, tmp_path).returncode != 0


def test_the_bootstrap_sends_requests_where_the_picker_says() -> None:
    doc = yaml.safe_load(BOOTSTRAP.read_text())
    pool = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "kairos_pool")
    assert pool["type"] == "ORIGINAL_DST" and pool["lb_policy"] == "CLUSTER_PROVIDED"
    assert pool["original_dst_lb_config"] == {"use_http_header": True, "http_header_name": DESTINATION}
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (ext_proc,) = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == "kairos_epp"
    assert not ext_proc["failure_mode_allow"]  # no picker: no request goes anywhere
    mode = ext_proc["processing_mode"]
    # the pick on the request headers; completion from the response headers
    assert mode["request_header_mode"] == "SEND" and mode["response_header_mode"] == "SEND"
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"


def test_the_kubernetes_bootstrap_is_the_shipped_one_with_the_picker_found_by_dns() -> None:
    shipped = yaml.safe_load(BOOTSTRAP.read_text())
    docs = documents(K8S / "envoy-deployment.yaml")
    in_cluster = yaml.safe_load(docs["ConfigMap/kairos-envoy-config"]["data"]["envoy.yaml"])
    epp = next(c for c in in_cluster["static_resources"]["clusters"] if c["name"] == "kairos_epp")
    address = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    picker = documents(K8S / "epp-deployment.yaml")
    service = picker["Service/kairos-epp"]
    (grpc_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert (address["address"], address["port_value"]) == ("kairos-epp.kairos.svc.cluster.local", grpc_port)
    assert epp["type"] == "STRICT_DNS"
    # everything else as shipped: one bootstrap to maintain
    for doc in (shipped, in_cluster):
        c = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "kairos_epp")
        c.pop("type", None)
        c["load_assignment"] = None
    assert shipped == in_cluster
    (container,) = docs["Deployment/kairos-envoy"]["spec"]["template"]["spec"]["containers"]
    listen = in_cluster["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert [p["containerPort"] for p in container["ports"]] == [listen]


def test_the_picker_manifest_matches_its_config() -> None:
    docs = documents(K8S / "epp-deployment.yaml")
    config = parse_config(json.loads(docs["ConfigMap/kairos-epp-config"]["data"]["config.json"]))
    g = config.gateway
    assert g.mode == "epp" and config.host == "0.0.0.0"
    (container,) = docs["Deployment/kairos-epp"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": g.epp_port, "metrics": g.http_port, "admin": g.admin_port}
    assert container["command"][:3] == ["kairos-gateway", "--mode", "epp"]
    # the inference extension's health services, which the picker serves
    assert container["readinessProbe"]["grpc"] == {"port": g.epp_port, "service": "readiness"}
    assert container["livenessProbe"]["grpc"] == {"port": g.epp_port, "service": "liveness"}
    assert "readiness" in READINESS and EXT_PROC_SERVICE in READINESS
    # Envoy's ORIGINAL_DST takes ip:port: the instances are listed by address
    for inst in config.primary.instances:
        for address in (inst.http_url, inst.grpc_address):
            assert address is not None and not_an_ip_address(address) is None


# The fields of inference.networking.k8s.io/v1 InferencePool that the example uses, with their
# bounds (the extension's API reference); additionalProperties false: a misspelt field fails.
INFERENCE_POOL_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector", "targetPorts", "endpointPickerRef"],
    "properties": {
        "selector": {
            "type": "object",
            "additionalProperties": False,
            "required": ["matchLabels"],
            "properties": {
                "matchLabels": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 64,
                    "additionalProperties": {"type": "string", "maxLength": 63},
                }
            },
        },
        "targetPorts": {
            "type": "array",
            "minItems": 1,
            "maxItems": 8,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["number"],
                "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}},
            },
        },
        "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
        "endpointPickerRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "port"],
            "properties": {
                "group": {"type": "string"},
                "kind": {"enum": ["Service"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 253},
                "port": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["number"],
                    "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}},
                },
                "failureMode": {"enum": ["FailOpen", "FailClose"]},
            },
        },
    },
}


def test_the_inference_pool_example_points_at_the_picker_and_the_instances() -> None:
    docs = documents(K8S / "inference-extension" / "inferencepool.yaml")
    pool = docs["InferencePool/rm2"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    jsonschema.validate(pool["spec"], INFERENCE_POOL_SPEC)
    picker = documents(K8S / "epp-deployment.yaml")["Service/kairos-epp"]
    ref = pool["spec"]["endpointPickerRef"]
    (grpc_port,) = [p["port"] for p in picker["spec"]["ports"] if p["name"] == "grpc"]
    assert (ref["name"], ref["port"]["number"]) == (picker["metadata"]["name"], grpc_port)
    # the selector picks the instance pods; the target port is their V2 HTTP port
    instances = [
        d for d in yaml.safe_load_all((K8S / "instance-deployment.yaml").read_text())
        if d and d["kind"] == "Deployment"
    ]  # fmt: skip
    selected = [
        d for d in instances
        if pool["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]  # fmt: skip
    assert selected
    for d in selected:
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert pool["spec"]["targetPorts"][0]["number"] in {p["containerPort"] for p in c["ports"]}
    route = docs["HTTPRoute/rm2"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "rm2"}]


@pytest.mark.parametrize(
    ("path", "value"),
    [(("targetPorts",), []), (("endpointPickerRef", "port", "number"), 70000), (("selector", "matchLabel"), {})],
)
def test_a_broken_inference_pool_fails(path: tuple[str, ...], value: Any) -> None:
    spec = copy.deepcopy(documents(K8S / "inference-extension" / "inferencepool.yaml")["InferencePool/rm2"]["spec"])
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, INFERENCE_POOL_SPEC)
