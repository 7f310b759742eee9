"""gRPC <-> HTTP translation of V2 infer messages (gateway.protocol.translate): pure, no I/O.

Requests are built by tritonclient's own gRPC and HTTP request builders, and responses read
back by tritonclient's gRPC result, so both ends are checked against a real V2 client.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers.inputs import MIXED_PARAMS, MIXED_TENSORS
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request as grpc_request
from tritonclient.http._utils import _get_inference_request as http_request

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.params import set_proto_parameters
from gateway.protocol.translate import (
    BadTensorData,
    MalformedResponse,
    http_response_to_proto,
    json_data_to_raw,
    proto_request_to_http,
)
from gateway.protocol.v2 import parse_http_infer, proto_param_value

TENSORS, PARAMS = MIXED_TENSORS, MIXED_PARAMS


def _grpc_inputs(tensors: dict[str, np.ndarray]) -> list[tg.InferInput]:
    out = []
    for name, x in tensors.items():
        inp = tg.InferInput(name, list(x.shape), tg.np_to_triton_dtype(x.dtype))
        inp.set_data_from_numpy(x)
        out.append(inp)
    return out


def _triton_grpc(outputs: list[tg.InferRequestedOutput] | None = None, **kw: Any) -> pb.ModelInferRequest:
    """A request exactly as tritonclient.grpc serializes it, parsed by the gateway's stubs."""
    request = grpc_request(
        "m", _grpc_inputs(kw.pop("tensors", TENSORS)), "", kw.pop("request_id", "r1"), outputs,
        0, False, False, 0, None, kw.pop("parameters", PARAMS),
    )  # fmt: skip
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def _split(body: bytes, header_length: int) -> tuple[dict[str, Any], bytes]:
    return orjson.loads(body[:header_length]), body[header_length:]


# -- request ---------------------------------------------------------------------------------


def test_a_tritonclient_grpc_request_becomes_what_tritonclient_http_would_send() -> None:
    request = _triton_grpc([tg.InferRequestedOutput("out", class_count=2)])
    http = proto_request_to_http(request)
    head, binary = _split(http.body, http.header_length)

    http_inputs = []
    for name, x in TENSORS.items():
        inp = th.InferInput(name, list(x.shape), th.np_to_triton_dtype(x.dtype))
        inp.set_data_from_numpy(x, binary_data=True)
        http_inputs.append(inp)
    outputs = [th.InferRequestedOutput("out", binary_data=True, class_count=2)]
    expected_body, expected_length = http_request(
        http_inputs, "r1", outputs, 0, False, False, 0, None, PARAMS
    )
    expected_head, expected_binary = _split(expected_body, expected_length)

    assert head == expected_head  # same inputs, shapes, sizes, outputs, parameters, id
    assert binary == expected_binary == b"".join(request.raw_input_contents)  # bytes untouched
    parsed = parse_http_infer(http.body, "m", header_length=http.header_length)  # valid V2 for a server
    assert [t.name for t in parsed.inputs] == list(TENSORS) and parsed.wants_binary("out")


def test_with_no_outputs_named_every_output_is_asked_for_in_binary() -> None:
    http = proto_request_to_http(_triton_grpc(parameters={}, request_id=""))
    head, _ = _split(http.body, http.header_length)
    assert "outputs" not in head and "id" not in head
    assert head["parameters"] == {"binary_data_output": True}


def test_typed_contents_are_encoded_as_the_raw_bytes_tritonclient_would_send() -> None:
    request = _triton_grpc(parameters={})
    typed = pb.ModelInferRequest(model_name="m")
    typed.CopyFrom(request)
    del typed.raw_input_contents[:]
    contents = {
        "f32": ("fp32_contents", TENSORS["f32"].ravel().tolist()),
        "i64": ("int64_contents", TENSORS["i64"].ravel().tolist()),
        "u8": ("uint_contents", TENSORS["u8"].ravel().tolist()),
        "b": ("bool_contents", TENSORS["b"].ravel().tolist()),
        "s": ("bytes_contents", list(TENSORS["s"])),
    }
    kept = [t for t in typed.inputs if t.name in contents]
    del typed.inputs[:]
    for t in kept:
        field, values = contents[t.name]
        getattr(t.contents, field).extend(values)
        typed.inputs.append(t)
    http = proto_request_to_http(typed)
    _, binary = _split(http.body, http.header_length)
    raw = dict(zip([t.name for t in request.inputs], request.raw_input_contents, strict=True))
    assert binary == b"".join(raw[name] for name in contents)


