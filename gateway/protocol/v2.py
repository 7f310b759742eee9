"""Parse and validate V2 (Open Inference Protocol) infer requests, transport-agnostic.

Shared by the emulated servers and the gateway: both need the model, the request id, the
batch size (shape[0] of the first input) and a request that is known to be well formed,
whether it came as HTTP JSON, HTTP JSON + binary tensors, or a gRPC ``ModelInferRequest``.

Every function here is pure (no I/O, no clock). Tensor payloads are never decoded: the only
thing read from them is their length (and, for BYTES tensors in binary form, the 4-byte length
prefixes), to check it against shape x datatype. Every problem raises
``gateway.errors.BadRequest`` with a message that says what was expected.

HTTP binary tensor extension: when the ``Inference-Header-Content-Length`` header is present,
the body is that many bytes of JSON followed by the raw tensors, in input order, each input
saying its length in ``parameters.binary_data_size``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.datatypes import byte_size, count_bytes_elements, element_count, element_size
from gateway.protocol.limits import check_nesting, check_shape, quote

# HTTP header of the binary tensor extension: the length of the JSON part of the body.
INFERENCE_HEADER = "Inference-Header-Content-Length"
# The V2 gRPC service, and ModelInfer's full method name (for calls that send raw bytes).
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_INFER_METHOD = f"/{GRPC_SERVICE}/ModelInfer"

# Which InferTensorContents field carries each datatype in a gRPC request (FP16/BF16 have
# none: they can only travel in raw_input_contents).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Datatypes narrower than the contents field that carries them: the range a value must be in.
CONTENTS_RANGE: dict[str, tuple[int, int]] = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
}


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One input's metadata. ``raw_size`` is its byte length in the binary section (HTTP binary
    extension) or in ``raw_input_contents`` (gRPC); None when its data is inline."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw_size: int | None = None


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """A requested output. ``binary`` is its ``binary_data`` parameter (None if not given)."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A validated infer request: what routing and the emulated servers need, no tensor data."""

    model: str
    inputs: tuple[InputTensor, ...]
    version: str = ""
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[OutputRequest, ...] = ()
    # Length of the JSON part when the HTTP binary extension was used; None otherwise.
    header_length: int | None = None

    @property
    def batch(self) -> int:
        """The batch size: shape[0] of the first input (validated to be >= 1); 1 for a scalar."""
        shape = self.inputs[0].shape
        return shape[0] if shape else 1

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` should be returned in binary form (HTTP binary extension).

        The output's own ``binary_data`` wins; otherwise the request's ``binary_data_output``.
        """
        for o in self.outputs:
            if o.name == output and o.binary is not None:
                return o.binary
        return bool(self.parameters.get("binary_data_output", False))


def batch_of_shape(shape: Sequence[int], input_name: str = "") -> int:
    """shape[0] of the first input, checked to be a batch size >= 1. A scalar first input (shape
    ``[]``, a model without a batch dimension) is one query."""
    what = f"first input {quote(input_name)}" if input_name else "first input"
    if len(shape) == 0:
        return 1
    if shape[0] < 1:
        raise BadRequest(f"batch size {shape[0]}: shape[0] of the {what} must be >= 1")
    return int(shape[0])


# ---------------------------------------------------------------------------------------------
# HTTP / JSON


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """Read ``Inference-Header-Content-Length``: None if absent, else a length within the body."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{INFERENCE_HEADER}: expected an integer, got {value!r}") from None
    if not 0 < n <= body_length:
        raise BadRequest(f"{INFERENCE_HEADER}: expected 1..{body_length} (the body length), got {n}")
    return n


NONFINITE_JSON_BYTES = 1 << 20


def load_json_object(data: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    """Parse JSON that must be an object; BadRequest on malformed JSON. ``NaN`` and
    ``[-]Infinity`` tokens, which Triton and tritonclient write, are read too (in bodies up to
    ``NONFINITE_JSON_BYTES``: the parser that takes them is ~10x slower)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        obj = loads_nonfinite(data)
        if obj is None:
            raise BadRequest(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"{what}: expected a JSON object, got {_json_kind(obj)}")
    return obj


def loads_nonfinite(data: bytes | memoryview) -> Any:
    """JSON with ``NaN``/``Infinity`` tokens (not JSON, but what Triton writes), parsed; None
    when it is not that, or too long for the slow parser."""
    if len(data) > NONFINITE_JSON_BYTES:
        return None
    raw = bytes(data)
    if b"NaN" not in raw and b"Infinity" not in raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def json_batch(obj: Mapping[str, Any]) -> int:
    """The batch size of a parsed JSON infer request, checking only what that needs."""
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise BadRequest("request has no inputs: expected a non-empty 'inputs' list of objects")
    first = inputs[0]
    return batch_of_shape(_shape(first.get("shape"), _input_label(first, 0)), str(first.get("name", "")))


def parse_http_infer(
    body: bytes, model: str, version: str = "", header_length: int | None = None
) -> InferRequest:
    """Validate an HTTP infer body (JSON, or JSON + binary tensors) for ``model`` from the URL.

    ``header_length`` is the parsed ``Inference-Header-Content-Length`` (see
    ``parse_header_length``), None when the body is all JSON.
    """
    return parse_http_infer_doc(body, model, version, header_length)[0]


def parse_http_infer_doc(
    body: bytes, model: str, version: str = "", header_length: int | None = None
) -> tuple[InferRequest, dict[str, Any]]:
    """``parse_http_infer``, and the JSON header it read (for a translation that needs the data)."""
    view = memoryview(body)
    head = view if header_length is None else view[:header_length]
    obj = load_json_object(head)
    binary_len = 0 if header_length is None else len(body) - header_length

    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request has no inputs: expected a non-empty 'inputs' list")
    inputs: list[InputTensor] = []
    offset = 0  # into the binary section
    for i, raw in enumerate(raw_inputs):
        tensor = _json_input(raw, i)
        if tensor.raw_size is not None:
            if header_length is None:
                raise BadRequest(
                    f"input {tensor.name!r} has parameters.binary_data_size but the request has no "
                    f"{INFERENCE_HEADER} header"
                )
            end = offset + tensor.raw_size
            if end > binary_len:
                raise BadRequest(
                    f"input {tensor.name!r}: binary_data_size {tensor.raw_size} runs past the end of the "
                    f"binary data ({binary_len} bytes after the JSON header)"
                )
            check_raw(tensor, view[header_length + offset : header_length + end])
            offset = end
        inputs.append(tensor)
    if offset != binary_len:
        raise BadRequest(
            f"binary data is {binary_len} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    _check_unique(inputs)
    batch_of_shape(inputs[0].shape, inputs[0].name)

    request_id = obj.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"id: expected a string, got {_json_kind(request_id)}")
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"parameters: expected a JSON object, got {_json_kind(params)}")
    request = InferRequest(
        model=model,
        version=version,
        id=request_id,
        parameters=params,
        inputs=tuple(inputs),
        outputs=_json_outputs(obj.get("outputs", [])),
        header_length=header_length,
    )
    return request, obj


def _json_input(raw: Any, i: int) -> InputTensor:
    label = _input_label(raw, i)
    if not isinstance(raw, dict):
        raise BadRequest(f"{label}: expected a JSON object, got {_json_kind(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{label}: 'name' must be a non-empty string")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequest(f"{label}: 'datatype' must be a string such as \"FP32\"")
    element_size(datatype)  # unknown datatype -> BadRequest
    shape = _shape(raw.get("shape"), label)
    params = raw.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"{label}: 'parameters' must be a JSON object")
    size = params.get("binary_data_size")
    has_data = "data" in raw
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"{label}: binary_data_size must be an integer >= 0, got {size!r}")
        if has_data:
            raise BadRequest(f"{label}: has both 'data' and binary_data_size; expected one")
        return InputTensor(name, datatype, shape, raw_size=size)
    if not has_data:
        raise BadRequest(f"{label}: has no data: expected 'data' or parameters.binary_data_size")
    check_nesting(raw["data"], max(len(shape), 1), label)
    n = _count_json_elements(raw["data"])
    if n != element_count(shape):
        raise BadRequest(
            f"{label}: shape {list(shape)} needs {element_count(shape)} elements but 'data' has {n}"
        )
    return InputTensor(name, datatype, shape)


def _count_json_elements(data: Any) -> int:
    # V2 allows the data flat or nested row-major; a scalar counts as one element. Iterative:
    # the nesting is bounded by ``check_nesting`` first, but the stack must not be the bound.
    count = 0
    stack = [data]
    while stack:
        value = stack.pop()
        if not isinstance(value, list):
            count += 1
        elif list in set(map(type, value)):  # at C speed: data is often millions of numbers
            stack.extend(value)
        else:
            count += len(value)
    return count


def _json_outputs(raw: Any) -> tuple[OutputRequest, ...]:
    if not isinstance(raw, list):
        raise BadRequest(f"outputs: expected a list, got {_json_kind(raw)}")
    out = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest(f"outputs[{i}]: expected an object with a string 'name'")
        params = o.get("parameters", {})
        if not isinstance(params, dict):
            raise BadRequest(f"outputs[{i}]: 'parameters' must be a JSON object")
        binary = params.get("binary_data")
        out.append(OutputRequest(o["name"], None if binary is None else bool(binary)))
    return tuple(out)


def _shape(raw: Any, label: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise BadRequest(f"{label}: 'shape' must be a list of integers, got {quote(raw)}")
    if any(d < 0 for d in raw):
        raise BadRequest(f"{label}: shape {quote(raw)} has a negative dimension")
    return check_shape(tuple(raw), label)


def _input_label(raw: Any, i: int) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return f"input {quote(raw['name'])}"
    return f"inputs[{i}]"


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


# ---------------------------------------------------------------------------------------------
# gRPC / protobuf


def decode_proto_infer(data: bytes) -> pb.ModelInferRequest:
    """Decode a serialized ``ModelInferRequest``; BadRequest if it is not valid protobuf."""
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"malformed protobuf ModelInferRequest: {exc}") from None
    return request


def proto_batch(request: pb.ModelInferRequest) -> int:
    """The batch size of a gRPC infer request, checking only what that needs."""
    if not request.inputs:
        raise BadRequest("request has no inputs: expected at least one input tensor")
    first = request.inputs[0]
    label = f"input {quote(first.name)}"
    if any(d < 0 for d in first.shape):
        raise BadRequest(f"{label}: shape {quote(list(first.shape))} has a negative dimension")
    return batch_of_shape(check_shape(tuple(first.shape), label), first.name)


def parse_proto_infer(request: pb.ModelInferRequest) -> InferRequest:
    """Validate a gRPC ``ModelInferRequest`` (data in ``raw_input_contents`` or in ``contents``)."""
    if not request.inputs:
        raise BadRequest("request has no inputs: expected at least one input tensor")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "expected one per input (all inputs raw, or none)"
        )
    inputs: list[InputTensor] = []
    for i, t in enumerate(request.inputs):
        label = f"input {quote(t.name)}" if t.name else f"inputs[{i}]"
        if not t.name:
            raise BadRequest(f"{label}: 'name' must be a non-empty string")
        element_size(t.datatype)
        if any(d < 0 for d in t.shape):
            raise BadRequest(f"{label}: shape {quote(list(t.shape))} has a negative dimension")
        shape = check_shape(tuple(t.shape), label)
        tensor = InputTensor(t.name, t.datatype, shape, raw_size=len(raw[i]) if raw else None)
        if raw:
            check_raw(tensor, raw[i])
        else:
            check_contents(tensor, t, label)
        inputs.append(tensor)
    _check_unique(inputs)
    batch_of_shape(inputs[0].shape, inputs[0].name)
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        parameters={k: proto_param_value(v) for k, v in request.parameters.items()},
        inputs=tuple(inputs),
        outputs=tuple(
            OutputRequest(o.name, _opt_bool(proto_param_value(o.parameters["binary_data"])))
            if "binary_data" in o.parameters
            else OutputRequest(o.name)
            for o in request.outputs
        ),
    )


def proto_param_value(p: pb.InferParameter) -> bool | int | float | str | None:
    """The Python value of an ``InferParameter`` (None if no choice is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _opt_bool(value: object) -> bool | None:
    return None if value is None else bool(value)


def check_contents(tensor: InputTensor, t: Any, label: str, raw_field: str = "raw_input_contents") -> None:
    """A tensor's typed ``contents`` (of a request's input or a response's output ``t``): the
    datatype's field, as many values as the shape holds, each within the datatype's range."""
    field_name = CONTENTS_FIELD.get(tensor.datatype)
    if field_name is None:
        raise BadRequest(f"{label}: datatype {tensor.datatype} can only be sent in {raw_field}")
    values = getattr(t.contents, field_name)
    n = len(values)
    if n != element_count(tensor.shape):
        raise BadRequest(
            f"{label}: shape {list(tensor.shape)} needs {element_count(tensor.shape)} elements but "
            f"contents.{field_name} has {n}"
        )
    bounds = CONTENTS_RANGE.get(tensor.datatype)
    if bounds is not None and n and (min(values) < bounds[0] or max(values) > bounds[1]):
        raise BadRequest(
            f"{label}: contents.{field_name} holds a value outside {tensor.datatype}'s range "
            f"[{bounds[0]}, {bounds[1]}]"
        )


# ---------------------------------------------------------------------------------------------
# shared


def check_raw(tensor: InputTensor, data: bytes | memoryview, what: str = "input") -> None:
    """A tensor's raw bytes against its datatype and shape (``what``: input or output)."""
    expected = byte_size(tensor.datatype, tensor.shape)
    if expected is None:  # BYTES: count the length-prefixed elements
        n = count_bytes_elements(data)
        if n != element_count(tensor.shape):
            raise BadRequest(
                f"{what} {tensor.name!r}: shape {list(tensor.shape)} needs {element_count(tensor.shape)} "
                f"BYTES elements but the binary data holds {n}"
            )
    elif len(data) != expected:
        raise BadRequest(
            f"{what} {tensor.name!r}: shape {list(tensor.shape)} of {tensor.datatype} needs {expected} bytes "
            f"but the binary data has {len(data)}"
        )


def _check_unique(inputs: Sequence[InputTensor]) -> None:
    seen: set[str] = set()
    for t in inputs:
        if t.name in seen:
            raise BadRequest(f"input {t.name!r} appears more than once")
        seen.add(t.name)
