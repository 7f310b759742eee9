"""The Kubernetes actuator and its manifests.

* Every document of ``deploy/kubernetes/*.yaml`` validates offline against the Kubernetes
  OpenAPI schemas that ``kubernetes-validate`` ships (1.30 and the newest), strictly (no unknown
  field); a broken copy fails. The labels contract, the configs in the ConfigMaps (the project's
  own config parser reads them), the probes, grace periods and the preStop hook (run for real
  against a fake admin API), and the RBAC Role (exactly ``PERMISSIONS``).
* ``KubernetesActuator`` with the real ``kubernetes`` client against a fake API server on
  loopback (``http.server`` in a thread) that speaks the part of the API the actuator uses, with
  bodies shaped like the real ones: states, the scale PATCH, errors, and an event loop that keeps
  running while a request is pending.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from allocator.autoscale.actuator import GroupKey, GroupState
from allocator.autoscale.kubernetes import (
    GROUP_LABELS,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PERMISSIONS,
    KubernetesActuator,
    KubernetesActuatorError,
    labels_for,
)
from gateway.app import DRAIN_TIMEOUT_S
from gateway.config import parse_config
from gateway.frontend.grpc import HEALTH_CHECK
from servers.http import HttpFrontEnd
from servers.pool import STOP_GRACE_S

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NS = "kairos"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in MANIFESTS for d in documents(p)]


def managed_deployments() -> list[dict[str, Any]]:
    return [
        d
        for _, d in all_documents()
        if d["kind"] == "Deployment" and d["metadata"].get("labels", {}).get(MANAGED_BY_LABEL) == MANAGED_BY
    ]


def key_of(labels: dict[str, str]) -> GroupKey:
    return GroupKey(*(labels[label] for label in GROUP_LABELS))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """The JSON config a Deployment's pods read (ConfigMap key mounted as config.json)."""
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    name = volume["configMap"]["name"]
    (config_map,) = [d for _, d in all_documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    items = volume["configMap"].get("items")
    key = next(i["key"] for i in items if i["path"] == "config.json") if items else "config.json"
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == volume["name"]]
    assert container(deployment)["command"][-2:] == ["--config", f"{mount['mountPath']}/config.json"]
    return json.loads(config_map["data"][key])


def port_named(c: dict[str, Any], name: str | int) -> int:
    if isinstance(name, int):
        return name
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(port)


# -- the manifests ------------------------------------------------------------------------------


def test_the_manifests_are_there() -> None:
    assert {p.name for p in MANIFESTS} == {
        "instance-deployment.yaml",
        "gateway-deployment.yaml",
        "autoscaler-rbac.yaml",
        "autoscaler-deployment.yaml",
        "epp-deployment.yaml",  # the endpoint picker and Envoy: tests/gateway/epp/test_manifests.py
        "envoy-deployment.yaml",
    }
    kinds = [d["kind"] for _, d in all_documents()]
    for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"):
        assert kind in kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_against_the_openapi_schemas(version: str) -> None:
    checked = []
    for name, doc in all_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked.append(doc["kind"])
    assert len(checked) >= 9  # the check ran over every document, not over none


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (lambda d: d["spec"].__setitem__("replicas", "two"), "spec.replicas"),
        (lambda d: container(d).__setitem__("imagePullPolicyy", "Always"), "imagePullPolicyy"),
        (lambda d: container(d)["readinessProbe"]["httpGet"].pop("port"), "port"),
    ],
    ids=["replicas-not-an-integer", "unknown-field", "probe-without-port"],
)
def test_a_broken_manifest_fails_validation(breakage: Any, where: str) -> None:
    broken = copy.deepcopy(managed_deployments()[0])
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
    assert where.split(".")[-1] in f"{list(caught.value.path)} {caught.value.message}"


