"""The actuator on Kubernetes: one Deployment per (model, variant, type), scaled through its
``scale`` subresource with the official ``kubernetes`` client (the optional extra
``kairos-gateway[kubernetes]``; imported only when an actuator is built, so that the rest of the
project runs without it).

**The labels contract.** The actuator manages the Deployments of its namespace labelled
``app.kubernetes.io/managed-by: kairos-autoscale``; each carries its group in three labels,
``kairos.dev/model``, ``kairos.dev/variant`` (the model's own name when it has no variants) and
``kairos.dev/type``, on the Deployment and on its pod template (so on its pods). Each group has
exactly one Deployment; the template is ``deploy/kubernetes/instance-deployment.yaml``.

**States.** ``groups()`` reads, per Deployment: ready = ``status.readyReplicas`` up to
``spec.replicas`` (a rollout's surge beyond it counts as draining); starting = ``spec.replicas``
minus ready, when positive (pods created and not ready yet, or not created yet); draining = the
group's pods being terminated (they have a ``deletionTimestamp`` and have not finished), from one
list of the namespace's managed pods. ``readyReplicas`` does not count a terminating pod, so the
three never overlap. Of those starting, ``unschedulable`` are the pods the scheduler has no node
for (``PodScheduled`` false, reason ``Unschedulable``) and, while the Deployment reports
``ReplicaFailure`` (a quota refused them), the pods not created, and the pods not ready for
``start_timeout_s`` (their ``Ready`` condition false that long: failing probes, or containers in
``CrashLoopBackOff`` or ``ImagePullBackOff``): the control loop plans around them rather than
wait for them. A group with two Deployments is left out (logged), the others go on.

**What it asks of the API server** is ``PERMISSIONS``, nothing more: list Deployments, patch
``deployments/scale``, list pods. ``deploy/kubernetes/autoscaler-rbac.yaml`` grants exactly that,
and the tests check both the Role and the requests actually sent against it.

**Draining.** Scaling down, the Deployment controller picks the pods to delete; each gets its
``preStop`` hook, then SIGTERM, within ``terminationGracePeriodSeconds``. ``kairos-servers``
answers SIGTERM by closing its listeners and giving the queries it holds their queued time plus
one second (``servers.pool.stop_grace_s``; one second once drained) before it exits, and its
readiness endpoint never turns false before that. So an instance must have stopped receiving queries before SIGTERM: the manifest's
``preStop`` asks the gateway's admin API to remove the pod's instance (``DELETE
/admin/instances/POD_NAME``, repeated while it answers 202, i.e. while the instance still holds
queries; bounded at 20 s) and the grace period (30 s) covers that plus the second of stop.

**How the gateway learns that pods come and go: from this actuator.** The gateway does not
watch Kubernetes; it changes its pool through its admin API. Given the gateway's (``gateway``),
the actuator registers every managed pod that has an address and is not terminating (``POST
/admin/instances`` under the pod's name, its ``http``/``grpc`` container ports: the instance
joins the rotation once the gateway's probe finds it ready), every tick, so a restarted gateway
is told its instances again; it removes the gateway's instance of a pod that went without its
``preStop`` (force-deleted, evicted, its node lost). A group's ``ready`` is then its pods the
gateway has in rotation (a pod Kubernetes calls ready but the gateway does not know serves no
one). Leaving stays with each pod's ``preStop`` hook (``DELETE /admin/instances/POD_NAME``).
A Service in front of the instances would not do: the gateway must see each instance (it places
every query on one), and a ClusterIP Service would show it one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from allocator.autoscale.actuator import GroupKey, GroupState
from allocator.autoscale.admin_api import AdminApiError, GatewayPool
from gateway.errors import KairosError

if TYPE_CHECKING:  # the client is an optional dependency: imported when an actuator is built
    from kubernetes.client import AppsV1Api, CoreV1Api

MODEL_LABEL = "kairos.dev/model"
VARIANT_LABEL = "kairos.dev/variant"
TYPE_LABEL = "kairos.dev/type"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kairos-autoscale"
GROUP_LABELS = (MODEL_LABEL, VARIANT_LABEL, TYPE_LABEL)

# (API group, resource) -> verbs: every request the actuator makes, and the Role it needs.
PERMISSIONS: Mapping[tuple[str, str], frozenset[str]] = {
    ("apps", "deployments"): frozenset({"list"}),
    ("apps", "deployments/scale"): frozenset({"patch"}),
    ("", "pods"): frozenset({"list"}),
}

DEFAULT_PORTS = {"http": 9100, "grpc": 9300}  # kairos-servers' in deploy/kubernetes/instance-deployment.yaml
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_REQUEST_TIMEOUT_S = 10.0
# A label value: at most 63 characters, alphanumerics with - _ . inside.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})

log = logging.getLogger("kairos.autoscale.kubernetes")
T = TypeVar("T")


class KubernetesActuatorError(KairosError):
    """The actuator could not read or change a group: no Deployment for it (or several), or the
    API server refused or could not be reached. ``status`` is the API's HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def group_selector(key: GroupKey | None = None) -> str:
    """The label selector of the managed Deployments (pods), or of ``key``'s only."""
    terms = [f"{MANAGED_BY_LABEL}={MANAGED_BY}"]
    if key is not None:
        for label, value in zip(GROUP_LABELS, (key.model, key.variant, key.type), strict=True):
            if not _LABEL_VALUE.fullmatch(value):
                raise KubernetesActuatorError(
                    f"group {key}: {value!r} cannot be the value of label {label} (at most 63 "
                    "characters, letters, digits and - _ . inside), so no Deployment can carry it"
                )
            terms.append(f"{label}={value}")
    return ",".join(terms)


