"""gRPC infer requests served by an instance's V2 HTTP endpoint (``backend_protocol: http``).

Why: per query, a grpc.aio client call costs the gateway about as much CPU as the grpc.aio
server call it answers; the gateway's own HTTP/1.1 client costs a few µs. The request and the
reply are translated by ``gateway.protocol.translate`` (binary tensor extension, tensor bytes
untouched), so the front end gets back the serialized ``ModelInferResponse`` it would have got
from the instance's gRPC endpoint, and an instance's V2 error the gRPC status it maps to.
"""

from __future__ import annotations

import time

import grpc

from gateway.backend.base import BackendReply, InstanceFailure, RoutedRequest
from gateway.backend.http_client import JSON_HEADERS, HttpBackend, response_header_length
from gateway.errors import BadRequest
from gateway.protocol.errors import GRPC_CODES, error_from_http
from gateway.protocol.routing import reported_service_ms_proto
from gateway.protocol.translate import (
    BINARY_CONTENT_TYPE,
    MalformedResponse,
    http_response_to_proto,
    proto_request_to_http,
    proto_request_to_json,
)
from gateway.protocol.v2 import INFERENCE_HEADER, decode_proto_infer

_HEADERS = f"Content-Type: {BINARY_CONTENT_TYPE}\r\n{INFERENCE_HEADER}: %d\r\n"


class GrpcOverHttp:
    def __init__(self, http: HttpBackend) -> None:
        self.http = http
        self.name = http.name

    async def infer(self, request: RoutedRequest, timeout_s: float, binary: bool = True) -> BackendReply:
        """Raises InstanceFailure as the HTTP backend does, and also when the instance's answer
        is not a V2 response. ``binary``: the instance takes the binary tensor extension; if
        not, the request goes as plain JSON tensors."""
        try:
            message = request.message if request.message is not None else decode_proto_infer(request.body)
            if binary:
                translated = proto_request_to_http(message)
                headers, body = _HEADERS % translated.header_length, translated.body
            else:
                headers, body = JSON_HEADERS, proto_request_to_json(message)
        except BadRequest as exc:  # what a gRPC instance answers to it: a client error
            return _client_error(400, str(exc), 0.0)
        start = time.perf_counter()
        resp = await self.http.post_infer(request.model, request.version, headers, body, timeout_s)
        rtt = (time.perf_counter() - start) * 1000.0
        if resp.status >= 400:  # the client's error (5xx raised above)
            return _client_error(resp.status, str(error_from_http(resp.status, resp.body)), rtt)
        try:
            reply = http_response_to_proto(resp.body, response_header_length(resp))
        except MalformedResponse as exc:
            raise InstanceFailure(self.name, str(exc)) from None
        return BackendReply(
            reply.data, service_ms=reported_service_ms_proto(reply.message), round_trip_ms=rtt
        )


def _client_error(status: int, details: str, rtt_ms: float) -> BackendReply:
    """A V2 client error as the gRPC status it maps to, passed back unchanged like an
    instance's own gRPC error."""
    code = GRPC_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
    return BackendReply(b"", status=status, grpc_code=code, grpc_details=details, round_trip_ms=rtt_ms)
