"""What the gateway reads from a V2 request, and what it adds to a V2 response.

The gateway routes on a handful of facts (model, batch size = shape[0] of the first input,
request id, an optional per-request QoS) and never decodes tensor data: it parses only the JSON
header of an HTTP body (the whole body without the binary extension) and the protobuf request's
scalar fields. Gateway facts go back to the client as response parameters:

* gRPC: a serialized ``ModelInferResponse`` holding only ``parameters`` is appended to the
  instance's response bytes. Protobuf merges concatenated messages (map entries included), so
  the client sees the instance's response plus the gateway's parameters, with no re-encoding.
* HTTP: the JSON header gets the parameters; the binary tensor part after it is untouched and
  ``Inference-Header-Content-Length`` is recomputed.

Request parsing itself is ``gateway.protocol.v2``'s; this module adds the gateway's reading
of it (per-request QoS) and the response side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol import wire
from gateway.protocol.limits import (
    check_name,
    check_nesting,
    check_request_id,
    check_version,
    json_too_deep,
    quote,
)
from gateway.protocol.params import (
    CLASS_PARAMETER,
    LATE_PARAMETER,
    PARAM_E2E_US,
    PARAM_INSTANCE,
    PARAM_QUEUE_US,
    PARAM_VARIANT,
    QOS_PARAMETER,
    SERVICE_TIME_KEYS,
    VARIANT_PARAMETER,
    ParamValue,
    to_us,
)
from gateway.protocol.v2 import (
    json_batch,
    load_json_object,
    loads_nonfinite,
    parse_proto_infer,
    proto_batch,
    proto_param_value,
)

MAX_QOS_MS = 3_600_000  # an hour: past it a deadline means nothing to the dispatcher


@dataclass(frozen=True, slots=True)
class RoutingInfo:
    batch: int
    request_id: str
    qos_ms: float | None
    version: str | None = None  # validated: safe in a URL path and a request line
    late: str | None = None  # "shed" or "serve" (parameter late_queries); None: the gateway's
    service_class: str | None = None  # parameter "class"; None: the model's default class
    variant: str | None = None  # parameter "variant"; None: any of the model's variants


def gateway_parameters(
    instance: str, queue_ms: float, e2e_ms: float, variant: str | None = None
) -> dict[str, ParamValue]:
    """The parameters the gateway adds to every response it passes back (both protocols); the
    variant that served it for a model with several."""
    params: dict[str, ParamValue] = {PARAM_INSTANCE: instance, PARAM_QUEUE_US: to_us(queue_ms), PARAM_E2E_US: to_us(e2e_ms)}
    if variant is not None:
        params[PARAM_VARIANT] = variant
    return params


# -- HTTP/JSON -------------------------------------------------------------------------------


def routing_from_json(header: Mapping[str, Any], version: str | None = None) -> RoutingInfo:
    """Routing facts of a parsed JSON request header; checks what routing needs and the bounds
    of what is forwarded (the instance validates the tensors and its 400 comes back unchanged)."""
    batch = json_batch(header)
    rid = header.get("id", "")
    if not isinstance(rid, str):
        raise BadRequest(f"id: expected a string, got {quote(rid)}")
    params = header.get("parameters")
    qos = late = service_class = variant = None
    if isinstance(params, dict):
        if QOS_PARAMETER in params:
            qos = check_qos(params[QOS_PARAMETER])
        if LATE_PARAMETER in params:
            late = check_late(params[LATE_PARAMETER])
        if CLASS_PARAMETER in params:
            service_class = _name_parameter(CLASS_PARAMETER, params[CLASS_PARAMETER])
        if VARIANT_PARAMETER in params:
            variant = _name_parameter(VARIANT_PARAMETER, params[VARIANT_PARAMETER])
    return RoutingInfo(
        batch=batch,
        request_id=check_request_id(rid),
        qos_ms=qos,
        version=check_version(version),
        late=late,
        service_class=service_class,
        variant=variant,
    )


def routing_from_json_body(header: bytes | memoryview, version: str | None = None) -> RoutingInfo:
    """``routing_from_json`` of a request's JSON header as received, with its nesting bounded
    first: an instance that recurses over deeply nested data fails on it."""
    obj = load_json_object(header)
    if json_too_deep(header):
        inputs = obj.get("inputs")
        for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
            if isinstance(tensor, dict) and isinstance(tensor.get("shape"), list):
                check_nesting(tensor.get("data"), max(len(tensor["shape"]), 1), f"inputs[{i}]")
        check_nesting(obj.get("parameters"), 2, "parameters")
    return routing_from_json(obj, version)


def json_response_header(body: bytes, header_length: int | None) -> dict[str, Any] | None:
    """The JSON header of an HTTP infer response (the whole body without the binary extension),
    None when it is not a JSON object. Parsed once per reply: the backend reads the instance's
    service time from it and the front end adds the gateway's parameters to it."""
    data = body if header_length is None else memoryview(body)[:header_length]
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError:
        header = loads_nonfinite(data)  # an output with NaN, as Triton writes it
    return header if isinstance(header, dict) else None


