"""V2 gRPC infer messages to V2 HTTP (binary tensor extension) and back, without decoding tensors.

Why: a gRPC query the gateway forwards over gRPC pays for a grpc.aio client call (~0.2 ms of
CPU) on top of the grpc.aio server call. Sent to the instance's HTTP endpoint over the
gateway's own HTTP/1.1 client instead, the backend half costs a few µs, and the tensors still
travel as opaque bytes:

* request: ``raw_input_contents[i]`` becomes the i-th binary tensor after a JSON header that
  lists the inputs (name, datatype, shape, parameters plus ``binary_data_size``) and the
  requested outputs with ``binary_data: true`` (no outputs listed: the request parameter
  ``binary_data_output: true``). Typed ``contents`` (no raw data) are first validated as a
  gRPC instance would, then encoded to raw bytes (little-endian; BYTES length-prefixed).
* response: the JSON header's fields and parameters become a ``ModelInferResponse``; each
  binary output becomes its ``raw_output_contents`` entry. Outputs an instance sent as JSON
  ``data`` (one that ignores ``binary_data``) are encoded to raw bytes per datatype, so a
  response always has raw contents for all of its outputs, as tritonclient expects.

For an instance without the binary tensor extension (MLServer, and any server whose metadata
does not list ``binary_tensor_data``), a binary-extension request is rewritten as plain JSON:
each binary input becomes JSON ``data`` and the outputs are asked for as JSON.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.params import set_proto_parameters
from gateway.protocol.v2 import (
    CONTENTS_FIELD,
    load_json_object,
    parse_http_infer,
    parse_proto_infer,
    proto_param_value,
)
from gateway.protocol.wire import RAW_OUTPUT_TAG, varint

# The binary tensor extension: its name in server metadata, and its parameters.
BINARY_EXTENSION = "binary_tensor_data"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
# Content type of an HTTP body in the binary tensor extension (what tritonclient sends).
BINARY_CONTENT_TYPE = "application/octet-stream"

# Little-endian numpy dtypes of the fixed-size V2 datatypes (BF16 and BYTES are special).
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}



class MalformedResponse(ValueError):
    """An instance's HTTP infer response that cannot be read as a V2 response."""


@dataclass(frozen=True, slots=True)
class HttpInfer:
    """An HTTP infer body in the binary tensor extension: JSON header, then the tensors."""

    body: bytes
    header_length: int


@dataclass(frozen=True, slots=True)
class GrpcInferResponse:
    """A translated response: ``data`` is the serialized ``ModelInferResponse``; ``message``
    holds the same fields except the output tensors' bytes (for reading parameters)."""

    message: pb.ModelInferResponse
    data: bytes


# -- request: gRPC -> HTTP -------------------------------------------------------------------


def proto_request_to_http(request: pb.ModelInferRequest) -> HttpInfer:
    """The HTTP binary-extension body of a gRPC ``ModelInferRequest`` (model and version go in
    the URL). BadRequest for a request that a V2 gRPC server would refuse before reading data."""
    inputs = request.inputs
    raw = request.raw_input_contents
    tensors: list[bytes]
    if len(raw) == len(inputs):
        tensors = list(raw)
    else:  # typed contents, or raw contents for only some inputs
        parse_proto_infer(request)  # the same V2 error a gRPC instance would give
        tensors = [contents_to_raw(t) for t in inputs]
    json_inputs = []
    for t, data in zip(inputs, tensors, strict=True):
        params = params_to_json(t.parameters)
        params[BINARY_DATA_SIZE] = len(data)
        json_inputs.append(
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": params}
        )
    doc: dict[str, Any] = {"inputs": json_inputs}
    if request.id:
        doc["id"] = request.id
    params = params_to_json(request.parameters)
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": {**params_to_json(o.parameters), BINARY_DATA: True}}
            for o in request.outputs
        ]
    else:  # no output named: all of them, and in binary form
        params[BINARY_DATA_OUTPUT] = True
    doc["parameters"] = params
    head = orjson.dumps(doc)
    return HttpInfer(b"".join((head, *tensors)), len(head))


