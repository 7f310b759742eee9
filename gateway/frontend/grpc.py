"""V2 gRPC front end (grpc.aio GRPCInferenceService).

``ModelInfer`` is registered without (de)serializers: the request arrives as bytes, is parsed
once for routing and forwarded as those same bytes; the instance's response bytes go back with
the gateway's parameters appended as a serialized map entry (protobuf merges them).
"""

from __future__ import annotations

import math
import time
from typing import Any

import grpc

from gateway.backend import InstanceFailure, RoutedRequest
from gateway.backend.base import GRPC
from gateway.core import GatewayCore
from gateway.errors import InferenceError, ModelNotFound, Overloaded, Unavailable
from gateway.frontend import METADATA_TIMEOUT_S, SERVER_NAME, SERVER_VERSION
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.errors import grpc_status
from gateway.protocol.routing import gateway_parameters_suffix, routing_from_proto
from gateway.protocol.v2 import GRPC_SERVICE, decode_proto_infer


class GrpcFrontend:
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        def typed(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            GRPC_SERVICE,
            {
                "ServerLive": typed(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": typed(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": typed(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": typed(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
                "ModelMetadata": typed(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
                "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),  # bytes in and out
            },
        )

    async def server_live(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        if request.name != self.core.model:
            await self._abort(context, ModelNotFound(f"unknown model {request.name!r}"), request.name)
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self.core.model:
            await self._abort(context, ModelNotFound(f"unknown model {request.name!r}"), request.name)
        for client in self.core.metadata_clients():
            if client.grpc is None:
                continue
            try:
                return await client.grpc.model_metadata(request, METADATA_TIMEOUT_S)
            except InstanceFailure:
                continue
        await self._abort(context, Unavailable(f"no instance answered metadata for {request.name!r}"), request.name)
        raise AssertionError("unreachable")

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        model: str | None = None
        try:
            request = decode_proto_infer(raw)
            model = request.model_name
            if model != self.core.model:
                raise ModelNotFound(f"unknown model {model!r}: this gateway serves {self.core.model!r}")
            info = routing_from_proto(request)
            result = await self.core.infer(
                RoutedRequest(
                    protocol=GRPC,
                    model=model,
                    batch=info.batch,
                    body=raw,
                    request_id=info.request_id,
                    qos_ms=info.qos_ms,
                    version=request.model_version or None,
                    message=request,
                )
            )
        except InferenceError as exc:
            await self._abort(context, exc, model)
            raise AssertionError("unreachable") from None
        reply = result.reply
        self._count(model, reply.grpc_code)
        if not reply.ok:  # the instance's own client error, unchanged
            await context.abort(reply.grpc_code, reply.grpc_details)
        e2e_ms = (time.perf_counter() - start) * 1000.0
        return reply.body + gateway_parameters_suffix(result.instance, result.queue_ms, e2e_ms)

    def _count(self, model: str | None, code: grpc.StatusCode) -> None:
        label = model if model == self.core.model else "other"
        self.core.metrics.requests_of(label, code.name, GRPC).inc()

    async def _abort(self, context: grpc.aio.ServicerContext, exc: InferenceError, model: str | None) -> None:
        code = grpc_status(exc)
        self._count(model, code)
        if isinstance(exc, Overloaded):
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(exc.retry_after_s)))),))
        await context.abort(code, str(exc))
