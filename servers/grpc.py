"""gRPC front end of one emulated instance: ``inference.GRPCInferenceService`` on grpc.aio.

The handlers are registered by hand rather than through the generated servicer so that
ModelInfer receives raw bytes: a malformed protobuf then gets INVALID_ARGUMENT (a V2 error)
instead of gRPC's generic INTERNAL "exception deserializing request". Outputs always travel in
``raw_output_contents`` (what Triton does, and what tritonclient reads first).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from gateway.errors import InferenceError
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.errors import grpc_status
from gateway.protocol.params import set_proto_parameters
from gateway.protocol.v2 import GRPC_SERVICE, decode_proto_infer, parse_proto_infer
from servers.instance import (
    EXTENSIONS,
    MODEL_VERSION,
    OUTPUT_DATATYPE,
    OUTPUT_NAME,
    OUTPUT_SHAPE,
    PLATFORM,
    SERVER_NAME,
    SERVER_VERSION,
    Instance,
)

# A grpc.aio.ServicerContext; grpcio ships no type stubs, so to mypy it is Any anyway.
Context: TypeAlias = Any


class GrpcFrontEnd:
    """The V2 gRPC service for one instance."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def handler(self) -> grpc.GenericRpcHandler:
        def rpc(
            fn: Callable[..., Awaitable[Any]], request_type: Any, response_type: Any
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request_type.FromString if request_type is not None else None,
                response_serializer=response_type.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            GRPC_SERVICE,
            {
                "ServerLive": rpc(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": rpc(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": rpc(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": rpc(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": rpc(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
                "ModelInfer": rpc(self.model_infer, None, pb.ModelInferResponse),
            },
        )

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS)
        )

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        await self._check_model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        await self._check_model(request.name, request.version, context)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[meta(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in self.instance.inputs],
            outputs=[meta(name=OUTPUT_NAME, datatype=OUTPUT_DATATYPE, shape=list(OUTPUT_SHAPE))],
        )

    async def model_infer(self, data: bytes, context: Context) -> pb.ModelInferResponse:
        inst = self.instance
        try:
            req = parse_proto_infer(decode_proto_infer(data))
            inst.check_model(req.model, req.version)
            record = await inst.serve(inst.check_request(req))
        except InferenceError as exc:
            await context.abort(grpc_status(exc), str(exc))
        response = pb.ModelInferResponse(model_name=req.model, model_version=MODEL_VERSION, id=req.id)
        set_proto_parameters(response.parameters, inst.response_parameters(record))
        response.outputs.add(name=OUTPUT_NAME, datatype=OUTPUT_DATATYPE, shape=[record.batch, 1])
        response.raw_output_contents.append(inst.scores[: record.batch].tobytes())
        return response

    async def _check_model(self, name: str, version: str, context: Context) -> None:
        try:
            self.instance.check_model(name, version)
        except InferenceError as exc:
            await context.abort(grpc_status(exc), str(exc))