def add_json_parameters(
    body: bytes, header_length: int | None, params: Mapping[str, Any], header: dict[str, Any] | None = None
) -> tuple[bytes, int | None]:
    """The response body with ``params`` merged into its "parameters", and the new header length
    (None for a plain JSON body). ``header``: the body's header as ``json_response_header`` gave
    it (parsed here if not given; it is changed in place). Bodies that are not a JSON object are
    returned unchanged."""
    if header is None:
        header = json_response_header(body, header_length)
        if header is None:
            return body, header_length
    existing = header.get("parameters")
    header["parameters"] = {**existing, **params} if isinstance(existing, dict) else dict(params)
    encoded = orjson.dumps(header)
    if header_length is None:
        return encoded, None
    return encoded + body[header_length:], len(encoded)


# A reported service time beyond this (an hour) or below 0 is an instance's bug, not a measurement.
MAX_REPORTED_SERVICE_MS = 3_600_000.0


def _service_ms(value: Any, unit_ms: float) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    ms = float(value) * unit_ms
    return ms if 0.0 <= ms <= MAX_REPORTED_SERVICE_MS else None  # NaN fails both


def reported_service_ms_json(header: Mapping[str, Any] | None) -> float | None:
    """The service time an instance reported in a JSON response header, if any (and sane)."""
    params = header.get("parameters") if header is not None else None
    if isinstance(params, dict):
        for key, unit_ms in SERVICE_TIME_KEYS:
            if key in params and (ms := _service_ms(params[key], unit_ms)) is not None:
                return ms
    return None


# -- gRPC/protobuf ---------------------------------------------------------------------------


def routing_from_proto(request: pb.ModelInferRequest) -> RoutingInfo:
    """Routing facts of a gRPC request, and the bounds of what is forwarded: typed contents are
    checked in full (they are re-encoded for an HTTP instance, and a value out of its
    datatype's range must be the client's error, not the instance's)."""
    qos = late = service_class = variant = None
    if QOS_PARAMETER in request.parameters:
        qos = check_qos(proto_param_value(request.parameters[QOS_PARAMETER]))
    if LATE_PARAMETER in request.parameters:
        late = check_late(proto_param_value(request.parameters[LATE_PARAMETER]))
    if CLASS_PARAMETER in request.parameters:
        service_class = _name_parameter(CLASS_PARAMETER, proto_param_value(request.parameters[CLASS_PARAMETER]))
    if VARIANT_PARAMETER in request.parameters:
        variant = _name_parameter(VARIANT_PARAMETER, proto_param_value(request.parameters[VARIANT_PARAMETER]))
    batch = proto_batch(request)
    if len(request.raw_input_contents) != len(request.inputs):
        parse_proto_infer(request)
    return RoutingInfo(
        batch=batch,
        request_id=check_request_id(request.id),
        qos_ms=qos,
        version=check_version(request.model_version),
        late=late,
        service_class=service_class,
        variant=variant,
    )


def gateway_parameters_suffix(instance: str, queue_ms: float, e2e_ms: float, variant: str | None = None) -> bytes:
    """``gateway_parameters(...)`` as a serialized ``ModelInferResponse`` to append to one (gRPC),
    written by hand: its shape never changes, and building a message for it cost ~2 us per
    response against ~0.5 us."""
    suffix = (
        wire.string_parameter(PARAM_INSTANCE, instance)
        + wire.int64_parameter(PARAM_QUEUE_US, to_us(queue_ms))
        + wire.int64_parameter(PARAM_E2E_US, to_us(e2e_ms))
    )
    return suffix if variant is None else suffix + wire.string_parameter(PARAM_VARIANT, variant)


def reported_service_ms_proto(response: pb.ModelInferResponse) -> float | None:
    for key, unit_ms in SERVICE_TIME_KEYS:
        if key in response.parameters and (ms := _service_ms(proto_param_value(response.parameters[key]), unit_ms)) is not None:
            return ms
    return None


# -- shared checks ---------------------------------------------------------------------------


def check_late(value: Any, what: str = f"parameter {LATE_PARAMETER}") -> str:
    if value not in ("shed", "serve"):
        raise BadRequest(f"{what}: expected \"shed\" or \"serve\", got {quote(value)}")
    return str(value)


def _name_parameter(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"parameter {key}: expected a {key} name (a string), got {quote(value)}")
    return check_name(value, f"parameter {key}")


def check_qos(value: Any, what: str = f"parameter {QOS_PARAMETER}") -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_QOS_MS:
        raise BadRequest(f"{what}: expected a number of ms in (0, {MAX_QOS_MS}], got {quote(value)}")
    return float(value)
