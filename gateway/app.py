"""One gateway: core, backend clients, health prober and both front ends, started and stopped
together on the running event loop. ``kairos-gateway`` runs one; tests may run several."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web

from gateway.backend import InstanceClient
from gateway.config import DEFAULT_MAX_BATCH, Config
from gateway.core import GatewayCore
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
from gateway.profiles import ProfileSet
from gateway.profiles.prior import prior_profile

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
) -> Dispatcher:
    """The shared dispatcher core for this pool. A type without a latency profile starts from
    a prior and learns (logged); a profile file that cannot be read is a config error."""
    types = list(dict.fromkeys(i.type for i in instances))
    try:
        profiles = profiles or config.profile_set()
    except ProfileError as exc:
        raise ConfigError(f"profiles: {exc}") from None
    unprofiled = [t for t in types if not profiles.has(config.model, t)]
    if unprofiled:
        max_batch = config.max_batch or min(
            (profiles.get(config.model, t).max_batch for t in types if t not in unprofiled),
            default=DEFAULT_MAX_BATCH,
        )
        priors = [prior_profile(config.model, t, config.qos_ms, max_batch) for t in unprofiled]
        profiles = profiles.merged(ProfileSet({(p.model, p.instance_type): p for p in priors}))
        log.warning(
            "no latency profile for model %s on %s: starting from a prior (%.4g ms at batch 1, "
            "%.4g ms at batch %d) and learning from observed service times; measure one with "
            "kairos-profile",
            config.model, ", ".join(unprofiled), priors[0].means[0], priors[0].means[-1], max_batch,
        )
    estimator = LatencyEstimator(profiles, config.model, types, prior_types=unprofiled)
    return Dispatcher(
        make_policy(settings.policy, settings.seed),
        estimator,
        [(i.name, i.type) for i in instances],
        depth=settings.depth,
        max_pending=settings.max_pending,
        pipeline=settings.pipeline,
        overload=OverloadControl.for_mode(settings.late_queries, config.qos_ms, settings.max_wait_ms),
    )


class Gateway:
    def __init__(self, config: Config, instances: Sequence[Endpoint], settings: GatewaySettings) -> None:
        if not instances:
            raise ConfigError("instances: expected at least one instance")
        self.config = config
        self.instances = list(instances)
        self.settings = settings
        self.dispatcher = build_dispatcher(config, instances, settings)
        self.metrics = GatewayMetrics(self.dispatcher, config.model, config.qos_ms)
        self.http_port = 0
        self.grpc_port = 0
        self.core: GatewayCore | None = None
        self._prober: HealthProber | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._grpc_server: GrpcServer | grpc.aio.Server | None = None

    async def start(self) -> None:
        """Connect to the pool, probe it once, and listen on both front ends."""
        cfg = self.config
        clients = [
            InstanceClient(i.name, i.http_url, i.grpc_address, cfg.gateway.backend_protocol)
            for i in self.instances
        ]
        core = GatewayCore(
            cfg.model,
            cfg.qos_ms,
            self.dispatcher,
            clients,
            self.metrics,
            backend_timeout_ms=self.settings.backend_timeout_ms,
            client_margin_ms=self.settings.client_margin_ms,
            consecutive_errors=cfg.gateway.outlier_consecutive_errors,
            max_attempts=cfg.gateway.max_attempts,
        )
        self.core = core
        self._prober = HealthProber(
            core.clients, cfg.model, cfg.gateway.probe_interval_s, core.set_instance_health
        )
        await self._prober.probe_all()
        self._prober.start()

        http = HttpFrontend(
            core, cfg.gateway.max_body_bytes, cfg.gateway.body_timeout_s, cfg.gateway.max_buffered_bytes
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

        methods = GrpcFrontend(core).methods()
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
        if self.core is not None:
            try:
                await asyncio.wait_for(self.core.drain(), drain_timeout_s)
            except TimeoutError:
                # Whatever is still queued gets its one answer before the connections close.
                self.core.abort_pending(Overloaded("the gateway is shutting down", retry_after_s=1.0))
        if grpc_stopped is not None:
            await grpc_stopped
        if self._runner is not None:
            await self._runner.cleanup()
        if self._prober is not None:
            await self._prober.stop()
        if self.core is not None:
            await self.core.close()
