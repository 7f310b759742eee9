"""V2 gRPC front end: the GRPCInferenceService's methods as bytes in, bytes out.

The same methods are served by either gRPC server (``gateway.grpc_server``, the default, or
grpc.aio through ``gateway.frontend.grpcio``); errors leave as ``RpcError`` and each server
turns them into its status. ``ModelInfer``'s request is parsed once for routing and forwarded
as those same bytes; the instance's response bytes go back with the gateway's parameters
appended as a serialized map entry (protobuf merges them).

Beside it, ``grpc.health.v1.Health/Check`` for Kubernetes ``grpc:`` probes and load balancers:
service "" (or the V2 service's name) is the gateway's readiness, a model's name that model's;
any other service is NOT_FOUND. (``Watch`` streams, and both servers serve unary methods only.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from gateway.backend import Backend, InstanceFailure
from gateway.backend.base import GRPC
from gateway.backend.http_client import model_path
from gateway.dataplane import DataPlane
from gateway.errors import InferenceError, Overloaded
from gateway.frontend import EXTENSIONS, METADATA_TIMEOUT_S, SERVER_NAME, SERVER_VERSION
from gateway.grpc_server import RpcError, UnaryMethod, call_opened
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.errors import HTTP_OF_GRPC, error_from_http, grpc_status
from gateway.protocol.limits import check_version, quote
from gateway.protocol.routing import gateway_parameters_suffix, routing_from_proto
from gateway.protocol.translate import MalformedResponse, metadata_from_json
from gateway.protocol.v2 import GRPC_SERVICE, decode_proto_infer

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class _Message(Protocol):
    def SerializeToString(self) -> bytes: ...


def _typed(fn: Callable[[Any], Awaitable[_Message]], request_type: Any) -> UnaryMethod:
    """A method on protobuf messages as one on their bytes."""

    async def call(raw: bytes) -> bytes:
        try:
            request = request_type.FromString(raw)
        except DecodeError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse {request_type.__name__}") from None
        return (await fn(request)).SerializeToString()

    return call


class GrpcFrontend:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def methods(self) -> dict[str, UnaryMethod]:
        """Every method by its full path (``/inference.GRPCInferenceService/ModelInfer``)."""
        typed = {
            "ServerLive": _typed(self.server_live, pb.ServerLiveRequest),
            "ServerReady": _typed(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": _typed(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": _typed(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _typed(self.model_metadata, pb.ModelMetadataRequest),
        }
        methods: dict[str, UnaryMethod] = {f"/{GRPC_SERVICE}/{name}": fn for name, fn in typed.items()}
        methods[f"/{GRPC_SERVICE}/ModelInfer"] = self.model_infer  # bytes in and out
        methods[HEALTH_CHECK] = _typed(self.health_check, health_pb2.HealthCheckRequest)
        return methods

    async def health_check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        if request.service in ("", GRPC_SERVICE):
            ready = self.plane.ready
        elif request.service in self.plane.registry:
            ready = self.plane.model_ready(request.service)
        else:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"unknown service {quote(request.service)}")
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            version = check_version(request.version)
            return pb.ModelReadyResponse(ready=await self.plane.version_ready(request.name, version, METADATA_TIMEOUT_S))
        except InferenceError as exc:
            raise self._abort(exc, request.name) from None

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        async def fetch(client: Backend, served: str) -> pb.ModelMetadataResponse | None:
            if client.grpc is None:  # an HTTP-only instance: its metadata translated
                return await _http_metadata(client, served, version)
            ask = request if served == request.name else pb.ModelMetadataRequest(name=served, version=request.version)
            try:
                return await client.grpc.model_metadata(ask, METADATA_TIMEOUT_S)
            except InstanceFailure:
                return None

        try:
            version = check_version(request.version)  # it goes into an HTTP path
            return await self.plane.metadata(request.name, fetch, (GRPC, version))
        except InferenceError as exc:
            raise self._abort(exc, request.name) from None

    async def model_infer(self, raw: bytes) -> bytes:
        start = time.perf_counter()
        model: str | None = None
        try:
            request = decode_proto_infer(raw)
            model = request.model_name
            self.plane.core(model)  # the model check, before routing is read
            info = routing_from_proto(request)
            result = await self.plane.infer(
                self.plane.route(GRPC, model, info, raw, message=request, received_s=call_opened.get())
            )
        except InferenceError as exc:
            raise self._abort(exc, model) from None
        reply = result.reply
        self._count(model, reply.grpc_code)
        if not reply.ok:  # the instance's own client error, unchanged
            raise RpcError(reply.grpc_code, reply.grpc_details)
        e2e_ms = (time.perf_counter() - start) * 1000.0
        return reply.body + gateway_parameters_suffix(result.instance, result.queue_ms, e2e_ms, result.variant)

    def _count(self, model: str | None, code: grpc.StatusCode) -> None:
        self.plane.count(model, str(HTTP_OF_GRPC.get(code, 500)), GRPC)

    def _abort(self, exc: InferenceError, model: str | None) -> RpcError:
        """Count the error (its HTTP status: one code vocabulary for both protocols); returns it
        as the status to raise."""
        code = grpc_status(exc)
        self.plane.count(model, str(exc.status), GRPC)
        trailers: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, Overloaded):
            trailers = (("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),)
        return RpcError(code, str(exc), trailers)


async def _http_metadata(client: Backend, served: str, version: str | None) -> pb.ModelMetadataResponse | None:
    if client.http is None:
        return None
    try:
        status, body, _ = await client.http.get(model_path(served, version), METADATA_TIMEOUT_S)
        if status in (400, 404):  # no such model or version: the same from every instance
            raise error_from_http(status, body)
        return metadata_from_json(body) if status == 200 else None
    except (InstanceFailure, MalformedResponse):
        return None
