"""One gateway: a service per model (core, backend clients, health prober), the data plane over
them and both front ends, started and stopped together on the running event loop.
``kairos-gateway`` runs one; tests may run several."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from aiohttp import web

from gateway.admin import AdminApi, NewInstance, admin_token
from gateway.backend import Backend, InstanceClient
from gateway.backend.picked import ANSWER_TIMEOUT_MS, PickedEndpoint, host_port, not_an_ip_address
from gateway.config import DEFAULT_MAX_BATCH, Config, ModelConfig, check_instance_type
from gateway.core import GatewayCore
from gateway.dataplane import DataPlane
from gateway.dispatch import Dispatcher, InstanceState, OverloadControl
from gateway.epp.server import EppServer
from gateway.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    InstanceNotFound,
    ListenError,
    Overloaded,
    ProfileError,
)
from gateway.estimator import LatencyEstimator
from gateway.frontend.grpc import GrpcFrontend
from gateway.frontend.grpcio import start_grpcio_server
from gateway.frontend.http import ClientErrorLog, HttpFrontend
from gateway.grpc_server import GrpcServer
from gateway.grpc_server.server import ServerSettings
from gateway.metrics import GatewayMetrics
from gateway.policies import make_policy
from gateway.pool import Endpoint, HealthProber, probe
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.profiles.prior import prior_profile
from gateway.protocol.limits import MAX_NAME_CHARS
from gateway.registry import ModelRegistry, ModelService
from gateway.variants import kind_of, split_kind

DRAIN_TIMEOUT_S = 60.0
log = logging.getLogger("kairos.gateway")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The effective settings: config file values overridden by command-line flags."""

    policy: str
    depth: int
    max_pending: int
    http_port: int
    grpc_port: int
    grpc_server: str = "native"
    seed: int = 0
    pipeline: bool = True
    backend_timeout_ms: float | None = None
    client_margin_ms: float = 0.0
    late_queries: str = "shed"
    max_wait_ms: float | None = None
    mode: str = "v2"
    epp_port: int = 9002

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> GatewaySettings:
        g = config.gateway
        values: dict[str, object] = {
            "policy": g.policy,
            "depth": g.depth_per_instance,
            "pipeline": g.pipeline,
            "max_pending": g.max_pending,
            "http_port": g.http_port,
            "grpc_port": g.grpc_port,
            "grpc_server": g.grpc_server,
            "client_margin_ms": g.client_margin_ms,
            "late_queries": g.late_queries,
            "max_wait_ms": g.max_wait_ms,
            "mode": g.mode,
            "epp_port": g.epp_port,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def build_dispatcher(
    config: Config,
    instances: Sequence[Endpoint],
    settings: GatewaySettings,
    profiles: ProfileSet | None = None,
    model: ModelConfig | None = None,
) -> Dispatcher:
    """The shared dispatcher core for one model's pool (default: the config's first model). A
    type without a latency profile starts from a prior and learns (logged); a profile file that
    cannot be read is a config error."""
    model = model or config.primary
    # Kinds of instance: a type, or a variant on a type (gateway.variants).
    kinds = list(dict.fromkeys(kind_of(model.name, i.variant, i.type) for i in instances))
    try:
        profiles = profiles or config.profile_set()
    except ProfileError as exc:
        raise ConfigError(f"profiles: {exc}") from None
    unprofiled = [k for k in kinds if not profiles.has(*split_kind(model.name, k))]
    if unprofiled:
        priors = [prior_for(model, k, profiles, kinds) for k in unprofiled]
        profiles = profiles.merged(ProfileSet({(p.model, p.instance_type): p for p in priors}))
        log.warning(
            "no latency profile for model %s on %s: starting from a prior (%.4g ms at batch 1, "
            "%.4g ms at batch %d) and learning from observed service times; measure one with "
            "kairos-profile",
            model.name, ", ".join(unprofiled), priors[0].means[0], priors[0].means[-1], priors[0].max_batch,
        )
    estimator = LatencyEstimator(profiles, model.name, kinds, prior_types=unprofiled)
    return Dispatcher(
        make_policy(settings.policy, settings.seed),
        estimator,
        [(i.name, kind_of(model.name, i.variant, i.type)) for i in instances],
        depth=settings.depth,
        max_pending=settings.max_pending,
        pipeline=settings.pipeline,
        overload=OverloadControl.for_mode(settings.late_queries, model.qos_ms, settings.max_wait_ms),
        model=model.name,
        accuracy={v.name: v.accuracy for v in model.variants if v.accuracy is not None},
    )


def prior_for(model: ModelConfig, kind: str, profiles: ProfileSet, kinds: Sequence[str]) -> LatencyProfile:
    """The prior of an unprofiled kind (a type, or a variant on a type): up to the model's batch
    limit (its own, else the smallest of its profiled kinds', else ``DEFAULT_MAX_BATCH``)."""
    keys = [split_kind(model.name, k) for k in kinds]
    max_batch = model.max_batch or min(
        (profiles.get(*key).max_batch for key in keys if profiles.has(*key)),
        default=DEFAULT_MAX_BATCH,
    )
    variant, type_name = split_kind(model.name, kind)
    return prior_profile(variant, type_name, model.qos_ms, max_batch)


Endpoints = Sequence[Endpoint] | Mapping[str, Sequence[Endpoint]]


def _same_server(e: Endpoint, others: Sequence[Endpoint]) -> Endpoint | None:
    """The first of ``others`` at one of ``e``'s addresses serving the same variant (one server
    serving two models, or two variants, is two instances; the same one twice is not)."""
    for o in others:
        if o.variant == e.variant and (
            (e.http_url is not None and e.http_url == o.http_url)
            or (e.grpc_address is not None and e.grpc_address == o.grpc_address)
        ):
            return o
    return None


class Gateway:
    def __init__(self, config: Config, instances: Endpoints, settings: GatewaySettings) -> None:
        """``instances``: per model name; a plain sequence is the first model's (one model)."""
        by_model = dict(instances) if isinstance(instances, Mapping) else {config.model: list(instances)}
        unknown = sorted(set(by_model) - {m.name for m in config.models})
        if unknown:
            raise ConfigError(f"instances of model {unknown[0]!r}, which the config does not list")
        for m in config.models:
            if not by_model.get(m.name):
                raise ConfigError(f"instances: expected at least one instance of model {m.name!r}")
        self.config = config
        self._initial = by_model
        self.settings = settings
        names = [e.name for endpoints in by_model.values() for e in endpoints]
        if len(names) > config.gateway.max_instances:
            raise ConfigError(f"instances: {len(names)}, more than gateway.max_instances ({config.gateway.max_instances})")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ConfigError(f"instances: name {name!r} is used twice; instance names are unique across models")
            seen.add(name)
        for model, endpoints in by_model.items():
            for k, e in enumerate(endpoints):
                if (twin := _same_server(e, endpoints[:k])) is not None:
                    raise ConfigError(f"instances: {twin.name} and {e.name} of model {model!r} are one server "
                                      "(the same address and variant): its capacity would count twice")
        try:
            self.profiles = config.profile_set()
        except ProfileError as exc:
            raise ConfigError(f"profiles: {exc}") from None
        if settings.mode == "epp":
            for e in (x for v in by_model.values() for x in v):
                if (problem := not_an_ip_address(e.http_url, e.grpc_address)) is not None:
                    raise ConfigError(f"instance {e.name}: {problem}")
        self.admin_token = admin_token(config.gateway.admin_host) if config.gateway.admin_port is not None else None
        self.metrics = GatewayMetrics()
        self.registry = ModelRegistry()
        self.plane = DataPlane(self.registry, self.metrics)
        self.endpoints: dict[str, Endpoint] = {e.name: e for e in (x for v in by_model.values() for x in v)}
        self.http_port = 0
        self.grpc_port = 0
        self.admin_port = 0
        self._admin_runner: web.AppRunner | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc_server: GrpcServer | grpc.aio.Server | None = None
        self._epp: EppServer | None = None
        self.epp_port = 0

    @property
    def picker(self) -> bool:
        """The endpoint picker mode: Envoy carries the payloads (``gateway.epp``)."""
        return self.settings.mode == "epp"

    def _service(self, model: ModelConfig) -> ModelService:
        cfg, settings = self.config, self.settings
        endpoints = self._initial[model.name]
        dispatcher = build_dispatcher(cfg, endpoints, settings, profiles=self.profiles, model=model)
        clients = [self._client(i) for i in endpoints]
        core = GatewayCore(
            model.name,
            model.qos_ms,
            dispatcher,
            clients,
            self.metrics,
            classes=model.classes,
            default_class=model.default_class,
            variants=model.variants,
            # A picked query's instance works on it for as long as Envoy waits for the answer.
            backend_timeout_ms=settings.backend_timeout_ms or (ANSWER_TIMEOUT_MS if self.picker else None),
            client_margin_ms=settings.client_margin_ms,
            consecutive_errors=cfg.gateway.outlier_consecutive_errors,
            # A picked query cannot be sent again: Envoy holds its payload.
            max_attempts=1 if self.picker else cfg.gateway.max_attempts,
        )
        prober = HealthProber(core.clients, model.name, cfg.gateway.probe_interval_s, core.set_instance_health)
        return ModelService(model, core, prober)

    def _client(self, endpoint: Endpoint) -> Backend:
        client = InstanceClient(
            endpoint.name, endpoint.http_url, endpoint.grpc_address, self.config.gateway.backend_protocol,
            served_model=endpoint.variant,
        )  # fmt: skip
        if not self.picker:
            return client
        http, grpc_address = (host_port(a) if a else None for a in (endpoint.http_url, endpoint.grpc_address))
        return PickedEndpoint(client, http, grpc_address)

    # -- the pool admin API's operations (gateway.admin.PoolAdmin) ------------------------------

    def _describe(self, model: str, inst: InstanceState) -> dict[str, Any]:
        endpoint = self.endpoints.get(inst.name)
        return {
            "name": inst.name,
            "model": model,
            "variant": endpoint.variant if endpoint and endpoint.variant else model,
            "type": endpoint.type if endpoint else inst.type_name,
            "state": inst.state,
            "in_flight": len(inst.in_flight),
            "served": inst.served,
            "http": endpoint.http_url if endpoint else None,
            "grpc": endpoint.grpc_address if endpoint else None,
        }

    def instances(self) -> list[dict[str, Any]]:
        return [self._describe(s.config.name, i) for s in self.registry for i in s.core.dispatcher.instances]

    def _holder(self, name: str) -> tuple[ModelService, InstanceState]:
        for service in self.registry:
            inst = service.core.instance(name)
            if inst is not None:
                return service, inst
        raise InstanceNotFound(f"no instance named {name!r}")

    async def add_instance(self, new: NewInstance) -> dict[str, Any]:
        """Add an instance to its model's pool; it joins the rotation once a first probe (at
        once, then the prober's) finds it ready. A type without a profile starts from a prior."""
        service = self.registry.get(new.model)
        endpoint = new.endpoint
        if not endpoint.name:
            taken = {i["name"] for i in self.instances()}
            k = sum(1 for n in taken if n.startswith(f"{endpoint.type}-"))
            while f"{endpoint.type}-{k}" in taken:
                k += 1
            endpoint = replace(endpoint, name=f"{endpoint.type}-{k}")
            if len(endpoint.name) > MAX_NAME_CHARS:
                raise BadRequest(f"type {endpoint.type[:40]!r}...: too long to name its instances; give a name")
        if any(s.core.instance(endpoint.name) is not None for s in self.registry):
            raise Conflict(f"an instance named {endpoint.name!r} is already in the pool")
        present = [self.endpoints[i.name] for i in service.core.dispatcher.instances
                   if i.name in self.endpoints and i.state not in ("draining", "removed")]  # one leaving may come back
        if (twin := _same_server(endpoint, present)) is not None:
            raise Conflict(f"{twin.name} of model {new.model!r} is that server already (the same address and "
                           "variant): its capacity would count twice")
        held = sum(len(s.core.dispatcher.instances) for s in self.registry)
        if held >= self.config.gateway.max_instances:
            raise Conflict(f"the pools hold {held} instances, the most gateway.max_instances allows; remove one first")
        model = service.config
        if (endpoint.variant or model.name) not in model.variant_names:
            raise BadRequest(
                f"unknown variant {endpoint.variant or model.name!r} of model {model.name!r}: expected one of "
                f"{', '.join(model.variant_names)}"
            )
        if self.config.catalogue is not None:
            try:
                check_instance_type(endpoint.type, self.config.catalogue.types, "")
            except ConfigError as exc:
                raise BadRequest(str(exc)) from None
        if self.picker and (problem := not_an_ip_address(endpoint.http_url, endpoint.grpc_address)) is not None:
            raise BadRequest(problem)
        core = service.core
        kind = kind_of(model.name, endpoint.variant, endpoint.type)
        prior = not self.profiles.has(endpoint.variant or model.name, endpoint.type)
        profile = (
            prior_for(model, kind, self.profiles, core.dispatcher.estimator.type_names)
            if prior
            else self.profiles.get(endpoint.variant or model.name, endpoint.type)
        )
        client = self._client(endpoint)
        self._forget_removed()
        self.endpoints[endpoint.name] = endpoint
        inst = core.add_instance(endpoint.name, kind, client, healthy=False, profile=profile, prior=prior)
        ready = await probe(client, model.name, min(self.config.gateway.probe_interval_s, 1.0))
        if core.clients.get(endpoint.name) is client:  # not removed (nor replaced) meanwhile
            core.set_instance_health(endpoint.name, ready)
        return self._describe(model.name, inst)

    def _forget_removed(self) -> None:
        """Drop the addresses of instances that have left the pool (some leave once drained)."""
        present = {i.name for s in self.registry for i in s.core.dispatcher.instances}
        for name in [n for n in self.endpoints if n not in present]:
            del self.endpoints[name]

    def drain_instance(self, name: str) -> dict[str, Any]:
        service, _ = self._holder(name)
        return self._describe(service.config.name, service.core.drain_instance(name))

    def remove_instance(self, name: str) -> dict[str, Any]:
        service, _ = self._holder(name)
        inst = service.core.remove_instance(name)
        described = self._describe(service.config.name, inst)
        self._forget_removed()
        return described

    async def start(self) -> None:
        """Connect to each model's pool, probe it once, and listen on both front ends."""
        cfg = self.config
        for model in cfg.models:
            self.registry.add(self._service(model))
        await asyncio.gather(*(s.prober.probe_all() for s in self.registry if s.prober is not None))
        for service in self.registry:
            if service.prober is not None:
                service.prober.start()
        if self.picker:
            await self._start_picker()
        else:
            await self._start_front_ends()
        if cfg.gateway.admin_port is not None:
            admin = AdminApi(self, self.admin_token)
            self._admin_runner = web.AppRunner(admin.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await self._admin_runner.setup()
            site = web.TCPSite(self._admin_runner, cfg.gateway.admin_host, cfg.gateway.admin_port, reuse_address=True)
            await site.start()
            self.admin_port = int(self._admin_runner.addresses[0][1])

    async def _start_picker(self) -> None:
        self._epp = EppServer(self.plane, self.config.gateway.max_body_bytes)
        await self._epp.start(self.config.host, self.settings.epp_port, self.settings.http_port, self.settings.grpc_server)
        self.epp_port, self.http_port = self._epp.port, self._epp.metrics_port

    async def _start_front_ends(self) -> None:
        cfg = self.config

        http = HttpFrontend(
            self.plane, cfg.gateway.max_body_bytes, cfg.gateway.body_timeout_s, cfg.gateway.max_buffered_bytes,
            cfg.gateway.body_pace_bytes_per_s, cfg.gateway.body_pace_after_bytes,
        )  # fmt: skip
        # aiohttp closes a connection that has not sent a whole request head this long after it
        # opened or after its last answer (slowloris; idle keep-alive connections go too).
        self._runner = web.AppRunner(
            http.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
            keepalive_timeout=cfg.gateway.header_timeout_s,
            lingering_time=0.5,  # after an early answer (408, 413), read what still comes briefly, then close
            # Pause a connection's socket once 32 KiB wait unread (aiohttp's default: 128 KiB): a
            # burst of large bodies then holds little in the loop (docs/hardening.md).
            read_bufsize=16 * 1024,
            logger=ClientErrorLog(logging.getLogger("kairos.gateway.http")),
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, cfg.host, self.settings.http_port, backlog=1024, reuse_address=True
        )
        await self._site.start()
        self.http_port = int(self._runner.addresses[0][1])

        methods = GrpcFrontend(self.plane).methods()
        max_msg = cfg.gateway.max_body_bytes
        if self.settings.grpc_server == "grpcio":
            self._grpc_server, self.grpc_port = await start_grpcio_server(
                methods, cfg.host, self.settings.grpc_port, max_msg
            )
            if self.grpc_port == 0:
                raise ListenError(f"gateway.grpc_port: cannot listen on {cfg.host}:{self.settings.grpc_port}")
        else:
            # A gRPC request must arrive within the same time as an HTTP body.
            limits = ServerSettings(max_message_bytes=max_msg, request_timeout_s=cfg.gateway.body_timeout_s)
            self._grpc_server = GrpcServer(methods, limits)
            self.grpc_port = await self._grpc_server.start(cfg.host, self.settings.grpc_port)

    async def stop(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Graceful: stop accepting, answer every accepted query, then close everything."""
        grpc_stopped = None
        if self._grpc_server is not None:
            grpc_stopped = asyncio.ensure_future(self._grpc_server.stop(grace=drain_timeout_s))
        elif self._epp is not None:
            grpc_stopped = asyncio.ensure_future(self._epp.stop(grace=drain_timeout_s))
        if self._site is not None:
            await self._site.stop()
        try:
            await asyncio.wait_for(self.plane.drain(), drain_timeout_s)
        except TimeoutError:
            # Whatever is still queued gets its one answer before the connections close.
            self.plane.abort_pending(Overloaded("the gateway is shutting down", retry_after_s=1.0))
        if grpc_stopped is not None:
            await grpc_stopped
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        for service in self.registry:
            if service.prober is not None:
                await service.prober.stop()
        await self.plane.close()
