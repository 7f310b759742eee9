"""The backend of the endpoint picker mode (``gateway.epp``): the query's payload never passes
through the gateway. Envoy holds the request; the core's decision goes back to Envoy's stream
as an address, and the instance's answer comes back as the response headers Envoy reports on
that stream. The core keeps its exact view of each instance: a query holds its instance from
the pick to the response."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from gateway.backend.base import GRPC, BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.client import InstanceClient
from gateway.errors import InternalError
from gateway.io_timeout import IoTimeout


@dataclass(frozen=True, slots=True)
class Outcome:
    """How Envoy's attempt on the picked endpoint ended, from the response headers."""

    status: int  # HTTP :status
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK  # a trailers-only gRPC answer's status
    upstream: bool = True  # False: Envoy answered itself (connect failure, reset, timeout)
    upstream_ms: float | None = None  # Envoy's x-envoy-upstream-service-time
    reason: str = ""


_NO_ANSWER = Outcome(0, upstream=False, reason="no answer reported in time")
# Envoy waits for the instance up to its route timeout (60 s in deploy/envoy/envoy.yaml), and the
# instance holds the query meanwhile: unless told otherwise, the picker frees no slot before that.
ANSWER_TIMEOUT_MS = 60_000.0


class Handoff:
    """Between one ext_proc stream and the core: ``picked`` gets the endpoint the core chose,
    ``answered`` the outcome once Envoy reports the response."""

    __slots__ = ("answered", "instance", "picked")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.picked: asyncio.Future[str] = loop.create_future()
        self.answered: asyncio.Future[Outcome] = loop.create_future()
        self.instance = ""  # the name of the picked instance

    def answer(self, outcome: Outcome) -> None:
        if not self.answered.done():
            self.answered.set_result(outcome)


def host_port(url_or_address: str) -> str:
    """``host:port`` of ``http://host:port`` or of a gRPC ``host:port``; an IPv6 host in
    brackets (``[fd00::1]:9100``), the only form Envoy's ORIGINAL_DST reads."""
    if "://" in url_or_address:
        parts = urlsplit(url_or_address)
        host = parts.hostname or ""
        return f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
    return url_or_address


def not_an_ip_address(*addresses: str | None) -> str | None:
    """Why Envoy could not send a request to one of these addresses (URLs or ``host:port``; its
    ORIGINAL_DST cluster takes ``ip:port``, and resolves no names), or None."""
    for address in addresses:
        if address is None:
            continue
        host = host_port(address).rsplit(":", 1)[0].strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"{address!r}: the endpoint picker mode needs an IP address (Envoy resolves no names here), got host {host!r}"
    return None


class PickedEndpoint:
    """One instance, as the picker's core sees it: ``infer`` hands the instance's address for
    the request's protocol to the stream and waits for Envoy's report of the answer. Readiness
    probes go to the instance itself, as in the gateway mode."""

    def __init__(self, client: InstanceClient, http_address: str | None, grpc_address: str | None) -> None:
        self.client = client
        self.name = client.name
        self.http = client.http
        self.grpc = client.grpc
        self.addresses = {"http": http_address, GRPC: grpc_address}

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        handoff = request.handoff
        if handoff is None:  # the front ends of the gateway mode never reach a picked endpoint
            raise InternalError(f"instance {self.name}: a request without a picker stream")
        address = self.addresses[request.protocol]
        if address is None:
            raise InstanceFailure(self.name, f"no {request.protocol} endpoint")
        start = time.perf_counter()
        handoff.instance = self.name
        handoff.picked.set_result(address)
        # A timer, not wait_for: it costs a task and a future per query, on the picker's hot path.
        loop = handoff.answered.get_loop()
        timer = IoTimeout(loop, loop.time() + timeout_s, handoff.answer, _NO_ANSWER)
        try:
            outcome = await handoff.answered
        finally:
            timer.cancel()
        if outcome is _NO_ANSWER:
            raise InstanceFailure(self.name, f"no answer reported within {timeout_s:g} s", timeout=True)
        if not outcome.upstream:
            raise InstanceFailure(self.name, outcome.reason or f"Envoy answered {outcome.status} itself")
        return BackendReply(
            body=b"",
            status=outcome.status,
            grpc_code=outcome.grpc_code,
            service_ms=outcome.upstream_ms,
            round_trip_ms=(time.perf_counter() - start) * 1000.0,
        )

    async def ready(self, model: str, timeout_s: float) -> bool:
        return await self.client.ready(model, timeout_s)

    async def close(self) -> None:
        await self.client.close()
