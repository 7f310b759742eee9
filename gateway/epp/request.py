"""What the picker reads from a request Envoy reports: the routing facts, from the request
headers the client sets, or from the body when Envoy is configured to send it.

Headers (all optional; a body, when sent, wins over them):

* ``kairos-model``: the model (gRPC; over HTTP the path names it);
* ``kairos-batch``: the batch size (shape[0] of the first input; default 1);
* ``kairos-class``, ``kairos-variant``, ``kairos-qos-ms``, ``kairos-late``: the V2 parameters
  ``class``, ``variant``, ``qos_ms`` and ``late_queries`` of the gateway mode;
* ``x-request-id``: the request id.

Every value is checked with the same bounds as in the gateway mode (``BadRequest``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from google.protobuf.message import DecodeError

from gateway.backend.base import GRPC, HTTP
from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.limits import check_name, check_request_id, check_version, quote
from gateway.protocol.routing import (
    RoutingInfo,
    check_late,
    check_qos,
    routing_from_json_body,
    routing_from_proto,
)
from gateway.protocol.v2 import INFERENCE_HEADER, parse_header_length

MODEL_HEADER = "kairos-model"
BATCH_HEADER = "kairos-batch"
CLASS_HEADER = "kairos-class"
VARIANT_HEADER = "kairos-variant"
QOS_HEADER = "kairos-qos-ms"
LATE_HEADER = "kairos-late"
REQUEST_ID_HEADER = "x-request-id"
MAX_BATCH_DIGITS = 10

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
_HTTP_MODEL = re.compile(r"/v2/models/([^/?]+)(?:/versions/([^/?]+))?(/[a-z]+)?/?(?:\?.*)?")


@dataclass(frozen=True, slots=True)
class PickRequest:
    """One request as the picker sees it. ``infer`` False: any other V2 call (health,
    metadata), sent to a ready instance of ``model`` (any model's when None) without queueing."""

    protocol: str  # HTTP or GRPC
    infer: bool
    model: str | None
    routing: RoutingInfo | None = None  # infer only


def header_map(headers: Iterable[tuple[str, bytes | str]]) -> dict[str, str]:
    """Lower-case names to values (Envoy sends ``raw_value`` bytes, older ones ``value``)."""
    out: dict[str, str] = {}
    for key, value in headers:
        out[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


def _normal_path(path: str) -> str:
    """The HTTP path as the instance's server will read it (percent-escapes decoded): an infer
    call written ``/v2/models/m/%69nfer`` must be seen as one, not sent round robin unaccounted.
    A path with empty or dot segments is refused: servers differ on what it names."""
    raw, sep, query = path.partition("?")
    if "%" not in raw and "//" not in raw and "/." not in raw:
        return path  # nothing to decode, no empty or dot segment: the common case, at no cost
    decoded = unquote(raw)
    segments = decoded.split("/")[1:]
    if any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1:] in ([".."], ["."]):
        raise BadRequest(f"path {quote(path[:200])}: empty or dot segments")
    return decoded + sep + query


def read_headers(headers: Mapping[str, str], body_coming: bool = False) -> PickRequest:
    """The request from its headers (``routing`` from the ``kairos-*`` headers); with
    ``body_coming``, ``read_body`` completes it."""
    path = headers.get(":path", "")
    grpc = headers.get("content-type", "").startswith("application/grpc")
    if grpc:
        model = _header_name(headers, MODEL_HEADER)
        infer = path == GRPC_INFER
        if infer and model is None and not body_coming:
            raise BadRequest(f"a gRPC ModelInfer call through the picker needs the {MODEL_HEADER} header")
        version = None
    else:
        m = _HTTP_MODEL.fullmatch(_normal_path(path))
        model = check_name(m.group(1)) if m else None
        infer = bool(m and m.group(3) == "/infer") and headers.get(":method", "POST") == "POST"
        version = check_version(m.group(2)) if m and m.group(2) else None
    routing = _routing_of_headers(headers, version) if infer else None
    return PickRequest(GRPC if grpc else HTTP, infer, model, routing)


def read_body(request: PickRequest, headers: Mapping[str, str], body: bytes) -> PickRequest:
    """``request`` with its routing read from the whole body, as in the gateway mode."""
    if request.protocol == GRPC:
        if len(body) < 5:
            raise BadRequest("gRPC body: expected a 5-byte message prefix")
        if body[0] != 0:  # compressed: the headers' facts stand
            if request.model is None:
                raise BadRequest(f"a compressed gRPC call through the picker needs the {MODEL_HEADER} header")
            return request
        try:
            message = pb.ModelInferRequest.FromString(body[5 : 5 + int.from_bytes(body[1:5], "big")])
        except DecodeError:
            raise BadRequest("gRPC body: not a ModelInferRequest") from None
        routing = routing_from_proto(message)
        model = check_name(message.model_name) if message.model_name else request.model
        if model is None:
            raise BadRequest(f"a gRPC ModelInfer call needs model_name or the {MODEL_HEADER} header")
        return PickRequest(GRPC, True, model, routing)
    length = parse_header_length(headers.get(INFERENCE_HEADER.lower()), len(body))
    version = request.routing.version if request.routing is not None else None
    routing = routing_from_json_body(memoryview(body)[:length] if length is not None else body, version)
    return PickRequest(HTTP, True, request.model, routing)


def _routing_of_headers(headers: Mapping[str, str], version: str | None) -> RoutingInfo:
    text = headers.get(BATCH_HEADER)
    batch = 1
    if text is not None:
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_BATCH_DIGITS or int(text) < 1:
            raise BadRequest(f"{BATCH_HEADER}: expected a batch size >= 1, got {quote(text)}")
        batch = int(text)
    qos = headers.get(QOS_HEADER)
    late = headers.get(LATE_HEADER)
    return RoutingInfo(
        batch=batch,
        request_id=check_request_id(headers.get(REQUEST_ID_HEADER, "")),
        qos_ms=check_qos(qos, f"header {QOS_HEADER}") if qos is not None else None,
        version=version,
        late=check_late(late, f"header {LATE_HEADER}") if late is not None else None,
        service_class=_header_name(headers, CLASS_HEADER),
        variant=_header_name(headers, VARIANT_HEADER),
    )


def _header_name(headers: Mapping[str, str], key: str) -> str | None:
    value = headers.get(key)
    return None if value is None else check_name(value, f"header {key}")