def test_instance_deployments_follow_the_labels_contract() -> None:
    deployments = managed_deployments()
    instance_file = [d for d in documents(ROOT / "deploy/kubernetes/instance-deployment.yaml") if d["kind"] == "Deployment"]
    assert deployments == instance_file and len(deployments) >= 2  # every instance Deployment is managed
    keys = [key_of(d["metadata"]["labels"]) for d in deployments]
    assert len(set(keys)) == len(keys), "one Deployment per group"
    assert {k.type for k in keys} == {"r5n.large", "g4dn.xlarge"}
    for d, key in zip(deployments, keys, strict=True):
        name = d["metadata"]["name"]
        assert d["metadata"]["namespace"] == NS
        template = d["spec"]["template"]["metadata"]["labels"]
        assert labels_for(key).items() <= d["metadata"]["labels"].items(), name
        assert labels_for(key).items() <= template.items(), name
        selector = d["spec"]["selector"]
        assert set(selector) == {"matchLabels"} and selector["matchLabels"] == labels_for(key), name
        assert selector["matchLabels"].items() <= template.items(), name
        assert "replicas" not in d["spec"], f"{name}: the autoscaler owns replicas"
        for value in labels_for(key).values():  # valid label values
            assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value)
    gpu = next(d for d, k in zip(deployments, keys, strict=True) if k.type == "g4dn.xlarge")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = next(d for d, k in zip(deployments, keys, strict=True) if k.type == "r5n.large")
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})


def test_each_instance_pod_runs_its_group_with_a_valid_config() -> None:
    for d in managed_deployments():
        key = key_of(d["metadata"]["labels"])
        raw = config_of(d)
        config = parse_config(raw)  # the project's own checks
        (model,) = config.models
        assert model.name == key.model
        assert model.instance_variants() == [(key.type, key.variant)], "one instance of the group"
        assert config.host == "0.0.0.0", "the probes and the gateway reach the pod on its IP"
        c = container(d)
        assert c["command"][0] == "kairos-servers"
        assert port_named(c, "http") == config.servers.http_port
        assert port_named(c, "grpc") == config.servers.grpc_port
        assert config.servers.address_file.startswith("/tmp/")  # the writable emptyDir
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts and c["securityContext"]["readOnlyRootFilesystem"] is True


def test_instance_probes_are_routes_the_servers_answer() -> None:
    routes = {r.canonical for r in HttpFrontEnd(None, 1024).app().router.resources()}  # type: ignore[arg-type]
    for d in managed_deployments():
        c = container(d)
        http_port = port_named(c, "http")
        for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
            get = c[probe]["httpGet"]
            assert get["path"] == path and path in routes
            assert port_named(c, get["port"]) == http_port


def drain_script(deployment: dict[str, Any]) -> str:
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    return str(command[2])