def params_to_json(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A protobuf parameter map as JSON values (parameters with no value set are left out)."""
    if not params:
        return {}
    out = {}
    for key, p in params.items():
        value = proto_param_value(p)
        if value is not None:
            out[key] = value
    return out


def contents_to_raw(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor,
) -> bytes:
    """A typed ``contents`` tensor in the raw encoding (validated beforehand: the datatype has a
    contents field and the element count matches the shape)."""
    values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
    if tensor.datatype == "BYTES":
        return bytes_elements_to_raw(values)
    return np.asarray(list(values), dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


def bytes_elements_to_raw(elements: Iterable[bytes]) -> bytes:
    """BYTES elements in the raw encoding: each a 4-byte little-endian length, then the bytes."""
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


# -- request: binary extension -> plain JSON --------------------------------------------------


def binary_request_to_json(body: bytes, header_length: int) -> bytes:
    """The plain-JSON form of an HTTP binary-extension infer body, for an instance without the
    extension. BadRequest for a body a V2 server would refuse, or a BYTES element that is not
    UTF-8 text (JSON cannot carry it)."""
    parse_http_infer(body, "", "", header_length)  # sizes and shapes checked before decoding
    view = memoryview(body)
    doc = load_json_object(view[:header_length])
    offset = header_length
    for i, tensor in enumerate(doc["inputs"]):
        params = tensor.get("parameters")
        if not isinstance(params, dict) or BINARY_DATA_SIZE not in params:
            continue
        size = params.pop(BINARY_DATA_SIZE)
        try:
            tensor["data"] = raw_to_json_data(view[offset : offset + size], tensor["datatype"])
        except JsonCannotCarry as exc:
            raise BadRequest(
                f"inputs[{i}]: {exc}, and this instance takes JSON tensors only (no binary tensor extension)"
            ) from None
        offset += size
        if not params:
            del tensor["parameters"]
    for output in doc.get("outputs") or ():
        params = output.get("parameters") if isinstance(output, dict) else None
        if isinstance(params, dict):
            params.pop(BINARY_DATA, None)
    params = doc.get("parameters")
    if isinstance(params, dict):
        params.pop(BINARY_DATA_OUTPUT, None)
    return orjson.dumps(doc)


def proto_request_to_json(request: pb.ModelInferRequest) -> bytes:
    """The plain-JSON HTTP body of a gRPC ``ModelInferRequest``."""
    translated = proto_request_to_http(request)
    return binary_request_to_json(translated.body, translated.header_length)


class JsonCannotCarry(ValueError):
    """Tensor data that JSON cannot carry: a BYTES element that is not UTF-8 text, +-Infinity."""


def raw_to_json_data(raw: memoryview | bytes, datatype: str, finite_only: bool = True) -> list[Any]:
    """A tensor in the raw encoding as a flat JSON ``data`` list (NaN as null, as V2 servers
    read it back). JsonCannotCarry for what JSON has no way to write (+-Infinity too, unless
    ``finite_only`` is False: then it goes as null, as the gateway writes an HTTP instance's)."""
    if datatype == "BYTES":
        out: list[Any] = []
        view, pos = memoryview(raw), 0
        while pos < len(view):
            n = int.from_bytes(view[pos : pos + 4], "little")
            try:
                out.append(bytes(view[pos + 4 : pos + 4 + n]).decode())
            except UnicodeDecodeError:
                raise JsonCannotCarry("a BYTES element is not UTF-8 text") from None
            pos += 4 + n
        return out
    if datatype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
    else:
        values = np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype])
    if finite_only and values.dtype.kind == "f" and np.isinf(values).any():
        # orjson would write null, read back as NaN: another value
        raise JsonCannotCarry("holds +-Infinity, which JSON cannot carry")
    return values.tolist()


# -- response: HTTP -> gRPC ------------------------------------------------------------------


def http_response_to_proto(body: bytes, header_length: int | None) -> GrpcInferResponse:
    """The ``ModelInferResponse`` of an HTTP infer response body (binary extension when
    ``header_length`` is set, plain JSON otherwise). MalformedResponse if it is not one."""
    view = memoryview(body)
    try:
        head = load_json_object(view if header_length is None else view[:header_length], "instance response")
    except BadRequest as exc:
        raise MalformedResponse(str(exc)) from None
    message = pb.ModelInferResponse(
        model_name=_str(head, "model_name"), model_version=_str(head, "model_version"), id=_str(head, "id")
    )
    params = head.get("parameters")
    if isinstance(params, dict):
        set_proto_parameters(message.parameters, params)
    outputs = head.get("outputs", [])
    if not isinstance(outputs, list):
        raise MalformedResponse("instance response: 'outputs' is not a list")
    binary = view[header_length:] if header_length is not None else view[:0]
    offset = 0
    tail: list[bytes | memoryview] = []
    for i, o in enumerate(outputs):
        if not isinstance(o, dict):
            raise MalformedResponse(f"instance response: outputs[{i}] is not an object")
        datatype = _str(o, "datatype")
        shape = o.get("shape", [])
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise MalformedResponse(f"instance response: outputs[{i}].shape is not a list of integers")
        oparams = o.get("parameters")
        oparams = dict(oparams) if isinstance(oparams, dict) else {}
        size = oparams.pop(BINARY_DATA_SIZE, None)
        raw: bytes | memoryview
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise MalformedResponse(
                    f"instance response: outputs[{i}] binary_data_size {size!r} runs past the data"
                )
            raw = binary[offset : offset + size]
            offset += size
        elif "data" in o:
            try:
                raw = json_data_to_raw(o["data"], datatype)
            except BadTensorData as exc:
                raise MalformedResponse(f"instance response: outputs[{i}]: {exc}") from None
        else:
            raise MalformedResponse(f"instance response: outputs[{i}] has neither data nor binary_data_size")
        tensor = message.outputs.add(name=_str(o, "name"), datatype=datatype, shape=shape)
        if oparams:
            set_proto_parameters(tensor.parameters, oparams)
        tail += (RAW_OUTPUT_TAG, varint(len(raw)), raw)
    # Protobuf appends repeated fields met later in the stream: the tensors' bytes go straight
    # after the serialized header fields instead of being copied into the message and out again.
    return GrpcInferResponse(message, b"".join((message.SerializeToString(), *tail)))


