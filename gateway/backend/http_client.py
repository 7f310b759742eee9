"""V2 HTTP/REST backend client: the body (JSON, or JSON header + binary tensors) goes out as it
came in, with its content headers, over ``http1.Http1Pool`` keep-alive connections (a few µs
per request where aiohttp's client costs ~0.1 ms)."""

from __future__ import annotations

import time

import orjson

from gateway.backend.base import BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.http1 import Http1Pool, HttpError, Response
from gateway.backend.negotiation import ServerInfo
from gateway.endpoint_urls import split_http_url
from gateway.errors import BadRequest, ConfigError
from gateway.protocol.errors import error_body
from gateway.protocol.routing import json_response_header, reported_service_ms_json
from gateway.protocol.translate import binary_request_to_json
from gateway.protocol.v2 import INFERENCE_HEADER

_HEADER_LENGTH_KEY = INFERENCE_HEADER.lower()  # http1 responses have lower-case header names
MAX_CACHED_PATHS = 64
# Answers that say the instance cannot serve now (overloaded, a proxy in front of it failing):
# retried elsewhere. Any other 5xx is an answer, passed back; outlier detection counts it.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
JSON_CONTENT_TYPE = "application/json"
JSON_HEADERS = f"Content-Type: {JSON_CONTENT_TYPE}\r\n"


def model_path(model: str, version: str | None) -> str:
    """A model's V2 path, for validated names only: it goes into a request line."""
    path = f"/v2/models/{model}"
    return f"{path}/versions/{version}" if version else path


class HttpBackend:
    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        try:
            host, port, self.prefix = split_http_url(self.base_url)
        except ConfigError as exc:
            raise ConfigError(f"instance {name}: {exc}") from None
        self._pool = Http1Pool(host, port)
        self._paths: dict[tuple[str, str | None], str] = {}

    def _model_path(self, model: str, version: str | None) -> str:
        return self.prefix + model_path(model, version)

    def _infer_path(self, model: str, version: str | None) -> str:
        path = self._paths.get((model, version))
        if path is None:  # built once per (model, version); versions come from clients: bounded
            path = self._model_path(model, version) + "/infer"
            if len(self._paths) < MAX_CACHED_PATHS:
                self._paths[model, version] = path
        return path

    async def infer(self, request: RoutedRequest, timeout_s: float, binary: bool = True) -> BackendReply:
        """``binary``: the instance takes the binary tensor extension; if not, a request in it is
        sent as plain JSON."""
        body = request.body
        if request.header_length is not None and not binary:
            try:
                body = binary_request_to_json(body, request.header_length)
            except BadRequest as exc:
                return BackendReply(error_body(str(exc)), 400, JSON_CONTENT_TYPE)
            headers = JSON_HEADERS
        else:
            headers = f"Content-Type: {request.content_type}\r\n" if request.content_type else ""
            if request.header_length is not None:
                headers += f"{INFERENCE_HEADER}: {request.header_length}\r\n"
        start = time.perf_counter()
        resp = await self.post_infer(request.model, request.version, headers, body, timeout_s)
        status, body = resp.status, resp.body
        header_length = response_header_length(resp)
        rtt = (time.perf_counter() - start) * 1000.0
        if status >= 400:  # the instance's error answer, passed back unread
            return BackendReply(body, status, resp.headers.get("content-type"), header_length, round_trip_ms=rtt)
        header = json_response_header(body, header_length)
        return BackendReply(
            body=body,
            status=status,
            content_type=resp.headers.get("content-type"),
            header_length=header_length,
            service_ms=reported_service_ms_json(header),
            round_trip_ms=rtt,
            json_header=header,
        )

    async def post_infer(
        self, model: str, version: str | None, headers: str, body: bytes, timeout_s: float
    ) -> Response:
        """POST an infer body; the response unless the instance failed (InstanceFailure:
        refused, reset, timeout, 502-504)."""
        path = self._infer_path(model, version)
        try:
            resp = await self._pool.request("POST", path, headers, body, timeout_s)
        except TimeoutError:
            raise InstanceFailure(self.name, f"no answer within {timeout_s:.3f} s", timeout=True) from None
        except (HttpError, OSError) as exc:
            raise InstanceFailure(self.name, f"{type(exc).__name__}: {exc}") from None
        if resp.status in UNAVAILABLE_STATUSES:
            raise InstanceFailure(self.name, f"HTTP {resp.status}: {resp.body[:200]!r}")
        return resp

    async def get(self, path: str, timeout_s: float) -> tuple[int, bytes, str | None]:
        """GET a V2 path (metadata) from the instance: status, body, content type."""
        try:
            resp = await self._pool.request("GET", self.prefix + path, timeout_s=timeout_s)
        except TimeoutError:
            raise InstanceFailure(self.name, f"no answer within {timeout_s:.3f} s", timeout=True) from None
        except (HttpError, OSError) as exc:
            raise InstanceFailure(self.name, f"{type(exc).__name__}: {exc}") from None
        return resp.status, resp.body, resp.headers.get("content-type")

    async def server_metadata(self, timeout_s: float) -> ServerInfo | None:
        """The server's V2 metadata (``GET /v2``); None if it does not answer with one."""
        try:
            status, body, _ = await self.get("/v2", timeout_s)
            return ServerInfo.from_json(orjson.loads(body)) if status == 200 else None
        except (InstanceFailure, orjson.JSONDecodeError):
            return None

    async def ready(self, model: str, timeout_s: float, version: str | None = None) -> bool:
        try:
            resp = await self._pool.request(
                "GET", self._model_path(model, version) + "/ready", timeout_s=timeout_s
            )
        except (TimeoutError, HttpError, OSError):
            return False
        return resp.status == 200

    async def close(self) -> None:
        await self._pool.close()


def response_header_length(resp: Response) -> int | None:
    """``Inference-Header-Content-Length`` of a response (binary extension), None if absent."""
    raw = resp.headers.get(_HEADER_LENGTH_KEY)
    return int(raw) if raw and raw.isdigit() else None
