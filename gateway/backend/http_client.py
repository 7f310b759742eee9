"""V2 HTTP/REST backend client over aiohttp: the body (JSON, or JSON header + binary tensors)
goes out as it came in, with its content headers."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.backend.base import BackendReply, InstanceFailure, RoutedRequest
from gateway.protocol.routing import reported_service_ms_json
from gateway.protocol.v2 import INFERENCE_HEADER


class HttpBackend:
    def __init__(self, name: str, base_url: str, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = session

    def _model_url(self, model: str, version: str | None) -> str:
        url = f"{self.base_url}/v2/models/{model}"
        return f"{url}/versions/{version}" if version else url

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        headers = {}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        if request.header_length is not None:
            headers[INFERENCE_HEADER] = str(request.header_length)
        url = self._model_url(request.model, request.version) + "/infer"
        start = time.perf_counter()
        try:
            async with self._session.post(
                url, data=request.body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                body = await resp.read()
                status = resp.status
                content_type = resp.headers.get("Content-Type")
                raw_length = resp.headers.get(INFERENCE_HEADER)
        except TimeoutError:
            raise InstanceFailure(self.name, f"no answer within {timeout_s:.3f} s", timeout=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise InstanceFailure(self.name, f"{type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise InstanceFailure(self.name, f"HTTP {status}: {body[:200]!r}")
        header_length = int(raw_length) if raw_length and raw_length.isdigit() else None
        rtt = (time.perf_counter() - start) * 1000.0
        service_ms = reported_service_ms_json(body, header_length) if status < 400 else None
        return BackendReply(
            body=body,
            status=status,
            content_type=content_type,
            header_length=header_length,
            service_ms=service_ms,
            round_trip_ms=rtt,
        )

    async def get(self, path: str, timeout_s: float) -> tuple[int, bytes, str | None]:
        """GET a V2 path (metadata) from the instance: status, body, content type."""
        try:
            async with self._session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status, await resp.read(), resp.headers.get("Content-Type")
        except TimeoutError:
            raise InstanceFailure(self.name, f"no answer within {timeout_s:.3f} s", timeout=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise InstanceFailure(self.name, f"{type(exc).__name__}: {exc}") from None

    async def ready(self, model: str, timeout_s: float) -> bool:
        try:
            async with self._session.get(
                self._model_url(model, None) + "/ready", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError, asyncio.CancelledError):
            return False

    async def close(self) -> None:
        pass  # the session is shared and closed by its owner
