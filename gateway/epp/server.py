"""The picker's listeners: the ext_proc service with the gRPC health service on one port (grpc.aio:
Envoy holds one stream per request, which the gateway's own server, unary only, does not serve),
and ``/metrics`` with plain health checks over HTTP on another."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from gateway.dataplane import DataPlane
from gateway.epp.processor import EndpointPicker
from gateway.errors import ListenError
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# The health services the inference extension's protocol names, and the server's ("").
READINESS = ("", "readiness", EXT_PROC_SERVICE)
HEALTH_REFRESH_S = 0.5


class EppServer:
    def __init__(self, plane: DataPlane, addresses: dict[str, str]) -> None:
        self.plane = plane
        self.picker = EndpointPicker(plane, addresses)
        self.health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._stopping = False
        self.port = 0
        self.metrics_port = 0

    async def start(self, host: str, port: int, metrics_port: int) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 4096)])
        ep_grpc.add_ExternalProcessorServicer_to_server(self.picker, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise ListenError(f"gateway.epp_port: cannot listen on {host}:{port}")
        self._server = server
        await self._update_health()
        await server.start()
        self._refresh = asyncio.ensure_future(self._keep_health())

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, metrics_port, reuse_address=True).start()
        self.metrics_port = int(self._runner.addresses[0][1])

    async def _update_health(self) -> None:
        await self.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        ready = self.plane.ready and not self._stopping
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in READINESS:
            await self.health.set(service, status)

    async def _keep_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            await self._update_health()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.plane.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self.plane.ready and not self._stopping
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def stop(self, grace: float | None) -> None:
        """Not ready any more; the streams open finish (up to ``grace`` s), then everything closes."""
        self._stopping = True
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self._server is not None:
            await self._update_health()
            await self._server.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
