"""The endpoint picker: Envoy's external processing service (``ext_proc``), one stream per
request, running the gateway's dispatcher.

For an inference request, the picker turns the reported headers (or the body, when Envoy sends
it) into a query for the model's core and holds the stream until the dispatcher places it. It
then answers with the instance's address, in the ``x-gateway-destination-endpoint`` header and
in the dynamic metadata ``envoy.lb`` (the Gateway API Inference Extension's protocol), and
learns the answer's arrival from the response headers on the same stream: the query holds its
instance from the pick to the response, as in the gateway mode. A refusal is an immediate
response: 429 when the query is shed or the queue is full, 503 when no instance can serve, the
V2 error status otherwise (a gRPC status for gRPC).

Any other V2 call (health, metadata) goes to a ready instance of its model, without queueing.

Body modes: ``NONE`` (headers only), ``BUFFERED`` (the body in one message, answered with the
pick), and ``FULL_DUPLEX_STREAMED`` (the inference extension's reference configuration): the
body arrives in chunks (then trailers, or an end of stream) and Envoy forwards only what the
picker streams back, so the picker holds the request's body (bounded by ``max_body_bytes``),
picks, answers the headers with the pick, then streams the body back; a response body in that
mode is streamed back chunk by chunk as it comes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.backend.base import GRPC
from gateway.backend.picked import Handoff, Outcome, PickedEndpoint
from gateway.dataplane import DataPlane
from gateway.epp import ext_proc_pb2 as ep
from gateway.epp.metrics import EppMetrics
from gateway.epp.request import PickRequest, header_map, read_body, read_headers
from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    InternalError,
    NoHealthyInstance,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from gateway.grpc_server import CallStream, RpcError
from gateway.protocol.errors import grpc_status, http_error
from gateway.protocol.limits import quote

log = logging.getLogger("kairos.gateway.epp")

DESTINATION = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
INSTANCE_HEADER = "kairos-instance"  # on the response: the instance the picker chose
UPSTREAM_TIME = "x-envoy-upstream-service-time"  # set by Envoy's router on an upstream's answer
LOCAL_REPLY_STATUSES = frozenset({502, 503, 504})  # connect failure, reset, no healthy upstream, timeout
LOCAL_REPLY_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
METHOD = f"/{SERVICE}/Process"

_CONTINUE = {
    "request_headers": ep.ProcessingResponse(request_headers=ep.HeadersResponse()),
    "response_headers": ep.ProcessingResponse(response_headers=ep.HeadersResponse()),
    "request_body": ep.ProcessingResponse(request_body=ep.BodyResponse()),
    "response_body": ep.ProcessingResponse(response_body=ep.BodyResponse()),
    "request_trailers": ep.ProcessingResponse(request_trailers=ep.TrailersResponse()),
    "response_trailers": ep.ProcessingResponse(response_trailers=ep.TrailersResponse()),
}


class EndpointPicker:
    """``envoy.service.ext_proc.v3.ExternalProcessor`` over the data plane's models."""

    def __init__(self, plane: DataPlane, max_body_bytes: int = 16 * 1024 * 1024) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes  # a request body the picker holds (full duplex)
        self.metrics = EppMetrics(plane.metrics)
        self._turn = itertools.count()  # round robin over ready instances for other calls
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # once, not per query: on Python 3.11 each get_running_loop() is a getpid() system call
        self._loop = asyncio.get_running_loop()
        return self._loop

    async def serve(self, call: CallStream) -> None:
        """One ext_proc stream on the gateway's own gRPC server."""
        async for response in self.process(_decoded(call)):
            call.send(response.SerializeToString())

    def grpcio_handler(self) -> grpc.GenericRpcHandler:
        """The same service for grpc.aio (``grpc_server: grpcio``)."""

        async def process(
            requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[ep.ProcessingResponse]:
            async for response in self.process(requests):
                yield response

        handler = grpc.stream_stream_rpc_method_handler(
            process,
            request_deserializer=ep.ProcessingRequest.FromString,
            response_serializer=ep.ProcessingResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": handler})

    async def process(self, request_iterator: AsyncIterator[ep.ProcessingRequest]) -> AsyncIterator[ep.ProcessingResponse]:
        """One ext_proc stream, whatever serves it: Envoy's messages in, the answers out."""
        self.metrics.open.inc()
        outcome = ["abandoned"]  # what the stream comes to, set on the way
        try:
            received = time.monotonic()
            first = await anext(request_iterator, None)
            if first is None or not first.HasField("request_headers"):
                return  # nothing to pick for: Envoy opens a stream with the request headers
            headers = header_map((h.key, h.raw_value or h.value) for h in first.request_headers.headers.headers)
            protocol = GRPC if headers.get("content-type", "").startswith("application/grpc") else "http"
            phase = "request_headers"
            pick: PickRequest | None = None
            modes = first.protocol_config
            duplex = _NO_DUPLEX
            if modes.request_body_mode == ep.FULL_DUPLEX_STREAMED or modes.response_body_mode == ep.FULL_DUPLEX_STREAMED:
                duplex = _Duplex(modes.request_body_mode == ep.FULL_DUPLEX_STREAMED,
                                 modes.response_body_mode == ep.FULL_DUPLEX_STREAMED)
            held: _HeldBody | None = None
            try:
                has_body = not first.request_headers.end_of_stream
                body_coming = has_body and modes.request_body_mode in (ep.BUFFERED, ep.FULL_DUPLEX_STREAMED)
                pick = read_headers(headers, body_coming)
                if duplex.request and has_body:  # the body comes whatever we answer: hold it
                    held = await _hold_body(request_iterator, self.max_body_bytes)
                    if held is None:
                        return
                    if pick.infer:
                        pick = read_body(pick, headers, held.body)
                elif pick.infer and body_coming:
                    yield _CONTINUE["request_headers"]
                    phase = "request_body"
                    message = await anext(request_iterator, None)
                    if message is None:
                        return
                    pick = read_body(pick, headers, message.request_body.body)
                only = self._subset(first.metadata_context, pick.protocol)
                if not pick.infer:
                    address, name = self._any_ready(pick, only)
                    outcome[0] = "other_call"
                    yield _picked(phase, address, name)
                    for response in held.replay() if held is not None else ():
                        yield response
                    async for message in request_iterator:
                        yield _continue(message, duplex)
                    self.plane.count(pick.model, "200", pick.protocol)
                    return
            except InferenceError as exc:
                self.plane.count(pick.model if pick else None, str(_status_of(exc)), protocol)
                outcome[0] = "refused"
                yield _refusal(exc, protocol)
                return
            async for response in self._infer(pick, only, phase, request_iterator, received, outcome, held, duplex):
                yield response
        finally:
            self.metrics.open.dec()
            self.metrics.ended[outcome[0]].inc()

    async def _infer(
        self,
        pick: PickRequest,
        only: frozenset[str] | None,
        phase: str,
        requests: AsyncIterator[ep.ProcessingRequest],
        received: float,
        outcome: list[str],
        held: _HeldBody | None,
        duplex: _Duplex,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        assert pick.model is not None and pick.routing is not None
        loop = self._loop or self._bind_loop()
        handoff = Handoff(loop)
        request = self.plane.route(pick.protocol, pick.model, pick.routing, b"", handoff=handoff, only=only, received_s=received)
        task = loop.create_task(self.plane.infer(request))
        task.add_done_callback(lambda t: _refused_before_pick(t, handoff))
        try:
            try:
                address = await handoff.picked
            except InferenceError as exc:
                self.plane.count(pick.model, str(_status_of(exc)), pick.protocol)
                outcome[0] = "refused"
                yield _refusal(exc, pick.protocol)
                return
            yield _picked(phase, address, handoff.instance)
            for response in held.replay() if held is not None else ():
                yield response
            async for message in requests:
                if message.HasField("response_headers"):
                    answer = _outcome(message.response_headers.headers.headers)
                    handoff.answer(answer)
                    outcome[0] = "answered" if answer.upstream else "local_reply"
                    self.plane.count(pick.model, str(answer.status), pick.protocol)
                    yield _answered_by(handoff.instance)
                else:
                    yield _continue(message, duplex)
        finally:
            if not task.done() and not handoff.answered.done():
                task.cancel()  # the client or Envoy went away: the core frees the slot in time
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: an error here was answered (or had no one to answer)
            else:
                task.add_done_callback(_retrieve)

    def _subset(self, metadata: ep.Metadata, protocol: str) -> frozenset[str] | None:
        """The instances of the subset hint, by name (None: no hint): those whose address for the
        request's protocol is listed (the address the pick would hand to Envoy)."""
        if SUBSET_NAMESPACE not in metadata.filter_metadata:
            return None
        hint = metadata.filter_metadata[SUBSET_NAMESPACE]
        if SUBSET_KEY not in hint.fields:
            return None
        listed = {v.string_value for v in hint.fields[SUBSET_KEY].list_value.values}
        # Read from the pool as it is now (instances come and go): a hint is rare, the pool small.
        return frozenset(
            name
            for service in self.plane.registry
            for name, client in service.core.clients.items()
            if isinstance(client, PickedEndpoint) and client.addresses.get(protocol) in listed
        )

    def _any_ready(self, pick: PickRequest, only: frozenset[str] | None) -> tuple[str, str]:
        """A ready instance for a call that is not an inference (round robin)."""
        cores = [self.plane.core(pick.model)] if pick.model is not None else [s.core for s in self.plane.registry]
        ready = [
            (core, inst)
            for core in cores
            for inst in core.dispatcher.instances
            if inst.in_rotation and (only is None or inst.name in only)
        ]
        if not ready:
            what = f"model {quote(pick.model)}" if pick.model is not None else "any model"
            raise NoHealthyInstance(f"no healthy instance serves {what}")
        core, inst = ready[next(self._turn) % len(ready)]
        client = core.clients[inst.name]
        address = client.addresses[pick.protocol] if isinstance(client, PickedEndpoint) else None
        if address is None:
            raise Unavailable(f"instance {inst.name} has no {pick.protocol} endpoint")
        return str(address), inst.name


async def _decoded(call: CallStream) -> AsyncIterator[ep.ProcessingRequest]:
    async for data in call:
        try:
            yield ep.ProcessingRequest.FromString(data)
        except DecodeError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "not an ext_proc ProcessingRequest") from None


def _refused_before_pick(task: asyncio.Future[Any], handoff: Handoff) -> None:
    if handoff.picked.done():
        return
    if task.cancelled():
        handoff.picked.cancel()
        return
    exc = task.exception()
    handoff.picked.set_exception(exc if isinstance(exc, InferenceError) else InternalError("the picker failed"))
    if exc is not None and not isinstance(exc, InferenceError):
        log.error("picking failed", exc_info=exc)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class _Duplex:
    """Which directions stream their bodies in full duplex (``FULL_DUPLEX_STREAMED``)."""

    request: bool = False
    response: bool = False


_NO_DUPLEX = _Duplex()


def _continue(message: ep.ProcessingRequest, duplex: _Duplex = _NO_DUPLEX) -> ep.ProcessingResponse:
    """Go on unchanged, for whatever part of the exchange Envoy sent (the processing mode in
    Envoy's config decides which); in full duplex a body chunk goes on only as streamed back."""
    phase = message.WhichOneof("request")
    if phase is None:
        raise InternalError("an ext_proc message without a request")  # not Envoy's
    if duplex is not _NO_DUPLEX and (
            (phase == "response_body" and duplex.response) or (phase == "request_body" and duplex.request)):
        chunk = message.response_body if phase == "response_body" else message.request_body
        return _streamed(phase, chunk.body, chunk.end_of_stream)
    return _CONTINUE[phase]


# Envoy recommends streamed-back chunks of at most 64 KiB.
STREAMED_CHUNK_BYTES = 64 * 1024


def _streamed(phase: str, body: bytes, end_of_stream: bool) -> ep.ProcessingResponse:
    """A body chunk streamed back (``StreamedBodyResponse``), for ``phase`` (request or response body)."""
    common = ep.CommonResponse(
        body_mutation=ep.BodyMutation(streamed_response=ep.StreamedBodyResponse(body=body, end_of_stream=end_of_stream))
    )
    if phase == "response_body":
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=common))
    return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))