def test_requests_a_grpc_server_would_refuse_are_refused_with_its_error() -> None:
    partial = _triton_grpc()
    del partial.raw_input_contents[-1]  # raw data for some inputs only
    with pytest.raises(BadRequest, match="raw_input_contents has 5 entries for 6 inputs"):
        proto_request_to_http(partial)
    wrong = pb.ModelInferRequest(model_name="m")
    wrong.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.0])
    with pytest.raises(BadRequest, match="needs 2 elements"):
        proto_request_to_http(wrong)
    half = pb.ModelInferRequest(model_name="m")
    half.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(BadRequest, match="only be sent in raw_input_contents"):
        proto_request_to_http(half)


# -- response --------------------------------------------------------------------------------


def _http_response(outputs: dict[str, np.ndarray], binary: bool, **doc: Any) -> tuple[bytes, int | None]:
    """An HTTP infer response as a V2 server writes it (binary extension or JSON data)."""
    head: dict[str, Any] = {"model_name": "m", "model_version": "1", "id": "r1", "outputs": [], **doc}
    raws = []
    for name, x in outputs.items():
        datatype = th.np_to_triton_dtype(x.dtype)
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(x.shape)}
        if binary:
            raw = tg.serialize_byte_tensor(x).item() if datatype == "BYTES" else x.tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            out["data"] = [v.decode() for v in x.ravel()] if datatype == "BYTES" else x.tolist()
        head["outputs"].append(out)
    encoded = orjson.dumps(head)
    return (encoded + b"".join(raws), len(encoded)) if binary else (encoded, None)


def _triton_result(data: bytes) -> tg.InferResult:
    """The translated response as tritonclient.grpc reads it."""
    return tg.InferResult(service_pb2.ModelInferResponse.FromString(data))


@pytest.mark.parametrize("binary", [True, False])
def test_responses_read_back_by_tritonclient_give_the_instance_outputs(binary: bool) -> None:
    params = {"instance": "r5n.large-0", "service_ms": 1.5, "queue_ms": 0.0, "n": 3, "ok": True}
    body, header_length = _http_response(TENSORS, binary, parameters=params)
    reply = http_response_to_proto(body, header_length)
    result = _triton_result(reply.data)
    for name, x in TENSORS.items():
        got = result.as_numpy(name)
        assert got is not None and got.shape == x.shape and got.dtype == x.dtype
        assert np.array_equal(got, x), name
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
    assert {k: proto_param_value(v) for k, v in response.parameters.items()} == params
    assert isinstance(proto_param_value(response.parameters["queue_ms"]), float)  # 0.0 stays a double
    assert all("binary_data_size" not in o.parameters for o in response.outputs)
    assert reply.message.raw_output_contents == [] and len(response.raw_output_contents) == len(TENSORS)


def test_the_gateway_parameters_suffix_still_merges_into_a_translated_response() -> None:
    from gateway.protocol.routing import gateway_parameters_suffix

    body, header_length = _http_response({"out": TENSORS["f32"]}, True, parameters={"instance": "i0"})
    data = http_response_to_proto(body, header_length).data
    merged = service_pb2.ModelInferResponse.FromString(
        data + gateway_parameters_suffix("i0", 0.1, 0.2)
    )
    assert set(merged.parameters) == {"instance", "gateway_instance", "gateway_queue_us", "gateway_e2e_us"}
    assert np.array_equal(tg.InferResult(merged).as_numpy("out"), TENSORS["f32"])


def test_json_data_is_encoded_per_datatype() -> None:
    assert json_data_to_raw([[1.5], [-2.0]], "FP32") == np.array([1.5, -2.0], "<f4").tobytes()
    assert json_data_to_raw([1, 0, 1], "BOOL") == b"\x01\x00\x01"
    assert json_data_to_raw(["ab", "c"], "BYTES") == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert json_data_to_raw([1.0, -2.5], "BF16") == np.array([0x3F80, 0xC020], "<u2").tobytes()
    assert json_data_to_raw([[1], [None]], "FP64") == np.array([1.0, np.nan], "<f8").tobytes()  # null: NaN
    assert json_data_to_raw([2**63], "UINT64") == np.array([2**63], "<u8").tobytes()
    assert json_data_to_raw([], "INT32") == b""


