"""One instance's clients, and which protocol each request leaves in.

HTTP requests leave over HTTP, untranslated, except that a binary-tensor request goes as plain
JSON to a server without the binary extension. gRPC requests leave over gRPC, untranslated,
when ``backend_protocol`` is ``grpc``; when it is ``http`` they are translated to the instance's
HTTP endpoint (``GrpcOverHttp``: binary tensors where the server takes them, which costs the
gateway far less CPU than a grpc.aio client call), or forwarded over gRPC to a server without
the binary extension that has a gRPC endpoint. What a server supports is read from its server
metadata whenever it becomes ready (``gateway.backend.negotiation``); until then it gets JSON.
An instance with one endpoint only gets every request on that one. ``backend_protocol`` also
picks the protocol of readiness probes."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from gateway.backend.base import GRPC, HTTP, BackendReply, RoutedRequest
from gateway.backend.grpc_client import GrpcBackend
from gateway.backend.grpc_over_http import GrpcOverHttp
from gateway.backend.http_client import HttpBackend
from gateway.backend.http_over_grpc import HttpOverGrpc
from gateway.backend.negotiation import ServerInfo
from gateway.errors import Unavailable
from gateway.protocol.wire import model_name_override

log = logging.getLogger("kairos.gateway.backend")


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
        served_model: str | None = None,
    ) -> None:
        """``served_model``: the model name the instance serves when it is not the request's
        (an instance of a model variant serves the variant's name)."""
        self.name = name
        self.served_model = served_model
        self.http = HttpBackend(name, http_url) if http_url else None
        self.grpc = GrpcBackend(name, grpc_address) if grpc_address else None
        if backend_protocol == GRPC and self.grpc is None:
            backend_protocol = HTTP
        if backend_protocol == HTTP and self.http is None:
            backend_protocol = GRPC
        self.probe_protocol = backend_protocol
        # gRPC requests translated to this instance's HTTP endpoint (None: sent as they are).
        self._over_http = GrpcOverHttp(self.http) if self.http is not None and backend_protocol == HTTP else None
        # HTTP requests translated to this instance's gRPC endpoint, when it has no HTTP one.
        self._over_grpc = HttpOverGrpc(self.grpc) if self.grpc is not None and self.http is None else None
        self.server: ServerInfo | None = None  # what its server supports, once read
        self._ready = False

    @property
    def binary_tensors(self) -> bool:
        return self.server is not None and self.server.binary_tensors

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        served = self.served_model
        if served is not None and request.model != served:
            body = request.body + model_name_override(served) if request.protocol == GRPC else request.body
            request = replace(request, model=served, body=body)
        binary = self.binary_tensors
        if request.protocol == GRPC:
            if self._over_http is not None and (binary or self.grpc is None):
                return await self._over_http.infer(request, timeout_s, binary)
            if self.grpc is None:
                raise Unavailable(f"instance {self.name} has no grpc endpoint")
            return await self.grpc.infer(request, timeout_s)
        if self.http is None:
            if self._over_grpc is None:
                raise Unavailable(f"instance {self.name} has no endpoint")
            return await self._over_grpc.infer(request, timeout_s)
        return await self.http.infer(request, timeout_s, binary)

    async def ready(self, model: str, timeout_s: float) -> bool:
        """Readiness of ``model``; the server's metadata is read again each time it becomes
        ready (a restarted instance may run another server)."""
        backend = self.grpc if self.probe_protocol == GRPC else self.http
        assert backend is not None
        ok = await backend.ready(self.served_model or model, timeout_s)
        if ok and (self.server is None or not self._ready):
            server = await backend.server_metadata(timeout_s)
            if server != self.server:
                log.info("instance %s: %s", self.name, server.describe() if server else "no server metadata")
            self.server = server
        self._ready = ok
        return ok

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        if self.http is not None:
            await self.http.close()