def labels_for(key: GroupKey) -> dict[str, str]:
    """The labels a group's Deployment, and its pod template, carry."""
    return {MODEL_LABEL: key.model, VARIANT_LABEL: key.variant, TYPE_LABEL: key.type, MANAGED_BY_LABEL: MANAGED_BY}


def _ports(pod: Any) -> dict[str, int]:
    """The pod's ``http`` and ``grpc`` container ports by name (kairos-servers' defaults if unnamed)."""
    out = dict(DEFAULT_PORTS)
    for c in (pod.spec.containers if pod.spec is not None else None) or []:
        for port in c.ports or []:
            if port.name in out:
                out[port.name] = int(port.container_port)
    return out


def _key_of(labels: Mapping[str, str] | None) -> GroupKey | None:
    labels = labels or {}
    model, variant, type_ = (labels.get(label) for label in GROUP_LABELS)
    if not (model and variant and type_):
        return None
    return GroupKey(model, variant, type_)


def _unschedulable(pod: Any) -> bool:
    """The scheduler found no node for the pod (it stays Pending until the cluster changes)."""
    if pod.status is None or pod.status.phase != "Pending" or pod.spec is None or pod.spec.node_name:
        return False
    return any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
               for c in pod.status.conditions or [])


def _not_ready_for(pod: Any, now: datetime.datetime) -> float:
    """Seconds since the pod's ``Ready`` condition turned false (0: ready, or not reported yet)."""
    if pod.status is None:
        return 0.0
    for c in pod.status.conditions or []:
        if c.type == "Ready" and c.status == "False":
            since = c.last_transition_time or pod.metadata.creation_timestamp
            return max((now - since).total_seconds(), 0.0) if since is not None else 0.0
    return 0.0


def _replica_failure(deployment: Any) -> bool:
    """The Deployment reports pods its ReplicaSet could not create (``FailedCreate``: a quota)."""
    status = deployment.status
    return status is not None and any(c.type == "ReplicaFailure" and c.status == "True"
                                      for c in status.conditions or [])


def _api_message(body: object) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the body itself (shortened)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    text = str(doc.get("message") or body) if isinstance(doc, dict) else body
    return text if len(text) <= 300 else text[:297] + "..."


