"""V2 HTTP/REST front end (aiohttp): health, metadata, model ready, infer, and /metrics.

Infer bodies are parsed only as far as routing needs (the JSON header) and forwarded as they
came; the instance's response comes back with gateway parameters added to its JSON header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.backend import Backend, InstanceFailure
from gateway.backend.base import HTTP
from gateway.backend.http_client import model_path
from gateway.dataplane import DataPlane
from gateway.errors import (
    BadRequest,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from gateway.frontend import EXTENSIONS, METADATA_TIMEOUT_S, SERVER_NAME, SERVER_VERSION
from gateway.frontend.budget import BodyBudget
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.errors import http_error
from gateway.protocol.http_to_grpc import metadata_to_json
from gateway.protocol.limits import check_content_type, check_version
from gateway.protocol.routing import add_json_parameters, gateway_parameters, routing_from_json_body
from gateway.protocol.v2 import INFERENCE_HEADER, parse_header_length

JSON = "application/json"


class HttpFrontend:
    def __init__(
        self,
        plane: DataPlane,
        max_body_bytes: int,
        body_timeout_s: float = 10.0,
        max_buffered_bytes: int | None = None,
        body_pace_bytes_per_s: float = 0.0,
        body_pace_after_bytes: int = 256 * 1024,
    ) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        metrics = plane.metrics
        self.bodies = BodyBudget(
            max_buffered_bytes or max(max_body_bytes, 32 * 1024 * 1024),
            body_pace_bytes_per_s,
            body_pace_after_bytes,
            on_evict=metrics.body_evictions.inc,
            on_paced=metrics.body_paced.inc,
        )
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_v2_errors])
        add = self.app.router.add_route
        add("GET", "/v2/health/live", self.live)
        add("GET", "/v2/health/ready", self.ready)
        add("GET", "/v2", self.server_metadata)
        add("GET", "/metrics", self.metrics)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", prefix, self.model_metadata)
            add("GET", prefix + "/ready", self.model_ready)
            add("POST", prefix + "/infer", self.infer)

    # -- health and metadata --------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return _json(200, {"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.plane.ready
        return _json(200 if ready else 503, {"ready": ready})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(
            200, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            version = check_version(request.match_info.get("version"))
            ready = await self.plane.version_ready(model, version, METADATA_TIMEOUT_S)
        except InferenceError as exc:
            return self._error(exc, None)
        return _json(200 if ready else 503, {"name": model, "ready": ready})

    async def model_metadata(self, request: web.Request) -> web.Response:
        """The instances' own metadata (tensor names, shapes), asked of a healthy one."""
        model = request.match_info["model"]

        async def fetch(client: Backend, served: str) -> tuple[int, bytes, str | None] | None:
            if client.http is None:  # a gRPC-only instance: its metadata translated
                return await _grpc_metadata(client, served, version)
            try:  # the path from validated parts only
                status, body, content_type = await client.http.get(model_path(served, version), METADATA_TIMEOUT_S)
            except InstanceFailure:
                return None
            return (status, body, content_type) if status < 500 else None

        try:
            version = check_version(request.match_info.get("version"))
            status, body, content_type = await self.plane.metadata(model, fetch, (HTTP, version))
        except InferenceError as exc:
            return self._error(exc, model)
        return web.Response(status=status, body=body, content_type=_mime(content_type))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.plane.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    # -- infer ------------------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        received = time.monotonic()  # aiohttp calls the handler once the headers are parsed
        model = request.match_info["model"]
        try:
            self.plane.core(model)  # the model check, before the body is read
            content_type = check_content_type(request.headers.get("Content-Type"))
            body = await self._read_body(request)
            if not body:
                raise BadRequest("empty request body")
            header_length = parse_header_length(request.headers.get(INFERENCE_HEADER), len(body))
            header = body if header_length is None else memoryview(body)[:header_length]
            info = routing_from_json_body(header, request.match_info.get("version"))
            result = await self.plane.infer(
                self.plane.route(
                    HTTP, model, info, body, content_type=content_type, header_length=header_length, received_s=received
                )
            )
        except InferenceError as exc:
            return self._error(exc, model)
        reply = result.reply
        self._count(model, reply.status)
        if not reply.ok:  # the instance's own client error, unchanged
            return web.Response(status=reply.status, body=reply.body, content_type=_mime(reply.content_type))
        e2e_ms = (time.perf_counter() - start) * 1000.0
        params = gateway_parameters(result.instance, result.queue_ms, e2e_ms, result.variant)
        body, header_length = add_json_parameters(reply.body, reply.header_length, params, reply.json_header)
        headers = {"Content-Type": reply.content_type or JSON}
        if header_length is not None:
            headers[INFERENCE_HEADER] = str(header_length)
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body as one bytes object, joined once from the chunks the parser made. Why:
        ``request.read()`` copies a body up to three times (join, bytearray, bytes); at dien's
        ~160 KB bodies it held 12% of the gateway's py-spy samples."""
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        read = self.bodies.open()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise PayloadTooLarge(f"request body larger than {self.max_body_bytes} bytes")
                    if not self.bodies.take(read, len(chunk)):
                        raise Overloaded("the gateway is receiving too many request bytes; retry later")
                    chunks.append(chunk)
                    await self.bodies.pace(read, len(chunk))
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {self.body_timeout_s:g} s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not read.evicted or task is None or task.uncancel():
                raise
            raise RequestTimeout("request body evicted: the gateway's receive buffer is full") from None
        finally:
            self.bodies.close(read)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _count(self, model: str | None, status: int) -> None:
        self.plane.count(model, str(status), HTTP)

    def _error(self, exc: InferenceError, model: str | None) -> web.Response:
        error = http_error(exc)
        self._count(model, error.status)
        return web.Response(status=error.status, body=error.body, headers=error.headers)


async def _grpc_metadata(client: Backend, served: str, version: str | None) -> tuple[int, bytes, str] | None:
    if client.grpc is None:
        return None
    try:
        reply = await client.grpc.model_metadata(
            pb.ModelMetadataRequest(name=served, version=version or ""), METADATA_TIMEOUT_S
        )
    except InstanceFailure:
        return None
    return 200, metadata_to_json(reply), JSON


@web.middleware
async def _v2_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Routes that are not served answer V2 error JSON too, not aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = _json(405, {"error": f"method not allowed here: expected {allowed}"})
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return _json(404, {"error": "no such route: the V2 API is under /v2 (and /metrics)"})


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=JSON)


def _mime(content_type: str | None) -> str:
    return (content_type or JSON).split(";")[0].strip()


class ClientErrorLog(logging.LoggerAdapter):
    """aiohttp's server log with a client's malformed HTTP as one line, not a traceback: any
    client can send it, and a traceback each time floods the log. Other errors keep theirs."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            self.info("%s: %s", str(msg) % args if args else msg, exc, **kwargs)
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)