@pytest.mark.parametrize(
    ("data", "datatype", "match"),
    [
        ([1], "FP8", "unknown datatype 'FP8'"),
        (["x"], "INT32", "INT32 data holds text"),
        (["1.5"], "FP32", "FP32 data holds text"),
        ([1.5], "INT64", "INT64 data holds fractions"),
        ([300], "INT8", r"outside \[-128, 127\]"),
        ([-1], "UINT32", "outside"),
        ([True], "FP32", "FP32 data holds booleans"),
        ([2**70], "INT64", "out of range"),
        ([1.0, "x", None], "FP32", "FP32 data holds text"),
        ([[1], [1, 2]], "FP32", "ragged nesting"),
        ([1.0, True], "FP32", "FP32 data holds booleans"),
        ([2, True], "INT32", "INT32 data holds booleans"),
        ([1, None], "INT32", "INT32 data holds nulls"),
        ([{"a": 1}], "INT64", "objects"),
    ],
)
def test_json_data_that_is_not_of_its_datatype_is_refused(data: Any, datatype: str, match: str) -> None:
    with pytest.raises(BadTensorData, match=match):
        json_data_to_raw(data, datatype)


def test_an_instances_response_with_text_in_a_number_output_is_malformed() -> None:
    body = orjson.dumps({"outputs": [{"name": "o", "datatype": "INT32", "shape": [1], "data": ["x"]}]})
    with pytest.raises(MalformedResponse, match=r"outputs\[0\]: INT32 data holds text"):
        http_response_to_proto(body, None)


def test_json_parameters_map_to_the_protobuf_oneof_by_type() -> None:
    message = pb.ModelInferResponse()
    set_proto_parameters(
        message.parameters, {"b": False, "i": -3, "u": 2**63, "d": 2.0, "s": "x", "l": [1, 2], "n": None}
    )
    which = {k: v.WhichOneof("parameter_choice") for k, v in message.parameters.items()}
    assert which == {"b": "bool_param", "i": "int64_param", "u": "uint64_param", "d": "double_param",
                     "s": "string_param", "l": "string_param"}  # fmt: skip
    assert message.parameters["l"].string_param == "[1,2]"


@pytest.mark.parametrize(
    ("body", "binary", "match"),
    [
        (b"not json", False, "malformed JSON"),
        (b"[]", False, "expected a JSON object"),
        (b'{"outputs": {}}', False, "'outputs' is not a list"),
        (b'{"outputs": [{"name": "o", "datatype": "FP32", "shape": [1]}]}', False, "neither data nor"),
        (b'{"outputs": [{"name": "o", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 8}}]}1234',
         True, "runs past the data"),
        (b'{"model_name": 3}', False, "'model_name' is not a string"),
    ],
)  # fmt: skip
def test_malformed_instance_responses_are_refused(body: bytes, binary: bool, match: str) -> None:
    header_length = body.index(b"}]}") + 3 if binary else None  # binary: the JSON ends at "}]}"
    with pytest.raises(MalformedResponse, match=match):
        http_response_to_proto(body, header_length)


# -- binary extension -> plain JSON, for instances without the extension ----------------------


def _binary_body(tensors: dict[str, tuple[str, np.ndarray | list[bytes]]], **doc: object) -> tuple[bytes, int]:
    inputs, raws = [], []
    for name, (datatype, x) in tensors.items():
        if datatype == "BYTES":
            raw = b"".join(len(e).to_bytes(4, "little") + e for e in x)  # type: ignore[union-attr]
            shape = [len(x)]
        else:
            assert isinstance(x, np.ndarray)
            raw, shape = x.tobytes(), list(x.shape)
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}})
        raws.append(raw)
    head = orjson.dumps({"inputs": inputs, **doc})
    return head + b"".join(raws), len(head)