def default_namespace() -> str:
    """The pod's own namespace when running in a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_clients() -> tuple[AppsV1Api, CoreV1Api]:
    """Clients configured as in-cluster (the pod's service account), else from the kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``, current context). Neither changes the client's global
    default configuration."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster:
        try:
            # KUBECONFIG read now: the client reads it once, when first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
        except (config.ConfigException, OSError) as kubeconfig:
            raise KubernetesActuatorError(
                f"no Kubernetes configuration: not in a cluster ({in_cluster}) and no usable kubeconfig ({kubeconfig})"
            ) from None
    api = client.ApiClient(configuration)
    return client.AppsV1Api(api), client.CoreV1Api(api)


class KubernetesActuator:
    """``Actuator`` over the managed Deployments of one namespace.

    ``apps`` and ``core``: clients to use (tests pass ones pointed at a fake API server); by
    default ``default_clients()``. ``namespace``: by default ``default_namespace()``. Every API
    call runs in a worker thread (the client is synchronous) with ``request_timeout_s``.
    """

    def __init__(
        self,
        namespace: str | None = None,
        *,
        apps: AppsV1Api | None = None,
        core: CoreV1Api | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        gateway: GatewayPool | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        """``gateway``: the gateway's pool, to register the pods with (see the module's docstring);
        None: the pods are registered by other means, and ``ready`` is Kubernetes'.
        ``start_timeout_s``: a pod not ready this long is stuck (the module's docstring)."""
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if apps is None or core is None:
            default_apps, default_core = default_clients()
            apps = apps if apps is not None else default_apps
            core = core if core is not None else default_core
        self.apps = apps
        self.core = core
        self.namespace = namespace if namespace is not None else default_namespace()
        self.request_timeout_s = request_timeout_s
        self.gateway = gateway
        self.start_timeout_s = start_timeout_s

    async def groups(self) -> dict[GroupKey, GroupState]:
        """Every managed Deployment's group, with its replicas by state (scaled to zero ones too)."""
        selector = group_selector()
        deployments, pods = await asyncio.gather(
            self._call("list Deployments", self.apps.list_namespaced_deployment, self.namespace, label_selector=selector),
            self._call("list pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector),
        )
        # Typed as Any: the client's models are typed in some versions and not in others, and the
        # API always fills ``metadata`` in a list.
        pod_items: list[Any] = pods.items or []
        deployment_items: list[Any] = deployments.items or []
        draining: dict[GroupKey, int] = {}
        now = datetime.datetime.now(datetime.UTC)
        unplaced: dict[GroupKey, int] = {}  # pods no node fits, or not ready for the start timeout
        created: dict[GroupKey, int] = {}  # pods that exist and are not leaving
        for pod in pod_items:
            key = _key_of(pod.metadata.labels)
            phase = pod.status.phase if pod.status is not None else None
            if key is None or phase in _FINISHED_PHASES:
                continue
            if pod.metadata.deletion_timestamp is not None:
                draining[key] = draining.get(key, 0) + 1
                continue
            created[key] = created.get(key, 0) + 1
            if _unschedulable(pod) or _not_ready_for(pod, now) > self.start_timeout_s:
                unplaced[key] = unplaced.get(key, 0) + 1
        serving = await self._register(pod_items, deployment_items) if self.gateway is not None else None
        out: dict[GroupKey, GroupState] = {}
        names: dict[GroupKey, str] = {}
        duplicated: set[GroupKey] = set()
        for d in deployment_items:
            key = _key_of(d.metadata.labels)
            if key is None:
                log.warning(
                    "Deployment %s is labelled %s=%s but lacks one of %s: ignored",
                    d.metadata.name, MANAGED_BY_LABEL, MANAGED_BY, ", ".join(GROUP_LABELS),
                )
                continue
            if key in names:
                duplicated.add(key)
                log.warning("group %s has two Deployments in namespace %r: %s and %s; expected one: "
                            "left alone until one goes", key, self.namespace, names[key], d.metadata.name)
                continue
            names[key] = d.metadata.name
            wanted = d.spec.replicas if d.spec is not None and d.spec.replicas is not None else 1
            ready = (d.status.ready_replicas if d.status is not None else None) or 0
            if serving is not None:
                ready = min(ready, serving.get(key, 0))  # ready in Kubernetes and in the gateway's rotation
            # A rollout's surge can be ready beyond the spec: those beyond are on their way out.
            starting = max(wanted - ready, 0)
            stuck = unplaced.get(key, 0)
            if _replica_failure(d):  # pods the ReplicaSet could not create (a quota)
                stuck += max(wanted - created.get(key, 0), 0)
            out[key] = GroupState(ready=min(ready, wanted), starting=starting,
                                  draining=draining.get(key, 0) + max(ready - wanted, 0),
                                  unschedulable=min(stuck, starting))
        for key in duplicated:  # one broken group must not stop the others' scaling
            del out[key]
        return out

    async def _register(self, pods: list[Any], deployments: list[Any]) -> dict[GroupKey, int]:
        """Tell the gateway of the pods it lacks, forget those gone without their preStop; per
        group, its pods in the gateway's rotation."""
        assert self.gateway is not None
        known = await self.gateway.instances()
        alive: set[str] = set()
        serving: dict[GroupKey, int] = {}
        for pod in pods:
            key = _key_of(pod.metadata.labels)
            ip = pod.status.pod_ip if pod.status is not None else None
            name = pod.metadata.name
            if key is None or pod.metadata.deletion_timestamp is not None:
                continue
            alive.add(name)
            seen = known.get(name)
            if seen is not None:
                if seen.get("state") == "healthy":
                    serving[key] = serving.get(key, 0) + 1
                continue
            phase = pod.status.phase if pod.status is not None else None
            if not ip or phase in _FINISHED_PHASES:
                continue
            ports = _ports(pod)
            try:
                await self.gateway.add(key.model, key.type, name, f"http://{ip}:{ports['http']}", f"{ip}:{ports['grpc']}",
                                       variant=key.variant)
                log.info("pod %s (%s) added to the gateway", name, key)
            except AdminApiError as exc:
                log.warning("pod %s: the gateway did not take it: %s", name, exc)
        prefixes = tuple(f"{d.metadata.name}-" for d in deployments)
        for name, info in known.items():
            if name not in alive and name.startswith(prefixes) and info.get("state") != "removed":
                try:  # a pod gone without its preStop (force-deleted, evicted, its node lost)
                    await self.gateway.remove(name)
                    log.info("pod %s is gone: removed from the gateway", name)
                except AdminApiError as exc:
                    log.warning("pod %s is gone but the gateway kept it: %s", name, exc)
        return serving

    async def scale(self, key: GroupKey, replicas: int) -> None:
        """Set the replicas of ``key``'s Deployment (its ``scale`` subresource); the Deployment
        controller starts or stops the pods. KubernetesActuatorError if the group has no
        Deployment, or several, or the API refuses."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be an integer >= 0, got {replicas!r}")
        found = await self._call(
            f"list the Deployment of {key}",
            self.apps.list_namespaced_deployment,
            self.namespace,
            label_selector=group_selector(key),
        )
        items: list[Any] = found.items or []
        names: list[str] = sorted(d.metadata.name for d in items)
        if not names:
            raise KubernetesActuatorError(
                f"group {key} has no Deployment in namespace {self.namespace!r} (labels "
                f"{group_selector(key)}): create one from deploy/kubernetes/instance-deployment.yaml"
            )
        if len(names) > 1:
            raise KubernetesActuatorError(
                f"group {key} has {len(names)} Deployments in namespace {self.namespace!r} "
                f"({', '.join(names)}); expected one"
            )
        await self._call(
            f"scale Deployment {names[0]} ({key}) to {replicas}",
            self.apps.patch_namespaced_deployment_scale,
            names[0],
            self.namespace,
            {"spec": {"replicas": replicas}},
        )

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in a worker thread; the client's errors as KubernetesActuatorError."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=self.request_timeout_s, **kwargs)
        except ApiException as exc:
            detail = _api_message(exc.body)
            raise KubernetesActuatorError(
                f"{what} in namespace {self.namespace!r}: the Kubernetes API answered {exc.status} "
                f"{exc.reason or ''}".rstrip() + (f": {detail}" if detail else ""),
                status=exc.status,
            ) from None
        except (HTTPError, OSError) as exc:
            raise KubernetesActuatorError(f"{what}: cannot reach the Kubernetes API: {exc}") from None

