"""Fake instances for GatewayCore tests: a behaviour per instance (answer after a delay, fail),
each call counted by request id. The core's own logic runs unchanged around them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from gateway.app import GatewaySettings, build_dispatcher
from gateway.backend import BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.base import GRPC
from gateway.clock import Clock
from gateway.config import ServiceClass, parse_config
from gateway.core import GatewayCore
from gateway.pool import Endpoint

Behaviour = Callable[[RoutedRequest], Awaitable[BackendReply]]


class FakeInstance:
    http = None
    grpc = None

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.behaviour = behaviour
        self.calls: Counter[str] = Counter()

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        self.calls[request.request_id] += 1
        try:
            return await asyncio.wait_for(self.behaviour(request), timeout_s)
        except TimeoutError:  # as the real clients report it
            raise InstanceFailure(self.name, "no answer in time", timeout=True) from None

    async def ready(self, model: str, timeout_s: float) -> bool:
        return True

    async def close(self) -> None:
        pass


def ok_after(ms: float) -> Behaviour:
    async def run(request: RoutedRequest) -> BackendReply:
        await asyncio.sleep(ms / 1000)
        return BackendReply(body=request.request_id.encode(), service_ms=ms)

    return run


def failing(name: str, after_ms: float = 0.0) -> Behaviour:
    async def run(request: RoutedRequest) -> BackendReply:
        await asyncio.sleep(after_ms / 1000)
        raise InstanceFailure(name, "connection reset")

    return run


def held(release: asyncio.Event, service_ms: float = 5.0) -> Behaviour:
    """Answers once ``release`` is set (no sleeping: the test decides when)."""

    async def run(request: RoutedRequest) -> BackendReply:
        await release.wait()
        return BackendReply(body=request.request_id.encode(), service_ms=service_ms)

    return run


def make_core(
    behaviours: list[Behaviour],
    policy: str = "fcfs",
    max_pending: int = 100,
    qos_ms: float = 350,
    client_margin_ms: float = 0.0,
    late_queries: str = "shed",
    classes: Sequence[ServiceClass] = (),
    clock: Clock | None = None,
) -> tuple[GatewayCore, list[FakeInstance]]:
    config = parse_config({"model": "rm2", "qos_ms": qos_ms, "pool": [{"type": "r5n.large", "count": 1}]})
    endpoints = [Endpoint(f"r5n.large-{i}", "r5n.large") for i in range(len(behaviours))]
    settings = GatewaySettings(
        policy=policy, depth=1, max_pending=max_pending, http_port=0, grpc_port=0, late_queries=late_queries
    )
    dispatcher = build_dispatcher(config, endpoints, settings)
    fakes = [FakeInstance(e.name, b) for e, b in zip(endpoints, behaviours, strict=True)]
    core = GatewayCore(
        "rm2", qos_ms, dispatcher, fakes, client_margin_ms=client_margin_ms, classes=classes, clock=clock
    )
    return core, fakes


def request(i: int, batch: int = 10, qos_ms: float | None = None, service_class: str | None = None) -> RoutedRequest:
    return RoutedRequest(
        protocol=GRPC, model="rm2", batch=batch, body=b"", request_id=f"q{i}", qos_ms=qos_ms,
        service_class=service_class,
    )  # fmt: skip


