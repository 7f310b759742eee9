"""One instance's clients: gRPC requests leave over gRPC and HTTP requests over HTTP, so bodies
pass through untranslated. ``probe_protocol`` picks the protocol of readiness probes."""

from __future__ import annotations

from typing import Protocol

from gateway.backend.base import GRPC, HTTP, BackendReply, RoutedRequest
from gateway.backend.grpc_client import GrpcBackend
from gateway.backend.http_client import HttpBackend
from gateway.errors import Unavailable


class Backend(Protocol):
    """What the core needs of one instance (``InstanceClient``, or a fake in tests)."""

    name: str
    http: HttpBackend | None
    grpc: GrpcBackend | None

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply: ...

    async def ready(self, model: str, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


class InstanceClient:
    def __init__(
        self,
        name: str,
        http_url: str | None,
        grpc_address: str | None,
        probe_protocol: str = GRPC,
    ) -> None:
        self.name = name
        self.http = HttpBackend(name, http_url) if http_url else None
        self.grpc = GrpcBackend(name, grpc_address) if grpc_address else None
        if probe_protocol == GRPC and self.grpc is None:
            probe_protocol = HTTP
        if probe_protocol == HTTP and self.http is None:
            probe_protocol = GRPC
        self.probe_protocol = probe_protocol

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        backend = self.grpc if request.protocol == GRPC else self.http
        if backend is None:
            raise Unavailable(f"instance {self.name} has no {request.protocol} endpoint")
        return await backend.infer(request, timeout_s)

    async def ready(self, model: str, timeout_s: float) -> bool:
        backend = self.grpc if self.probe_protocol == GRPC else self.http
        assert backend is not None
        return await backend.ready(model, timeout_s)

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        if self.http is not None:
            await self.http.close()
