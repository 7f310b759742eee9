"""One gateway: a service per model (core, backend clients, health prober), the data plane over
them and both front ends, started and stopped together on the running event loop.
``kairos-gateway`` runs one; tests may run several."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.backend import InstanceClient
from gateway.config import DEFAULT_MAX_BATCH, Config, ModelConfig
from gateway.core import GatewayCore
from gateway.dataplane import DataPlane
from gateway.dispatch import Dispatcher, OverloadControl
from gateway.errors import ConfigError, Overloaded, ProfileError
from gateway.estimator import LatencyEstimator
from gateway.frontend.grpc import GrpcFrontend
from gateway.frontend.grpcio import start_grpcio_server
from gateway.frontend.http import ClientErrorLog, HttpFrontend
from gateway.grpc_server import GrpcServer
from gateway.grpc_server.server import ServerSettings
from gateway.metrics import GatewayMetrics
from gateway.policies import make_policy
from gateway.pool import Endpoint, HealthProber
from gateway.profiles import LatencyProfile, ProfileSet
from gateway.profiles.prior import prior_profile
from gateway.registry import ModelRegistry, ModelService

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
    types = list(dict.fromkeys(i.type for i in instances))
    try:
        profiles = profiles or config.profile_set()
    except ProfileError as exc:
        raise ConfigError(f"profiles: {exc}") from None
    unprofiled = [t for t in types if not profiles.has(model.name, t)]
    if unprofiled:
        priors = [prior_for(model, t, profiles, types) for t in unprofiled]
        profiles = profiles.merged(ProfileSet({(p.model, p.instance_type): p for p in priors}))
        log.warning(
            "no latency profile for model %s on %s: starting from a prior (%.4g ms at batch 1, "
            "%.4g ms at batch %d) and learning from observed service times; measure one with "
            "kairos-profile",
            model.name, ", ".join(unprofiled), priors[0].means[0], priors[0].means[-1], priors[0].max_batch,
        )
    estimator = LatencyEstimator(profiles, model.name, types, prior_types=unprofiled)
    return Dispatcher(
        make_policy(settings.policy, settings.seed),
        estimator,
        [(i.name, i.type) for i in instances],
        depth=settings.depth,
        max_pending=settings.max_pending,
        pipeline=settings.pipeline,
        overload=OverloadControl.for_mode(settings.late_queries, model.qos_ms, settings.max_wait_ms),
    )


def prior_for(model: ModelConfig, type_name: str, profiles: ProfileSet, types: Sequence[str]) -> LatencyProfile:
    """The prior of an unprofiled type: up to the model's batch limit (its own, else the
    smallest of its profiled types', else ``DEFAULT_MAX_BATCH``)."""
    max_batch = model.max_batch or min(
        (profiles.get(model.name, t).max_batch for t in types if profiles.has(model.name, t)),
        default=DEFAULT_MAX_BATCH,
    )
    return prior_profile(model.name, type_name, model.qos_ms, max_batch)


Endpoints = Sequence[Endpoint] | Mapping[str, Sequence[Endpoint]]


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
        self.instances = by_model
        self.settings = settings
        self.metrics = GatewayMetrics(c.qos_ms for m in config.models for c in m.classes)
        self.registry = ModelRegistry()
        self.plane = DataPlane(self.registry, self.metrics)
        self.http_port = 0
        self.grpc_port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc_server: GrpcServer | grpc.aio.Server | None = None

    def _service(self, model: ModelConfig) -> ModelService:
        cfg, settings = self.config, self.settings
        endpoints = self.instances[model.name]
        dispatcher = build_dispatcher(cfg, endpoints, settings, model=model)
        clients = [InstanceClient(i.name, i.http_url, i.grpc_address, cfg.gateway.backend_protocol) for i in endpoints]
        core = GatewayCore(
            model.name,
            model.qos_ms,
            dispatcher,
            clients,
            self.metrics,
            classes=model.classes,
            default_class=model.default_class,
            backend_timeout_ms=settings.backend_timeout_ms,
            client_margin_ms=settings.client_margin_ms,
            consecutive_errors=cfg.gateway.outlier_consecutive_errors,
            max_attempts=cfg.gateway.max_attempts,
        )
        prober = HealthProber(core.clients, model.name, cfg.gateway.probe_interval_s, core.set_instance_health)
        return ModelService(model, core, prober)

    async def start(self) -> None:
        """Connect to each model's pool, probe it once, and listen on both front ends."""
        cfg = self.config
        for model in cfg.models:
            self.registry.add(self._service(model))
        await asyncio.gather(*(s.prober.probe_all() for s in self.registry if s.prober is not None))
        for service in self.registry:
            if service.prober is not None:
                service.prober.start()

        http = HttpFrontend(
            self.plane, cfg.gateway.max_body_bytes, cfg.gateway.body_timeout_s, cfg.gateway.max_buffered_bytes
        )
        # aiohttp closes a connection that has not sent a whole request head this long after it
        # opened or after its last answer (slowloris; idle keep-alive connections go too).
        self._runner = web.AppRunner(
            http.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
            keepalive_timeout=cfg.gateway.header_timeout_s,
            lingering_time=0.5,  # after an early answer (408, 413), read what still comes briefly, then close
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
                raise ConfigError(f"gateway.grpc_port: cannot listen on {cfg.host}:{self.settings.grpc_port}")
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
        for service in self.registry:
            if service.prober is not None:
                await service.prober.stop()
        await self.plane.close()
