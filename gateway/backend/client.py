"""One instance's clients. HTTP requests leave over HTTP, untranslated. gRPC requests leave over
gRPC, untranslated, when ``backend_protocol`` is ``grpc``; when it is ``http`` they are
translated to the HTTP binary tensor extension and back (``GrpcOverHttp``), which costs the
gateway far less CPU than a grpc.aio client call. An instance with one endpoint only gets every
request on that one. ``backend_protocol`` also picks the protocol of readiness probes."""

from __future__ import annotations

from typing import Protocol

from gateway.backend.base import GRPC, HTTP, BackendReply, RoutedRequest
from gateway.backend.grpc_client import GrpcBackend
from gateway.backend.grpc_over_http import GrpcOverHttp
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
        backend_protocol: str = GRPC,
    ) -> None:
        self.name = name
        self.http = HttpBackend(name, http_url) if http_url else None
        self.grpc = GrpcBackend(name, grpc_address) if grpc_address else None
        if backend_protocol == GRPC and self.grpc is None:
            backend_protocol = HTTP
        if backend_protocol == HTTP and self.http is None:
            backend_protocol = GRPC
        self.probe_protocol = backend_protocol
        # Where gRPC requests go: translated to this instance's HTTP endpoint, or as they are.
        self._grpc_infer: GrpcBackend | GrpcOverHttp | None = self.grpc
        if self.http is not None and backend_protocol == HTTP:
            self._grpc_infer = GrpcOverHttp(self.http)

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        backend = self._grpc_infer if request.protocol == GRPC else self.http
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
