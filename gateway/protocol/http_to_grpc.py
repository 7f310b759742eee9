"""V2 HTTP infer requests to V2 gRPC and back, for an instance that has a gRPC endpoint only.

* request: the body is validated as a V2 HTTP server would (``parse_http_infer``); each input
  becomes an ``inputs`` entry (its parameters less ``binary_data_size``) and its data, from the
  binary section or from JSON ``data`` (checked against the datatype), its
  ``raw_input_contents`` entry. Requested outputs and parameters carry over, less the binary
  extension's own (``binary_data``, ``binary_data_output``): those say how the gateway answers.
* response: a ``ModelInferResponse`` becomes the JSON header; each output goes in binary form
  where the client asked for it (``binary_data`` / ``binary_data_output``), as JSON ``data``
  otherwise, whether the instance sent raw or typed contents.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.datatypes import element_size
from gateway.protocol.params import set_proto_parameters
from gateway.protocol.translate import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    BadTensorData,
    JsonCannotCarry,
    MalformedResponse,
    contents_to_raw,
    json_data_to_raw,
    params_to_json,
    raw_to_json_data,
)
from gateway.protocol.v2 import InferRequest, InputTensor, check_contents, check_raw, parse_http_infer_doc


@dataclass(frozen=True, slots=True)
class ProtoInfer:
    """A translated request: the serialized ``ModelInferRequest``, and the validated HTTP
    request it came from (which outputs the client wants in binary form)."""

    data: bytes
    request: InferRequest


@dataclass(frozen=True, slots=True)
class HttpInferResponse:
    """A translated response: the body, its JSON header's length when binary outputs follow it
    (None for a plain JSON body), and the header itself (for the gateway's parameters)."""

    body: bytes
    header_length: int | None
    header: dict[str, Any]


def http_request_to_proto(body: bytes, header_length: int | None, model: str, version: str | None) -> ProtoInfer:
    """The ``ModelInferRequest`` of an HTTP infer body for ``model`` (the name the instance
    serves). BadRequest for a body a V2 server would refuse, or one that protobuf cannot carry."""
    request, head = parse_http_infer_doc(body, model, version or "", header_length)
    try:
        return ProtoInfer(_request_message(body, header_length, request, head).SerializeToString(), request)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a parameter out of int64, nested deep
        raise BadRequest(f"the request cannot be sent to a gRPC instance: {type(exc).__name__}: {exc}") from None


def _request_message(
    body: bytes, header_length: int | None, request: InferRequest, head: dict[str, Any]
) -> pb.ModelInferRequest:
    view = memoryview(body)
    model, version = request.model, request.version
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request.id)
    set_proto_parameters(message.parameters, _without(request.parameters, BINARY_DATA_OUTPUT))
    offset = 0 if header_length is None else header_length
    raw: list[bytes] = []
    for i, (tensor, doc) in enumerate(zip(request.inputs, head["inputs"], strict=True)):
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        set_proto_parameters(entry.parameters, _without(doc.get("parameters", {}), BINARY_DATA_SIZE))
        if tensor.raw_size is not None:
            raw.append(bytes(view[offset : offset + tensor.raw_size]))
            offset += tensor.raw_size
        else:
            try:
                raw.append(json_data_to_raw(doc["data"], tensor.datatype))
            except BadTensorData as exc:
                raise BadRequest(f"inputs[{i}] {tensor.name!r}: {exc}") from None
    message.raw_input_contents.extend(raw)
    for doc in head.get("outputs") or ():
        asked = message.outputs.add(name=doc["name"])
        set_proto_parameters(asked.parameters, _without(doc.get("parameters", {}), BINARY_DATA))
    return message


def proto_response_to_http(data: bytes, request: InferRequest) -> HttpInferResponse:
    """The HTTP body of a serialized ``ModelInferResponse``, each output in the form ``request``
    asked for. MalformedResponse if it is not a V2 response; BadRequest for an output the
    client asked for as JSON that JSON cannot carry (non-UTF-8 BYTES: ask for it in binary)."""
    message = pb.ModelInferResponse()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedResponse(f"instance response: malformed protobuf ModelInferResponse: {exc}") from None
    raw = message.raw_output_contents
    if raw and len(raw) != len(message.outputs):
        raise MalformedResponse(
            f"instance response: {len(raw)} raw_output_contents for {len(message.outputs)} outputs"
        )
    head: dict[str, Any] = {"model_name": message.model_name, "model_version": message.model_version}
    if message.id:
        head["id"] = message.id
    params = params_to_json(message.parameters)
    if params:
        head["parameters"] = params
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for i, o in enumerate(message.outputs):
        tensor: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        oparams = params_to_json(o.parameters)
        tensor_raw = _output_raw(o, raw[i] if raw else None, i)
        if request.wants_binary(o.name):
            oparams[BINARY_DATA_SIZE] = len(tensor_raw)
            tail.append(tensor_raw)
        else:
            try:
                tensor["data"] = raw_to_json_data(tensor_raw, o.datatype)
            except JsonCannotCarry as exc:
                if o.datatype == "BYTES":
                    raise BadRequest(
                        f"output {o.name!r}: {exc}: ask for it in binary form (parameters.binary_data: true)"
                    ) from None
                tensor["data"] = raw_to_json_data(tensor_raw, o.datatype, finite_only=False)
        if oparams:
            tensor["parameters"] = oparams
        outputs.append(tensor)
    head["outputs"] = outputs
    encoded = orjson.dumps(head)
    if not tail:
        return HttpInferResponse(encoded, None, head)
    return HttpInferResponse(b"".join((encoded, *tail)), len(encoded), head)


def metadata_to_json(reply: pb.ModelMetadataResponse) -> bytes:
    """A gRPC ``ModelMetadataResponse`` as the V2 HTTP model metadata body."""

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return orjson.dumps(
        {
            "name": reply.name,
            "versions": list(reply.versions),
            "platform": reply.platform,
            "inputs": tensors(reply.inputs),
            "outputs": tensors(reply.outputs),
        }
    )


def _output_raw(o: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None, i: int) -> bytes:
    """An output's data in the raw encoding, checked against its datatype and shape by the same
    rules as a request's inputs."""
    label = f"output {o.name!r}"
    tensor = InputTensor(o.name, o.datatype, tuple(o.shape))
    try:
        element_size(o.datatype)  # a V2 datatype
        if any(d < 0 for d in o.shape):
            raise BadRequest(f"{label}: shape {list(o.shape)} has a negative dimension")
        if raw is None:
            check_contents(tensor, o, label, "raw_output_contents")
            raw = contents_to_raw(o)
        check_raw(tensor, raw, "output")
    except BadRequest as exc:
        raise MalformedResponse(f"instance response: outputs[{i}]: {exc}") from None
    return raw


def _without(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != key} if isinstance(params, Mapping) else {}