def test_a_binary_request_becomes_the_same_request_in_json() -> None:
    from gateway.protocol.translate import binary_request_to_json

    f32 = np.arange(6, dtype="<f4").reshape(2, 3) / 4
    i64 = np.array([[-(2**40), 7]], dtype="<i8")
    body, n = _binary_body(
        {"a": ("FP32", f32), "b": ("INT64", i64), "c": ("BOOL", np.array([True, False])),
         "d": ("BYTES", [b"caf\xc3\xa9", b""])},
        id="r1",
        parameters={"binary_data_output": True, "qos_ms": 20},
        outputs=[{"name": "out", "parameters": {"binary_data": True, "classification": 2}}],
    )
    doc = orjson.loads(binary_request_to_json(body, n))
    assert doc["id"] == "r1" and doc["parameters"] == {"qos_ms": 20}
    assert doc["outputs"] == [{"name": "out", "parameters": {"classification": 2}}]
    a, b, c, d = doc["inputs"]
    assert a == {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": f32.ravel().tolist()}
    assert b["data"] == [-(2**40), 7] and c["data"] == [True, False] and d["data"] == ["café", ""]


def test_a_grpc_request_becomes_json_with_raw_or_typed_contents() -> None:
    from gateway.protocol.translate import proto_request_to_json

    req = pb.ModelInferRequest(model_name="m", id="g1")
    x = np.array([[1.5, -2.0]], dtype="<f8")
    req.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    req.raw_input_contents.append(x.tobytes())
    doc = orjson.loads(proto_request_to_json(req))
    assert doc["inputs"][0]["data"] == [1.5, -2.0] and doc["id"] == "g1"
    assert "binary_data_output" not in doc.get("parameters", {})
    typed = pb.ModelInferRequest(model_name="m")
    t = typed.inputs.add(name="y", datatype="INT32", shape=[3])
    t.contents.int_contents.extend([1, -2, 3])
    assert orjson.loads(proto_request_to_json(typed))["inputs"][0]["data"] == [1, -2, 3]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"s": ("BYTES", [b"\xff\xfe"])}, "not UTF-8 text"),
        ({"x": ("FP32", np.zeros(3, dtype="<f4"))}, None),  # control: fine
    ],
)
def test_what_json_cannot_carry_is_the_clients_error(tensors: dict, message: str | None) -> None:
    from gateway.protocol.translate import binary_request_to_json

    body, n = _binary_body(tensors)
    if message is None:
        binary_request_to_json(body, n)
        return
    with pytest.raises(BadRequest, match=message):
        binary_request_to_json(body, n)


def test_a_binary_request_with_sizes_past_its_data_is_refused_before_decoding() -> None:
    from gateway.protocol.translate import binary_request_to_json

    body, n = _binary_body({"x": ("FP32", np.zeros(4, dtype="<f4"))})
    with pytest.raises(BadRequest, match="runs past the end"):
        binary_request_to_json(body[:-4], n)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_infinity_is_refused_for_a_json_only_instance_and_nan_goes_as_null(dtype: Any) -> None:
    """JSON has no infinity: written as null it reached the model as NaN (another input). NaN
    itself goes as null, which V2 servers (MLServer's codec) read back as NaN."""
    from gateway.protocol.translate import proto_request_to_json

    with pytest.raises(BadRequest, match=r"inputs\[0\]: holds \+-Infinity, which JSON cannot carry"):
        proto_request_to_json(_triton_grpc(tensors={"x": np.array([[1.0, np.inf, -np.inf]], dtype=dtype)}))
    doc = orjson.loads(proto_request_to_json(_triton_grpc(tensors={"x": np.array([[1.0, np.nan]], dtype=dtype)})))
    assert doc["inputs"][0]["data"] == [1.0, None]


def test_a_json_body_with_nan_and_infinity_tokens_is_read_as_triton_writes_it() -> None:
    """tritonclient.http with binary_data=False writes NaN and Infinity (not JSON); Triton reads
    them. The gateway routes such a request (it answered 400 "malformed JSON")."""
    from gateway.protocol.routing import json_response_header, routing_from_json_body

    x = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    body, _ = http_request([inp], "r1", None, 0, False, False, 0, None, None)
    assert b"NaN" in body and b"Infinity" in body
    assert routing_from_json_body(body).batch == 1
    answer = b'{"id":"r1","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[NaN]}]}'
    header = json_response_header(answer, None)
    assert header is not None and header["id"] == "r1"  # the gateway's parameters can be added
    with pytest.raises(BadRequest, match="malformed JSON"):
        routing_from_json_body(b'{"inputs": [NaN')
