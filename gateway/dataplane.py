"""The transport-agnostic data plane both front ends call: the model check, inference through
the model's core, readiness, the instances to ask for metadata, and the request accounting.
HTTP and gRPC adapters (``gateway.frontend``) only translate to and from it."""

from __future__ import annotations

import asyncio

from gateway.backend import Backend, RoutedRequest
from gateway.core import GatewayCore, InferResult
from gateway.errors import InferenceError
from gateway.metrics import GatewayMetrics
from gateway.registry import ModelRegistry

OTHER_MODEL = "other"  # the metric label of requests for a model this gateway does not serve


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def core(self, model: str) -> GatewayCore:
        """The model's core (``ModelNotFound`` for a model not served)."""
        return self.registry.get(model).core

    @property
    def ready(self) -> bool:
        """Ready while every model is (server readiness covers all)."""
        return all(s.core.ready for s in self.registry)

    def model_ready(self, model: str) -> bool:
        return self.core(model).ready

    async def infer(self, request: RoutedRequest) -> InferResult:
        return await self.core(request.model).infer(request)

    def metadata_clients(self, model: str) -> list[Backend]:
        return self.core(model).metadata_clients()

    def count(self, model: str | None, code: str, protocol: str) -> None:
        """One answered request, by model (``other`` for one not served), code and protocol."""
        label = model if model is not None and model in self.registry else OTHER_MODEL
        self.metrics.requests_of(label, code, protocol).inc()

    @property
    def outstanding(self) -> int:
        return sum(s.core.outstanding for s in self.registry)

    async def drain(self) -> None:
        """Stop accepting queries and wait until every accepted one is answered."""
        await asyncio.gather(*(s.core.drain() for s in self.registry))

    def abort_pending(self, error: InferenceError) -> int:
        return sum(s.core.abort_pending(error) for s in self.registry)

    async def close(self) -> None:
        for s in self.registry:
            await s.core.close()
