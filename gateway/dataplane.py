"""The transport-agnostic data plane both front ends call: the model check, inference through
the model's core, readiness, the instances to ask for metadata, and the request accounting.
HTTP and gRPC adapters (``gateway.frontend``) only translate to and from it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from gateway.answer_cache import AnswerCache
from gateway.backend import Backend, RoutedRequest
from gateway.core import GatewayCore, InferResult
from gateway.errors import InferenceError, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.protocol.limits import quote
from gateway.protocol.routing import RoutingInfo
from gateway.registry import ModelRegistry

T = TypeVar("T")

OTHER_MODEL = "other"  # the metric label of requests for a model this gateway does not serve
MAX_VERSION_PROBES = 3  # instances asked whether a model version is ready
ANSWER_TTL_S = 1.0  # how long an instance's answer about metadata or readiness is kept


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        # What clients ask of the instances (metadata, a version's readiness): one call per
        # question a second, however often they ask.
        self._answers: AnswerCache[Any] = AnswerCache(ANSWER_TTL_S)

    def core(self, model: str) -> GatewayCore:
        """The model's core (``ModelNotFound`` for a model not served)."""
        return self.registry.get(model).core

    @property
    def ready(self) -> bool:
        """Ready while every model is (server readiness covers all)."""
        return all(s.core.ready for s in self.registry)

    def model_ready(self, model: str) -> bool:
        return self.core(model).ready

    async def version_ready(self, model: str, version: str | None, timeout_s: float) -> bool:
        """Whether ``version`` of ``model`` is ready (None: the model): the model is, and one of
        the first few instances (those in rotation first) says that version is. Few: a probe
        must not fan out over the pool."""
        ready = self.model_ready(model)
        if not ready or version is None:
            return ready
        answer: bool = await self._answers.get(("ready", model, version), lambda: self._version_ready(model, version, timeout_s))
        return answer

    async def _version_ready(self, model: str, version: str, timeout_s: float) -> bool:
        for client, served in self.core(model).metadata_clients()[:MAX_VERSION_PROBES]:
            backend = client.http if client.http is not None else client.grpc
            if backend is not None and await backend.ready(served, timeout_s, version):
                return True
        return False

    def route(self, protocol: str, model: str, info: RoutingInfo, body: bytes, **transport: Any) -> RoutedRequest:
        """The request the core routes, from what a front end parsed (``transport``: its own
        fields, e.g. the HTTP content type or the parsed gRPC message)."""
        return RoutedRequest(
            protocol=protocol,
            model=model,
            batch=info.batch,
            body=body,
            request_id=info.request_id,
            qos_ms=info.qos_ms,
            service_class=info.service_class,
            variant=info.variant,
            late=info.late,
            version=info.version,
            **transport,
        )

    async def infer(self, request: RoutedRequest) -> InferResult:
        return await self.core(request.model).infer(request)

    async def metadata(
        self, model: str, fetch: Callable[[Backend, str], Awaitable[T | None]], question: Hashable
    ) -> T:
        """The model's metadata from the first instance that gives it: ``fetch(client, served
        model name)`` asks one (None: try the next). Unavailable when none answers. Answers are
        kept a second by ``question`` (what the front end asked: its protocol, the version)."""
        self.core(model)  # ModelNotFound before anything is kept
        answer: T = await self._answers.get(("metadata", model, question), lambda: self._metadata(model, fetch))
        return answer

    async def _metadata(self, model: str, fetch: Callable[[Backend, str], Awaitable[T | None]]) -> T:
        for client, served in self.core(model).metadata_clients():
            answer = await fetch(client, served)
            if answer is not None:
                return answer
        raise Unavailable(f"no instance answered metadata for {quote(model)}")

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