def test_instance_grace_period_covers_the_prestop_drain_and_the_servers_stop() -> None:
    scripts = {drain_script(d) for d in managed_deployments()}
    assert len(scripts) == 1, "every group drains the same way"
    (bound,) = re.findall(r"time\.monotonic\(\) \+ (\d+)", scripts.pop())
    for d in managed_deployments():
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # preStop, then SIGTERM: gRPC and HTTP each get STOP_GRACE_S for what is in flight.
        assert grace >= int(bound) + 2 * STOP_GRACE_S + 5
        env = {e["name"]: e for e in container(d)["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["KAIROS_GATEWAY_ADMIN"]["value"] == "http://kairos-gateway-admin.kairos.svc:8002"


@dataclass
class FakeAdmin:
    """The gateway's admin API, as far as the preStop hook uses it."""

    answers: list[int]
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)


@pytest.fixture
def fake_admin() -> Iterator[tuple[FakeAdmin, str]]:
    admin = FakeAdmin(answers=[])

    class Handler(BaseHTTPRequestHandler):
        def do_DELETE(self) -> None:
            admin.seen.append(("DELETE", self.path, self.headers.get("Authorization")))
            status = admin.answers.pop(0) if admin.answers else 404
            body = json.dumps({"state": "draining" if status == 202 else "removed"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield admin, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_drain(base: str, token: str | None = "s3cret") -> subprocess.CompletedProcess[str]:
    script = drain_script(managed_deployments()[0])
    env = {"POD_NAME": "kairos-rm2-r5n-large-7d9f-abcde", "KAIROS_GATEWAY_ADMIN": base + "/"}
    if token is not None:
        env["KAIROS_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_prestop_removes_the_instance_and_waits_while_it_holds_queries(fake_admin: tuple[FakeAdmin, str]) -> None:
    admin, base = fake_admin
    admin.answers = [202, 202, 200]  # draining, draining, gone
    done = run_drain(base)
    assert done.returncode == 0, done.stderr
    path = "/admin/instances/kairos-rm2-r5n-large-7d9f-abcde"
    assert admin.seen == [("DELETE", path, "Bearer s3cret")] * 3


def test_prestop_stops_at_once_when_the_gateway_does_not_know_the_pod(fake_admin: tuple[FakeAdmin, str]) -> None:
    admin, base = fake_admin
    admin.answers = [404]
    done = run_drain(base, token=None)
    assert done.returncode == 0, done.stderr
    assert admin.seen == [("DELETE", "/admin/instances/kairos-rm2-r5n-large-7d9f-abcde", None)]


def test_prestop_exits_cleanly_when_the_gateway_is_unreachable() -> None:
    from benchmarks.processes import free_port

    done = run_drain(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr


def gateway_documents() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents(ROOT / "deploy/kubernetes/gateway-deployment.yaml")}


def test_gateway_manifest_matches_its_config() -> None:
    docs = gateway_documents()
    deployment = docs["Deployment/kairos-gateway"]
    config = parse_config(config_of(deployment))
    g = config.gateway
    c = container(deployment)
    assert c["command"][0] == "kairos-gateway"
    assert config.host == "0.0.0.0" and g.admin_host == "0.0.0.0" and g.admin_port is not None
    assert (port_named(c, "http"), port_named(c, "grpc"), port_named(c, "admin")) == (g.http_port, g.grpc_port, g.admin_port)
    # off loopback the admin API needs its token: from the Secret, not optional
    (token,) = [e for e in c["env"] if e["name"] == "KAIROS_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == "kairos-admin-token"
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)
    # probes: gRPC health (grpc.health.v1) for readiness, HTTP live for liveness
    assert HEALTH_CHECK == "/grpc.health.v1.Health/Check"
    assert c["readinessProbe"]["grpc"]["port"] == g.grpc_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # the grace period covers preStop's wait and the gateway's own drain of what is in flight
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= c["lifecycle"]["preStop"]["sleep"]["seconds"] + DRAIN_TIMEOUT_S
    assert deployment["spec"]["replicas"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    for name in ("Service/kairos-gateway", "Service/kairos-gateway-admin"):
        assert docs[name]["spec"]["selector"] == selector
    client_ports = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service/kairos-gateway"]["spec"]["ports"]}
    assert client_ports == {"http": (g.http_port, "http"), "grpc": (g.grpc_port, "grpc")}
    admin_ports = {p["name"]: (p["port"], p["targetPort"]) for p in docs["Service/kairos-gateway-admin"]["spec"]["ports"]}
    assert admin_ports == {"admin": (g.admin_port, "admin")}
    # what the instance pods' preStop hooks call
    (instance,) = {e["value"] for d in managed_deployments() for e in container(d)["env"] if e["name"] == "KAIROS_GATEWAY_ADMIN"}
    assert instance == f"http://kairos-gateway-admin.{NS}.svc:{g.admin_port}"


def rbac_documents() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents(ROOT / "deploy/kubernetes/autoscaler-rbac.yaml")}


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def needed() -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for (group, resource), verbs in PERMISSIONS.items() for verb in verbs}


def test_rbac_grants_exactly_what_the_actuator_needs() -> None:
    docs = rbac_documents()
    assert granted(docs["Role"]) == needed()
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": docs["Role"]["metadata"]["name"]}
    account = docs["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    assert account["name"] == "kairos-autoscale"
    assert {d["metadata"]["namespace"] for d in docs.values()} == {NS}


# -- the actuator against a fake API server --------------------------------------------------------


@dataclass
class Gate:
    """Holds one kind of request until released (from the test's event loop)."""

    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


class FakeKube:
    """Deployments and pods of one namespace, served as the API server serves them."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.seen: list[Seen] = []
        self.verbs: set[tuple[str, str, str]] = set()
        self.denied: set[tuple[str, str]] = set()  # (verb, resource) answered 403
        self.gates: dict[tuple[str, str], Gate] = {}
        self.lock = threading.Lock()

    def add_deployment(self, key: GroupKey, replicas: int | None, ready: int | None, name: str | None = None) -> None:
        name = name or f"kairos-{key.model}-{key.variant}-{key.type}".replace(".", "-")
        labels = labels_for(key)
        status: dict[str, Any] = {"observedGeneration": 1, "replicas": replicas or 0}
        if ready:  # the API leaves zero counts out
            status.update(readyReplicas=ready, availableReplicas=ready)
        spec: dict[str, Any] = {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/name": "kairos-instance"}},
                "spec": {"containers": [{"name": "instance", "image": "kairos-gateway:0.1.0"}]},
            },
        }
        if replicas is not None:
            spec["replicas"] = replicas
        self.deployments[name] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": dict(labels),
                "uid": f"uid-{name}",
                "resourceVersion": "100",
                "generation": 1,
                "creationTimestamp": "2026-12-05T17:00:00Z",
            },
            "spec": spec,
            "status": status,
        }

    def add_pod(self, key: GroupKey, name: str, terminating: bool = False, phase: str = "Running",
                ip: str | None = "10.0.0.7", ports: dict[str, int] | None = None,
                conditions: list[dict[str, str]] | None = None) -> None:
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": NS,
            "labels": {**labels_for(key), "pod-template-hash": "7d9f"},
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-12-05T17:00:00Z",
        }
        if terminating:
            metadata.update(deletionTimestamp="2026-12-05T17:05:30Z", deletionGracePeriodSeconds=30)
        self.pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": {"containers": [{"name": "instance", "image": "kairos-gateway:0.1.0", "ports": [
                    {"name": n, "containerPort": port} for n, port in (ports or {}).items()]}]},
                "status": {"phase": phase, **({"podIP": ip} if ip else {}),
                           **({"conditions": conditions} if conditions else {})},
            }
        )

    def hold(self, verb: str, resource: str) -> Gate:
        gate = self.gates[verb, resource] = Gate()
        return gate


def _selected(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        name, sep, value = term.partition("=")
        assert sep and "!" not in name, f"the fake serves equality selectors only, got {term!r}"
        if labels.get(name) != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


class KubeHandler(BaseHTTPRequestHandler):
    server: Any  # ThreadingHTTPServer with .fake

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        fake: FakeKube = self.server.fake
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with fake.lock:
            fake.seen.append(Seen(method, url.path, query, self.headers.get("Content-Type"), body))
        selector = query.get("labelSelector", [None])[0]
        m_list = re.fullmatch(r"/(?:apis/(apps)/v1|api/v1)/namespaces/([^/]+)/(deployments|pods)", url.path)
        m_scale = re.fullmatch(r"/apis/(apps)/v1/namespaces/([^/]+)/deployments/([^/]+)/scale", url.path)
        if method == "GET" and m_list:
            group, ns, resource = m_list.group(1) or "", m_list.group(2), m_list.group(3)
            verb = "list"
        elif method == "PATCH" and m_scale:
            group, ns, resource, name = "apps", m_scale.group(2), "deployments/scale", m_scale.group(3)
            verb = "patch"
        else:
            self._send(404, _status(404, "NotFound", f"the server could not find the requested resource ({method} {url.path})"))
            return
        fake.verbs.add((group, resource, verb))
        gate = fake.gates.get((verb, resource))
        if gate is not None:
            gate.arrived.set()
            if not gate.release.wait(5.0):
                self._send(504, _status(504, "Timeout", "held request never released: the client's event loop was blocked"))
                return
        if (verb, resource) in fake.denied:
            self._send(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'{resource}.{group or "core"} is forbidden: User "system:serviceaccount:kairos:kairos-autoscale" '
                    f'cannot {verb} resource "{resource}" in API group "{group}" in the namespace "{ns}"',
                ),
            )
            return
        if ns != NS:
            kind = "DeploymentList" if resource == "deployments" else "PodList"
            self._send(200, {"kind": kind, "apiVersion": "apps/v1" if group else "v1", "metadata": {"resourceVersion": "1"}, "items": []})
            return
        if verb == "list":
            objects = fake.deployments.values() if resource == "deployments" else fake.pods
            items = [o for o in objects if _selected(o["metadata"]["labels"], selector)]
            kind = "DeploymentList" if resource == "deployments" else "PodList"
            self._send(200, {"kind": kind, "apiVersion": "apps/v1" if group else "v1", "metadata": {"resourceVersion": "123"}, "items": items})
            return
        if self.headers.get("Content-Type") not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            self._send(415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {self.headers.get('Content-Type')}"))
            return
        deployment = fake.deployments.get(name)
        if deployment is None:
            self._send(404, _status(404, "NotFound", f'deployments.apps "{name}" not found'))
            return
        assert isinstance(body, dict)
        replicas = body["spec"]["replicas"]
        deployment["spec"]["replicas"] = replicas
        labels = deployment["spec"]["selector"]["matchLabels"]
        self._send(
            200,
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {"name": name, "namespace": ns, "uid": deployment["metadata"]["uid"], "resourceVersion": "101"},
                "spec": {"replicas": replicas},
                "status": {"replicas": deployment["status"]["replicas"], "selector": ",".join(f"{k}={v}" for k, v in labels.items())},
            },
        )

    def do_GET(self) -> None:
        self._route("GET")

    def do_PATCH(self) -> None:
        self._route("PATCH")


@dataclass
class Cluster:
    fake: FakeKube
    host: str

    def actuator(self, **kwargs: Any) -> KubernetesActuator:
        configuration = k8s.Configuration(host=self.host)
        api = k8s.ApiClient(configuration)
        return KubernetesActuator(NS, apps=k8s.AppsV1Api(api), core=k8s.CoreV1Api(api), **kwargs)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), KubeHandler)
    server.daemon_threads = True
    fake = FakeKube()
    server.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Cluster(fake, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        for gate in fake.gates.values():
            gate.release.set()
        server.shutdown()
        server.server_close()


CPU = GroupKey("rm2", "rm2", "r5n.large")
GPU = GroupKey("rm2", "rm2", "g4dn.xlarge")
SMALL = GroupKey("rm2", "rm2-small", "r5n.large")


def populate(fake: FakeKube) -> None:
    fake.add_deployment(CPU, replicas=13, ready=10)
    fake.add_deployment(GPU, replicas=1, ready=1)
    fake.add_deployment(SMALL, replicas=0, ready=None)  # scaled to zero: still a group
    for i in range(10):
        fake.add_pod(CPU, f"kairos-rm2-r5n-large-7d9f-{i:05d}")
    fake.add_pod(CPU, "kairos-rm2-r5n-large-7d9f-old01", terminating=True)
    fake.add_pod(CPU, "kairos-rm2-r5n-large-7d9f-old02", terminating=True)
    fake.add_pod(CPU, "kairos-rm2-r5n-large-7d9f-done1", terminating=True, phase="Succeeded")  # finished
    fake.add_pod(GPU, "kairos-rm2-g4dn-xlarge-5c8b-00000")


async def test_groups_reads_each_deployments_state(cluster: Cluster) -> None:
    populate(cluster.fake)
    # A Deployment with the managed-by label but no group labels is ignored; one without the
    # managed-by label is not the actuator's.
    cluster.fake.add_deployment(CPU, replicas=2, ready=2, name="half-labelled")
    del cluster.fake.deployments["half-labelled"]["metadata"]["labels"]["kairos.dev/type"]
    cluster.fake.add_deployment(GroupKey("other", "other", "r5n.large"), replicas=4, ready=4, name="not-ours")
    del cluster.fake.deployments["not-ours"]["metadata"]["labels"][MANAGED_BY_LABEL]
    states = await cluster.actuator().groups()
    assert states == {
        CPU: GroupState(ready=10, starting=3, draining=2),
        GPU: GroupState(ready=1, starting=0, draining=0),
        SMALL: GroupState(ready=0, starting=0, draining=0),
    }
    lists = [s for s in cluster.fake.seen if s.method == "GET"]
    assert sorted(s.path for s in lists) == [f"/api/v1/namespaces/{NS}/pods", f"/apis/apps/v1/namespaces/{NS}/deployments"]
    for s in lists:
        assert s.query["labelSelector"] == [f"{MANAGED_BY_LABEL}={MANAGED_BY}"]


async def test_groups_counts_a_deployment_without_replicas_as_one_and_more_ready_as_none_starting(cluster: Cluster) -> None:
    cluster.fake.add_deployment(CPU, replicas=None, ready=None)  # spec.replicas defaults to 1
    cluster.fake.add_deployment(GPU, replicas=2, ready=3)  # a rolling update's surge
    assert await cluster.actuator().groups() == {
        CPU: GroupState(ready=0, starting=1, draining=0),
        GPU: GroupState(ready=2, starting=0, draining=1),  # the surge beyond the spec: leaving
    }


UNSCHEDULABLE = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                  "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]


async def test_groups_counts_pods_the_cluster_has_no_room_for(cluster: Cluster) -> None:
    cluster.fake.add_deployment(GPU, replicas=4, ready=1)
    cluster.fake.add_pod(GPU, "gpu-ready")
    cluster.fake.add_pod(GPU, "gpu-pulling", phase="Pending", ip=None,  # placed, its image on its way
                         conditions=[{"type": "PodScheduled", "status": "True"}])
    cluster.fake.add_pod(GPU, "gpu-nowhere-1", phase="Pending", ip=None, conditions=UNSCHEDULABLE)
    cluster.fake.add_pod(GPU, "gpu-nowhere-2", phase="Pending", ip=None, conditions=UNSCHEDULABLE)
    cluster.fake.add_pod(GPU, "gpu-leaving", terminating=True, phase="Pending", ip=None, conditions=UNSCHEDULABLE)
    # A quota let the ReplicaSet create 2 of 5 pods: the 3 never created cannot serve either.
    cluster.fake.add_deployment(CPU, replicas=5, ready=1)
    cluster.fake.deployments["kairos-rm2-rm2-r5n-large"]["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": 'pods "x" is forbidden: exceeded quota: compute'}]
    cluster.fake.add_pod(CPU, "cpu-ready")
    cluster.fake.add_pod(CPU, "cpu-starting", phase="Pending", ip=None)
    states = await cluster.actuator().groups()
    assert states[GPU] == GroupState(ready=1, starting=3, draining=1, unschedulable=2)
    assert states[GPU].placed == 2
    assert states[CPU] == GroupState(ready=1, starting=4, unschedulable=3)
    # Once the quota is lifted (the condition gone), pods not yet created are only starting.
    del cluster.fake.deployments["kairos-rm2-rm2-r5n-large"]["status"]["conditions"]
    assert (await cluster.actuator().groups())[CPU] == GroupState(ready=1, starting=4)


def _ready_false_since(minutes: float) -> list[dict[str, str]]:
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes)
    return [{"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
             "lastTransitionTime": at.strftime("%Y-%m-%dT%H:%M:%SZ")}]


async def test_groups_counts_pods_not_ready_for_the_start_timeout_as_stuck(cluster: Cluster) -> None:
    # A crash loop, an image that never pulls, a probe that never passes: not ready for good.
    # Counted as starting, they held the plan's capacity and stopped the reaction for ever.
    cluster.fake.add_deployment(CPU, replicas=4, ready=1)
    cluster.fake.add_pod(CPU, "cpu-ready")
    cluster.fake.add_pod(CPU, "cpu-crashing", conditions=_ready_false_since(20))
    cluster.fake.add_pod(CPU, "cpu-loading", conditions=_ready_false_since(1))
    cluster.fake.add_pod(CPU, "cpu-pending", phase="Pending", ip=None)
    assert (await cluster.actuator().groups())[CPU] == GroupState(ready=1, starting=3, unschedulable=1)
    assert (await cluster.actuator(start_timeout_s=30).groups())[CPU] == GroupState(ready=1, starting=3, unschedulable=2)


async def test_two_deployments_for_one_group_leave_that_group_alone_only(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.fake.add_deployment(CPU, replicas=1, ready=1, name="a")
    cluster.fake.add_deployment(CPU, replicas=1, ready=1, name="b")
    cluster.fake.add_deployment(GPU, replicas=1, ready=1, name="gpu")
    assert await cluster.actuator().groups() == {GPU: GroupState(ready=1)}  # the GPU group still scales
    assert any("two Deployments" in r.message and "a and b" in r.message for r in caplog.records)
    with pytest.raises(KubernetesActuatorError, match=r"2 Deployments.*a, b"):
        await cluster.actuator().scale(CPU, 2)
    assert not [s for s in cluster.fake.seen if s.method == "PATCH"]


async def test_scale_patches_the_groups_deployment(cluster: Cluster) -> None:
    populate(cluster.fake)
    actuator = cluster.actuator()
    await actuator.scale(CPU, 7)
    await actuator.scale(SMALL, 2)
    patches = [s for s in cluster.fake.seen if s.method == "PATCH"]
    assert [(p.path, p.body) for p in patches] == [
        (f"/apis/apps/v1/namespaces/{NS}/deployments/kairos-rm2-rm2-r5n-large/scale", {"spec": {"replicas": 7}}),
        (f"/apis/apps/v1/namespaces/{NS}/deployments/kairos-rm2-rm2-small-r5n-large/scale", {"spec": {"replicas": 2}}),
    ]
    assert all(p.content_type == "application/strategic-merge-patch+json" for p in patches)
    # found by the group's labels, all four
    (lookup, *_) = [s for s in cluster.fake.seen if s.method == "GET"]
    assert set(lookup.query["labelSelector"][0].split(",")) == {f"{k}={v}" for k, v in labels_for(CPU).items()}
    states = await actuator.groups()
    assert states[CPU] == GroupState(ready=7, starting=0, draining=5)  # 7 wanted, 10 ready: 3 on their way out
    assert states[SMALL] == GroupState(ready=0, starting=2, draining=0)
    assert states[GPU] == GroupState(ready=1, starting=0, draining=0)


async def test_scale_of_a_group_without_deployment_is_a_clear_error(cluster: Cluster) -> None:
    populate(cluster.fake)
    missing = GroupKey("rm2", "rm2", "c5.xlarge")
    with pytest.raises(KubernetesActuatorError, match=r"rm2@c5\.xlarge has no Deployment in namespace 'kairos'") as caught:
        await cluster.actuator().scale(missing, 3)
    assert caught.value.status is None
    assert not [s for s in cluster.fake.seen if s.method == "PATCH"]
    with pytest.raises(KubernetesActuatorError, match=r"cannot be the value of label kairos\.dev/type"):
        await cluster.actuator().scale(GroupKey("rm2", "rm2", "x" * 64), 1)
    with pytest.raises(ValueError, match="replicas"):
        await cluster.actuator().scale(CPU, -1)


async def test_api_errors_surface_with_their_status(cluster: Cluster) -> None:
    populate(cluster.fake)
    cluster.fake.denied.add(("patch", "deployments/scale"))
    with pytest.raises(KubernetesActuatorError) as caught:
        await cluster.actuator().scale(CPU, 5)
    assert caught.value.status == 403
    message = str(caught.value)
    assert "403" in message and "Forbidden" in message and "kairos-rm2-rm2-r5n-large" in message
    assert 'cannot patch resource "deployments/scale"' in message  # the API's own words
    cluster.fake.denied.add(("list", "pods"))
    with pytest.raises(KubernetesActuatorError, match=r"list pods in namespace 'kairos': the Kubernetes API answered 403") as listed:
        await cluster.actuator().groups()
    assert listed.value.status == 403


async def test_an_unreachable_api_server_is_an_actuator_error() -> None:
    from benchmarks.processes import free_port

    configuration = k8s.Configuration(host=f"http://127.0.0.1:{free_port()}")
    configuration.retries = 0
    api = k8s.ApiClient(configuration)
    actuator = KubernetesActuator(NS, apps=k8s.AppsV1Api(api), core=k8s.CoreV1Api(api), request_timeout_s=2.0)
    with pytest.raises(KubernetesActuatorError, match="cannot reach the Kubernetes API"):
        await actuator.groups()


async def test_the_event_loop_runs_while_a_request_is_pending(cluster: Cluster) -> None:
    populate(cluster.fake)
    gate = cluster.fake.hold("list", "deployments")
    task = asyncio.create_task(cluster.actuator().groups())
    ticks = 0
    async with asyncio.timeout(5.0):
        while not gate.arrived.is_set():  # the request is on its way: the loop still runs
            await asyncio.sleep(0.005)
        for _ in range(5):  # and keeps running while the server holds it
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()
        gate.release.set()  # only this coroutine can release it: a blocked loop never gets here
        states = await task
    assert ticks == 5
    assert states[CPU] == GroupState(ready=10, starting=3, draining=2)


def test_default_clients_come_from_the_kubeconfig_outside_a_cluster(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(cluster.fake)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": cluster.host}}],
                "users": [{"name": "autoscaler", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "autoscaler", "namespace": NS}}],
                "current-context": "fake",
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    before = k8s.Configuration.get_default_copy().host
    actuator = KubernetesActuator(NS)
    assert asyncio.run(actuator.groups())[GPU] == GroupState(ready=1, starting=0, draining=0)
    assert k8s.Configuration.get_default_copy().host == before  # the global default is untouched
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubernetesActuatorError, match="no Kubernetes configuration"):
        KubernetesActuator(NS)


def test_the_rest_of_the_project_does_not_need_the_client() -> None:
    code = "import sys, allocator.autoscale.kubernetes; assert 'kubernetes' not in sys.modules, 'imported eagerly'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_the_requests_sent_are_exactly_what_the_role_grants(cluster: Cluster) -> None:
    populate(cluster.fake)
    actuator = cluster.actuator()
    await actuator.groups()
    await actuator.scale(GPU, 2)
    await actuator.scale(CPU, 0)
    assert cluster.fake.verbs == needed() == granted(rbac_documents()["Role"])


async def test_the_actuator_registers_its_pods_with_a_real_gateway_and_counts_what_it_serves(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two pods (real emulated instances on loopback) the gateway does not know: each tick adds
    them under their pod names; a group is ready only as far as the gateway serves its pods; a pod
    gone without its preStop (force-deleted) leaves the gateway too; a restarted gateway would be
    told again (the same path)."""
    import aiohttp
    from helpers.pool import start_pool

    from allocator.autoscale.admin_api import GatewayPool
    from benchmarks.processes import start_gateway

    with start_pool(tmp_path / "pool", pool={"r5n.large": 3}, model="rm2") as pool:
        first, *pods = pool.instances
        config = tmp_path / "gateway.json"
        config.write_text(json.dumps({
            "model": "rm2", "qos_ms": 350,
            "instances": [{"name": first.name, "type": first.type, "http": first.http, "grpc": first.grpc}],
            "gateway": {"http_port": 0, "grpc_port": 0, "admin_port": 0, "probe_interval_s": 0.2}}))
        gw = start_gateway(config, [], tmp_path)
        try:
            admin = "http://" + gw.ready_line.rsplit(" admin=", 1)[1].split()[0]
            cluster.fake.add_deployment(CPU, replicas=2, ready=2, name="kairos-rm2")
            for i, inst in enumerate(pods):
                host, http_port = inst.http.removeprefix("http://").rsplit(":", 1)
                cluster.fake.add_pod(CPU, f"kairos-rm2-7d9f-{i}", ip=host,
                                     ports={"http": int(http_port), "grpc": int(inst.grpc.rsplit(":", 1)[1])})
            async with aiohttp.ClientSession() as s:
                gateway = GatewayPool(s, admin)
                actuator = cluster.actuator(gateway=gateway)
                first_look = await actuator.groups()
                assert first_look[CPU] == GroupState(ready=0, starting=2)  # Kubernetes-ready, not yet served
                assert {"kairos-rm2-7d9f-0", "kairos-rm2-7d9f-1"} <= set(await gateway.instances())
                for _ in range(50):
                    if (await actuator.groups())[CPU].ready == 2:
                        break
                    await asyncio.sleep(0.1)
                assert (await actuator.groups())[CPU] == GroupState(ready=2)
                cluster.fake.pods = [p for p in cluster.fake.pods if p["metadata"]["name"] != "kairos-rm2-7d9f-1"]
                await actuator.groups()  # force-deleted: no preStop ran
                assert set(await gateway.instances()) == {first.name, "kairos-rm2-7d9f-0"}
        finally:
            assert gw.stop() == 0


def test_the_command_takes_kubernetes_instead_of_the_servers_admin_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside a cluster and without a kubeconfig: one line saying so, exit 1. The servers' admin
    API and --kubernetes exclude each other; one of them is needed."""
    from allocator.autoscale.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    flags = ["--config", str(Path(__file__).resolve().parents[3] / "config.json"), "--gateway", "http://127.0.0.1:9",
             "--gateway-admin", "http://127.0.0.1:9"]
    with pytest.raises(SystemExit) as done:
        main([*flags, "--kubernetes", "kairos", "--duration", "1"])
    assert done.value.code == 1 and "no Kubernetes configuration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main([*flags, "--kubernetes", "--servers-admin", "http://127.0.0.1:9"])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(flags)
    assert done.value.code == 2 and "one of the arguments --servers-admin --kubernetes is required" in capsys.readouterr().err


def test_the_autoscaler_runs_as_its_service_account_against_the_gateways_services() -> None:
    from allocator.autoscale.cli import build_parser

    (deployment,) = documents(ROOT / "deploy/kubernetes/autoscaler-deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == rbac_documents()["ServiceAccount"]["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    c = container(deployment)
    args = build_parser().parse_args(c["command"][1:])
    assert args.kubernetes == NS and args.servers_admin is None
    docs = gateway_documents()
    g = parse_config(config_of(docs["Deployment/kairos-gateway"])).gateway
    assert args.gateway == f"http://kairos-gateway.{NS}.svc:{g.http_port}"
    assert args.gateway_admin == f"http://kairos-gateway-admin.{NS}.svc:{g.admin_port}"
    assert spec["volumes"][0]["configMap"]["name"] == docs["ConfigMap/kairos-gateway-config"]["metadata"]["name"]
    (token,) = [e for e in c["env"] if e["name"] == "KAIROS_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == "kairos-admin-token"