class BadTensorData(ValueError):
    """JSON ``data`` that is not a tensor of its datatype."""


def json_data_to_raw(data: Any, datatype: str) -> bytes:
    """JSON ``data`` (flat or nested, row-major) of a V2 tensor in the raw encoding; BadTensorData
    for an unknown datatype or values that are not of it (text in a number tensor, an integer
    out of range, a fraction in an integer tensor). Null in a float tensor is NaN."""
    try:
        return _json_data_to_raw(data, datatype)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # ragged, nested, huge
        if isinstance(exc, BadTensorData):
            raise
        raise BadTensorData(f"{datatype} data is not a tensor of it: {type(exc).__name__}: {exc}") from None


def _json_data_to_raw(data: Any, datatype: str) -> bytes:
    flat = np.asarray(data, dtype=object).ravel() if isinstance(data, list) else np.array([data], dtype=object)
    if datatype == "BYTES":
        return bytes_elements_to_raw(_bytes_element(x) for x in flat)
    dtype = NUMPY_DTYPES.get(datatype, "<f4" if datatype == "BF16" else None)
    if dtype is None:
        raise BadTensorData(f"unknown datatype {datatype!r}")
    floats = np.dtype(dtype).kind == "f"
    allowed = _BOOL_TYPES if datatype == "BOOL" else _FLOAT_TYPES if floats else _INT_TYPES
    found = set(map(type, flat.tolist()))  # at C speed; ragged nesting leaves lists here
    if not found <= allowed:
        extra = found - allowed
        name = next((what for t, what in _TYPE_NAMES.items() if t in extra), "values of another kind")
        raise BadTensorData(f"{datatype} data holds {name}")
    values = np.asarray(data, dtype="<f8") if floats else np.asarray(data)
    if values.dtype.kind == "O":  # integers past 64 bits
        raise BadTensorData(f"{datatype} data holds a value out of range")
    if values.size and not floats and datatype != "BOOL":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise BadTensorData(f"{datatype} data holds a value outside [{info.min}, {info.max}]")
    if datatype == "BF16":  # float32 rounded to nearest even, upper 16 bits
        bits = values.astype("<f4").ravel().view("<u4")
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    return values.astype(dtype).tobytes()


# The JSON values each datatype class takes (Triton's rules: no booleans among numbers; null is
# NaN in a float tensor; 0 and 1 as booleans, as some servers write them).
_FLOAT_TYPES = frozenset({int, float, type(None)})
_INT_TYPES = frozenset({int})
_BOOL_TYPES = frozenset({bool, int})
_TYPE_NAMES: dict[type, str] = {str: "text", list: "ragged nesting", dict: "objects", float: "fractions",
                                bool: "booleans", type(None): "nulls"}


def metadata_from_json(body: bytes) -> pb.ModelMetadataResponse:
    """A V2 HTTP model metadata body as a gRPC ``ModelMetadataResponse``; MalformedResponse if
    it is not one."""
    try:
        doc = load_json_object(body, "instance metadata")
        reply = pb.ModelMetadataResponse(
            name=_str(doc, "name"), versions=_strings(doc, "versions"), platform=_str(doc, "platform")
        )
        for key, tensors in (("inputs", reply.inputs), ("outputs", reply.outputs)):
            items = doc.get(key, [])
            if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
                raise MalformedResponse(f"instance metadata: {key!r} is not a list of objects")
            for t in items:
                shape = t.get("shape", [])
                if not isinstance(shape, list) or not all(isinstance(d, int) and -1 <= d < 2**63 for d in shape):
                    raise MalformedResponse(f"instance metadata: a shape in {key!r} is not a list of dimensions")
                tensors.add(name=_str(t, "name"), datatype=_str(t, "datatype"), shape=shape)
    except BadRequest as exc:
        raise MalformedResponse(str(exc)) from None
    return reply


def _strings(obj: Mapping[str, Any], key: str) -> list[str]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedResponse(f"instance response: {key!r} is not a list of strings")
    return value


def _bytes_element(x: Any) -> bytes:
    return x.encode() if isinstance(x, str) else orjson.dumps(x)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise MalformedResponse(f"instance response: {key!r} is not a string")
    return value
