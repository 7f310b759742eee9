"""The picker's listeners: the ext_proc service with the gRPC health service on one port, and
``/metrics`` with plain health checks over HTTP on another.

ext_proc runs on the gateway's own gRPC server (``gateway.grpc_server``, which serves the one
bidirectional stream Envoy holds per request), or on grpc.aio with ``grpc_server: grpcio``:
grpc.aio spends more CPU per stream than the whole rest of the picker (docs/epp.md).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from gateway.dataplane import DataPlane
from gateway.epp.processor import METHOD as EXT_PROC_METHOD
from gateway.epp.processor import SERVICE as EXT_PROC_SERVICE
from gateway.epp.processor import EndpointPicker
from gateway.errors import ListenError
from gateway.grpc_server import GrpcServer, RpcError
from gateway.grpc_server.server import ServerSettings
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
LIVENESS = "liveness"
# The health services the inference extension's protocol names, and the server's (""): SERVING
# while the picker can place queries.
READINESS = ("", "readiness", EXT_PROC_SERVICE)
HEALTH_REFRESH_S = 0.5  # grpc.aio's health servicer holds statuses: how often they are set
# Envoy multiplexes its ext_proc streams over few connections, each held while its query waits.
MAX_STREAMS_PER_CONNECTION = 8192


class EppServer:
    def __init__(self, plane: DataPlane, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self.plane = plane
        self.picker = EndpointPicker(plane, max_message_bytes)
        self.max_message_bytes = max_message_bytes
        self._native: GrpcServer | None = None
        self._grpcio: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._runner: web.AppRunner | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._stopping = False
        self.port = 0
        self.metrics_port = 0

    @property
    def serving(self) -> bool:
        return self.plane.ready and not self._stopping

    async def start(self, host: str, port: int, metrics_port: int, grpc_server: str = "native") -> None:
        if grpc_server == "grpcio":
            await self._start_grpcio(host, port)
        else:
            settings = ServerSettings(
                max_message_bytes=self.max_message_bytes, max_concurrent_streams=MAX_STREAMS_PER_CONNECTION
            )
            self._native = GrpcServer({HEALTH_CHECK: self._check}, settings, streams={EXT_PROC_METHOD: self.picker.serve})
            try:
                self.port = await self._native.start(host, port)
            except OSError as exc:
                raise ListenError(f"gateway.epp_port: cannot listen on {host}:{port}: {exc}") from None

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, metrics_port, reuse_address=True).start()
        self.metrics_port = int(self._runner.addresses[0][1])

    async def _check(self, request: bytes) -> bytes:
        service = health_pb2.HealthCheckRequest.FromString(request).service
        if service == LIVENESS:
            serving = True
        elif service in READINESS:
            serving = self.serving
        else:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"unknown service {service[:64]!r}")
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    async def _start_grpcio(self, host: str, port: int) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                ("grpc.max_receive_message_length", self.max_message_bytes),
            ]
        )
        server.add_generic_rpc_handlers((self.picker.grpcio_handler(),))
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise ListenError(f"gateway.epp_port: cannot listen on {host}:{port}")
        self._grpcio = server
        await self._update_health()
        await server.start()
        self._refresh = asyncio.ensure_future(self._keep_health())

    async def _update_health(self) -> None:
        if self._health is None:
            return
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in READINESS:
            await self._health.set(service, status)

    async def _keep_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            await self._update_health()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.plane.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.serving}, status=200 if self.serving else 503)

    async def stop(self, grace: float | None) -> None:
        """Not ready any more; the streams open finish (up to ``grace`` s), then everything closes."""
        self._stopping = True
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self._native is not None:
            await self._native.stop(grace)
        if self._grpcio is not None:
            await self._update_health()
            await self._grpcio.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