@dataclass(frozen=True, slots=True)
class _HeldBody:
    """A request's body, held in full duplex until the pick, and whether trailers ended it."""

    body: bytes
    trailers: bool

    def replay(self) -> Iterator[ep.ProcessingResponse]:
        """The body streamed back in chunks, then the trailers' answer: what Envoy forwards."""
        size = len(self.body)
        for start in range(0, max(size, 1), STREAMED_CHUNK_BYTES):
            last = start + STREAMED_CHUNK_BYTES >= size
            yield _streamed("request_body", self.body[start : start + STREAMED_CHUNK_BYTES], last and not self.trailers)
        if self.trailers:
            yield _CONTINUE["request_trailers"]


async def _hold_body(requests: AsyncIterator[ep.ProcessingRequest], limit: int) -> _HeldBody | None:
    """The request body's chunks up to its end (end of stream, or trailers); None if the stream
    ended first. PayloadTooLarge past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for message in requests:
        kind = message.WhichOneof("request")
        if kind == "request_body":
            chunk = message.request_body.body
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over the limit of {limit} bytes")
            chunks.append(chunk)
            if message.request_body.end_of_stream:
                return _HeldBody(b"".join(chunks), trailers=False)
        elif kind == "request_trailers":
            return _HeldBody(b"".join(chunks), trailers=True)
        else:
            raise BadRequest(f"ext_proc: {kind} before the end of the request's body")
    return None


def _set(key: str, value: str) -> ep.HeaderValueOption:
    """A header to set, replacing any the request or response has."""
    return ep.HeaderValueOption(
        header=ep.HeaderValue(key=key, raw_value=value.encode()),
        append_action=ep.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


@functools.lru_cache(maxsize=4096)
def _picked(phase: str, address: str, instance: str) -> ep.ProcessingResponse:
    """The answer that sends the request to ``address``."""
    common = ep.CommonResponse(
        header_mutation=ep.HeaderMutation(set_headers=[_set(DESTINATION, address), _set(INSTANCE_HEADER, instance)])
    )
    metadata = ep.Struct()
    metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION].string_value = address
    headers = ep.HeadersResponse(response=common)
    if phase == "request_body":
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=common), dynamic_metadata=metadata)
    return ep.ProcessingResponse(request_headers=headers, dynamic_metadata=metadata)


@functools.lru_cache(maxsize=4096)
def _answered_by(instance: str) -> ep.ProcessingResponse:
    """The response goes on, naming the instance the picker chose (``kairos-instance``)."""
    common = ep.CommonResponse(header_mutation=ep.HeaderMutation(set_headers=[_set(INSTANCE_HEADER, instance)]))
    return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common))


def _status_of(exc: InferenceError) -> int:
    """The protocol's statuses: 429 to shed, 503 when no endpoint can serve; V2's otherwise."""
    if isinstance(exc, (Overloaded, DeadlineExceeded)):
        return 429
    if isinstance(exc, Unavailable):
        return 503
    return http_error(exc).status


def _refusal(exc: InferenceError, protocol: str) -> ep.ProcessingResponse:
    status = _status_of(exc)
    message = str(exc)
    if protocol == GRPC:
        immediate = ep.ImmediateResponse(
            status=ep.HttpStatus(code=200),
            grpc_status=ep.GrpcStatus(status=grpc_status(exc).value[0]),
            body=message.encode(),
            details=type(exc).__name__,
        )
    else:
        error = http_error(exc)  # the gateway mode's body and headers (Content-Type, Retry-After)
        immediate = ep.ImmediateResponse(
            status=ep.HttpStatus(code=status),
            headers=ep.HeaderMutation(set_headers=[_set(k.lower(), v) for k, v in error.headers.items()]),
            body=error.body,
            details=type(exc).__name__,
        )
    return ep.ProcessingResponse(immediate_response=immediate)


def _outcome(headers: Iterable[ep.HeaderValue]) -> Outcome:
    """What the response headers say: the status, a trailers-only gRPC status, and whether the
    answer came from the instance (Envoy's router marks those with the upstream's time)."""
    h = header_map((x.key, x.raw_value or x.value) for x in headers)
    try:
        status = int(h.get(":status", "0"))
    except ValueError:
        status = 0
    code = grpc.StatusCode.OK
    if "grpc-status" in h:
        code = next((c for c in grpc.StatusCode if str(c.value[0]) == h["grpc-status"]), grpc.StatusCode.UNKNOWN)
    upstream_ms = None
    if UPSTREAM_TIME in h:
        try:
            upstream_ms = float(h[UPSTREAM_TIME])
        except ValueError:
            upstream_ms = None
    # Without the router's header (an Envoy may suppress its x-envoy-* headers), only a status
    # Envoy gives its own replies for an unreachable or silent upstream is taken for one.
    local = upstream_ms is None and (status in LOCAL_REPLY_STATUSES or code in LOCAL_REPLY_GRPC_CODES)
    reason = f"Envoy answered {status} without the instance ({h.get('x-envoy-local-reply', 'local reply')})" if local else ""
    return Outcome(status, code, not local, upstream_ms, reason)
