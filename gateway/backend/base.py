"""The request the front ends hand to the core, the reply an instance gives back, and the one
kind of failure that makes the core retry elsewhere."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from gateway.protocol import grpc_predict_v2_pb2 as pb

if TYPE_CHECKING:
    from gateway.backend.picked import Handoff

HTTP = "http"
GRPC = "grpc"
SERVER_ERROR_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
)


@dataclass(slots=True)
class RoutedRequest:
    """One inference request as received, plus the routing facts read from it.

    ``body`` is forwarded as is: the serialized ``ModelInferRequest`` for gRPC, the JSON (or
    JSON header + binary tensors) body for HTTP.
    """

    protocol: str  # HTTP or GRPC: the front end it came in on (gRPC may leave over HTTP, translated)
    model: str
    batch: int
    body: bytes
    request_id: str = ""
    qos_ms: float | None = None  # per-request QoS; None = the service class's target
    service_class: str | None = None  # the V2 parameter ``class``; None = the model's default class
    variant: str | None = None  # the V2 parameter ``variant``: only that variant may serve it
    late: str | None = None  # per-request "shed" / "serve"; None = the gateway's late_queries
    version: str | None = None
    content_type: str | None = None  # HTTP only
    header_length: int | None = None  # HTTP binary extension: length of the JSON header
    # gRPC only: ``body`` as the front end parsed it, so that a backend translating the request
    # to HTTP need not parse it again.
    message: pb.ModelInferRequest | None = None
    # When the front end first saw the request (``time.monotonic()``, s): the QoS clock starts
    # there, not once the body is read and parsed. None: when the core receives it.
    received_s: float | None = None
    # Endpoint picker mode only: Envoy holds the payload; the pick goes back through this, and
    # the query may go only to these instances (by name) when Envoy sends a subset hint.
    handoff: Handoff | None = None
    only: frozenset[str] | None = None


@dataclass(slots=True)
class BackendReply:
    """What an instance answered: a result, or an error answer (4xx, bad argument, or a 5xx
    that may be the request's fault), passed back unchanged. Failures that are the instance's
    alone (no answer, timeout, unavailable) are raised as ``InstanceFailure`` instead."""

    body: bytes
    status: int = 200  # HTTP status; 200 for gRPC OK
    content_type: str | None = None
    header_length: int | None = None
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    grpc_details: str = ""
    service_ms: float | None = None  # the instance's own measurement, when it reports one
    round_trip_ms: float = 0.0  # measured by the gateway around the call
    # HTTP: the body's JSON header as the backend parsed it (None if not a JSON object), so that
    # the front end adds its parameters without parsing it again.
    json_header: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400 and self.grpc_code == grpc.StatusCode.OK

    @property
    def server_error(self) -> bool:
        """An error answer that may be the instance's fault (HTTP 5xx, gRPC INTERNAL and the
        like): passed back to the client, and counted by outlier detection."""
        return self.status >= 500 or self.grpc_code in SERVER_ERROR_CODES


class InstanceFailure(Exception):
    """The instance failed the query (connection refused or reset, 5xx, timeout): retryable."""

    def __init__(self, instance: str, reason: str, timeout: bool = False) -> None:
        super().__init__(f"instance {instance} failed: {reason}")
        self.instance = instance
        self.reason = reason
        self.timeout = timeout


def cancelled_from_within() -> bool:
    """Whether a CancelledError just caught was asked for by the current task's own cancellation,
    not raised by a client closed under its call (a grpc.aio channel cancels its calls under way)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
