"""V2 gRPC backend client over grpc.aio: the serialized request goes out as it came in."""

from __future__ import annotations

import asyncio
import time

import grpc

from gateway.backend.base import (
    SERVER_ERROR_CODES,
    BackendReply,
    InstanceFailure,
    RoutedRequest,
    cancelled_from_within,
)
from gateway.backend.negotiation import ServerInfo
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.protocol.errors import error_from_grpc
from gateway.protocol.routing import reported_service_ms_proto

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # Come back quickly after an instance restarts (the default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Codes that mean the instance cannot serve now, whatever the request: the core retries
# elsewhere. INTERNAL, UNKNOWN and DATA_LOSS may be the request's fault (MLServer answers
# INTERNAL to a wrong feature count): they are answers, which outlier detection counts.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


# An instance's metadata errors that are answers about the request (the model or version it
# names), not about the instance: the same from every instance.
ANSWER_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


def _reraise_if_cancelled(exc: BaseException) -> None:
    """A closed channel fails its calls (UsageError; CancelledError for one under way), as the
    instance leaves the pool; a cancellation of the caller's own task goes on."""
    if isinstance(exc, asyncio.CancelledError) and cancelled_from_within():
        raise exc


class GrpcBackend:
    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        # No serializers: bytes in, bytes out.
        self._infer = self._channel.unary_unary(INFER_METHOD)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(self, request: RoutedRequest, timeout_s: float) -> BackendReply:
        start = time.perf_counter()
        try:
            body: bytes = await self._infer(request.body, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
                return BackendReply(body=b"", status=413, grpc_code=code, grpc_details=details)
            if code in FAILURE_CODES:
                raise InstanceFailure(
                    self.name, f"{code.name}: {exc.details()}", timeout=code == grpc.StatusCode.DEADLINE_EXCEEDED
                ) from None
            status = 500 if code in SERVER_ERROR_CODES else 400
            return BackendReply(body=b"", status=status, grpc_code=code, grpc_details=details)
        rtt = (time.perf_counter() - start) * 1000.0
        service_ms = None
        try:
            service_ms = reported_service_ms_proto(pb.ModelInferResponse.FromString(body))
        except Exception:  # an unparsable reply is passed on; the estimator just learns nothing
            service_ms = None
        return BackendReply(body=body, service_ms=service_ms, round_trip_ms=rtt)

    async def model_metadata(self, request: pb.ModelMetadataRequest, timeout_s: float) -> pb.ModelMetadataResponse:
        """The instance's answer; its NOT_FOUND or INVALID_ARGUMENT (no such model or version) as
        the InferenceError it maps to, any other failure as InstanceFailure (ask another)."""
        try:
            return await self._stub.ModelMetadata(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in ANSWER_CODES:
                raise error_from_grpc(exc.code(), exc.details()) from None
            raise InstanceFailure(self.name, f"{exc.code().name}: {exc.details()}") from None
        except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
            _reraise_if_cancelled(exc)
            raise InstanceFailure(self.name, "the instance left the pool") from None

    async def server_metadata(self, timeout_s: float) -> ServerInfo | None:
        """The server's V2 metadata; None if it does not answer."""
        try:
            reply = await self._stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None
        except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
            _reraise_if_cancelled(exc)
            return None
        return ServerInfo.from_proto(reply.name, reply.version, reply.extensions)

    async def ready(self, model: str, timeout_s: float, version: str | None = None) -> bool:
        try:
            reply = await self._stub.ModelReady(pb.ModelReadyRequest(name=model, version=version or ""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        except (grpc.aio.UsageError, asyncio.CancelledError) as exc:
            _reraise_if_cancelled(exc)
            return False
        return bool(reply.ready)

    async def close(self) -> None:
        await self._channel.close()
