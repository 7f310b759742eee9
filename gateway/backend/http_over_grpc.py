"""HTTP infer requests served by an instance's V2 gRPC endpoint, for an instance that has no
HTTP endpoint (a Triton or MLServer started with gRPC only).

The request and the reply are translated by ``gateway.protocol.http_to_grpc``, so the HTTP
client gets the body it would have got from a V2 HTTP server, and an instance's gRPC error the
HTTP status it maps to with a V2 error body.
"""

from __future__ import annotations

from dataclasses import replace

import grpc

from gateway.backend.base import GRPC, BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.grpc_client import GrpcBackend
from gateway.backend.http_client import JSON_CONTENT_TYPE
from gateway.errors import BadRequest
from gateway.protocol.errors import HTTP_OF_GRPC, error_body
from gateway.protocol.http_to_grpc import http_request_to_proto, proto_response_to_http
from gateway.protocol.routing import reported_service_ms_json
from gateway.protocol.translate import BINARY_CONTENT_TYPE, MalformedResponse


class HttpOverGrpc:
    def __init__(self, grpc: GrpcBackend) -> None:
        self.grpc = grpc
        self.name = grpc.name

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        """Raises InstanceFailure as the gRPC backend does, and also when the instance's answer
        is not a V2 response."""
        try:
            translated = http_request_to_proto(request.body, request.header_length, request.model, request.version)
        except BadRequest as exc:  # what an HTTP instance answers to it
            return _error(400, str(exc), 0.0)
        reply = await self.grpc.infer(replace(request, protocol=GRPC, body=translated.data), timeout_s)
        if not reply.ok:
            status = reply.status if reply.status == 413 else HTTP_OF_GRPC.get(reply.grpc_code, 500)
            return _error(status, reply.grpc_details or reply.grpc_code.name, reply.round_trip_ms, reply.grpc_code)
        try:
            http = proto_response_to_http(reply.body, translated.request)
        except MalformedResponse as exc:
            raise InstanceFailure(self.name, str(exc)) from None
        except BadRequest as exc:
            return _error(400, str(exc), reply.round_trip_ms)
        return BackendReply(
            http.body,
            content_type=JSON_CONTENT_TYPE if http.header_length is None else BINARY_CONTENT_TYPE,
            header_length=http.header_length,
            service_ms=reported_service_ms_json(http.header),
            round_trip_ms=reply.round_trip_ms,
            json_header=http.header,
        )


def _error(status: int, message: str, rtt_ms: float, grpc_code: grpc.StatusCode = grpc.StatusCode.OK) -> BackendReply:
    """A V2 HTTP error answer; an instance's own error keeps its gRPC code, which outlier
    detection reads."""
    return BackendReply(error_body(message), status, JSON_CONTENT_TYPE, grpc_code=grpc_code, round_trip_ms=rtt_ms)
