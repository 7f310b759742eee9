"""HTTP -> gRPC translation of V2 infer messages (gateway.protocol.http_to_grpc): pure, no I/O.

Requests are built by tritonclient's HTTP request builder and compared with what its gRPC
builder sends for the same tensors; responses are read back by tritonclient's HTTP result.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers.inputs import MIXED_PARAMS, MIXED_TENSORS
from tritonclient.grpc._utils import _get_inference_request as grpc_request
from tritonclient.http._utils import _get_inference_request as http_request

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.http_to_grpc import (
    http_request_to_proto,
    metadata_to_json,
    proto_response_to_http,
)
from gateway.protocol.translate import MalformedResponse, bytes_elements_to_raw, metadata_from_json
from gateway.protocol.v2 import parse_http_infer, proto_param_value

TENSORS, PARAMS = MIXED_TENSORS, MIXED_PARAMS


def _inputs(module: Any, binary: bool) -> list[Any]:
    out = []
    for name, x in TENSORS.items():
        inp = module.InferInput(name, list(x.shape), module.np_to_triton_dtype(x.dtype))
        if module is th:
            inp.set_data_from_numpy(x, binary_data=binary or name == "f16")  # FP16 has no JSON form
        else:
            inp.set_data_from_numpy(x)
        out.append(inp)
    return out


def _http(binary: bool, outputs: list[th.InferRequestedOutput] | None = None) -> tuple[bytes, int | None]:
    body, json_size = http_request(_inputs(th, binary), "r1", outputs, 0, False, False, 0, None, PARAMS)
    return body, json_size


def _grpc(outputs: list[tg.InferRequestedOutput] | None = None) -> pb.ModelInferRequest:
    request = grpc_request("m", _inputs(tg, True), "", "r1", outputs, 0, False, False, 0, None, PARAMS)
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def _params(params: Any) -> dict[str, Any]:
    return {k: proto_param_value(v) for k, v in params.items()}


# -- request ---------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_a_tritonclient_http_request_becomes_what_tritonclient_grpc_would_send(binary: bool) -> None:
    body, header_length = _http(binary, [th.InferRequestedOutput("o", binary_data=True)])
    got = pb.ModelInferRequest.FromString(http_request_to_proto(body, header_length, "m", None).data)
    want = _grpc([tg.InferRequestedOutput("o")])
    assert got.model_name == "m" and got.id == "r1"
    assert list(got.raw_input_contents) == list(want.raw_input_contents)
    assert [(t.name, t.datatype, list(t.shape)) for t in got.inputs] == [
        (t.name, t.datatype, list(t.shape)) for t in want.inputs
    ]
    assert all(not t.parameters for t in got.inputs)  # binary_data_size is the extension's own
    assert _params(got.parameters) == PARAMS  # binary_data_output left out too
    assert [(o.name, dict(o.parameters)) for o in got.outputs] == [("o", {})]


def test_the_served_name_and_version_go_in_the_message() -> None:
    body, header_length = _http(True)
    got = pb.ModelInferRequest.FromString(http_request_to_proto(body, header_length, "m-small", "2").data)
    assert (got.model_name, got.model_version) == ("m-small", "2")


@pytest.mark.parametrize(
    ("data", "datatype", "match"),
    [
        (["one", 2], "INT64", r"inputs\[0\] 'x': INT64 data holds text"),
        ([1.5, 2], "INT32", "holds fractions"),
        ([1, 256], "UINT8", r"outside \[0, 255\]"),
        ([1, 2, 3], "FP32", "needs 2 elements"),  # the V2 checks before the data
        ([1, 2], "FP8", "datatype"),
    ],
)
def test_json_data_a_v2_server_would_refuse_is_a_bad_request(data: list[Any], datatype: str, match: str) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": data}]})
    with pytest.raises(BadRequest, match=match):
        http_request_to_proto(body, None, "m", None)


# -- response --------------------------------------------------------------------------------


def _response(raw: bool = True) -> bytes:
    message = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    message.parameters["instance"].string_param = "i0"
    for name, x in TENSORS.items():
        datatype = tg.np_to_triton_dtype(x.dtype)
        out = message.outputs.add(name=name, datatype=datatype, shape=list(x.shape))
        if raw:
            data = bytes_elements_to_raw(x.ravel()) if datatype == "BYTES" else x.tobytes()
            message.raw_output_contents.append(data)
        elif datatype == "BYTES":
            out.contents.bytes_contents.extend(x.ravel())
        elif datatype != "FP16":
            field = {"FP32": "fp32_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "BOOL": "bool_contents"}
            getattr(out.contents, field[datatype]).extend(x.ravel().tolist())
    if not raw:  # FP16 has no typed contents field
        del message.outputs[list(TENSORS).index("f16")]
    return message.SerializeToString()


def _asked(binary: bool | None, outputs: list[str] | None = None) -> Any:
    doc: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    if binary is not None:
        doc["parameters"] = {"binary_data_output": binary}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    return parse_http_infer(orjson.dumps(doc), "m")


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("binary", [True, False, None])
def test_responses_read_back_by_tritonclient_give_the_instance_outputs(raw: bool, binary: bool | None) -> None:
    http = proto_response_to_http(_response(raw), _asked(binary))
    result = th.InferResult.from_response_body(http.body, header_length=http.header_length)
    names = [n for n in TENSORS if raw or n != "f16"]
    for name in names:
        got = result.as_numpy(name)
        assert got is not None and got.shape == TENSORS[name].shape
        want = TENSORS[name]
        if want.dtype == np.object_ and got.size and isinstance(got.flat[0], str):  # JSON: text
            want = np.array([x.decode() for x in want.ravel()], dtype=np.object_).reshape(want.shape)
        assert np.array_equal(got.astype(want.dtype), want), name
    head = result.get_response()
    assert (head["model_name"], head["model_version"], head["id"]) == ("m", "1", "r1")
    assert head["parameters"] == {"instance": "i0"} and http.header == head
    assert (http.header_length is not None) is bool(binary)


def test_each_output_goes_in_the_form_asked_for_it() -> None:
    http = proto_response_to_http(_response(), _asked(None, outputs=["f32"]))
    assert http.header_length is not None
    forms = {o["name"]: "data" in o for o in http.header["outputs"]}
    assert forms == {name: name != "f32" for name in TENSORS}


def test_json_cannot_carry_non_utf8_bytes_and_writes_infinity_as_null() -> None:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="s", datatype="BYTES", shape=[1])
    message.raw_output_contents.append(bytes_elements_to_raw([b"\xff"]))
    with pytest.raises(BadRequest, match="output 's': a BYTES element is not UTF-8 text: ask for it in binary"):
        proto_response_to_http(message.SerializeToString(), _asked(False))
    assert proto_response_to_http(message.SerializeToString(), _asked(True)).header_length is not None
    inf = pb.ModelInferResponse(model_name="m")
    inf.outputs.add(name="f", datatype="FP32", shape=[2])
    inf.raw_output_contents.append(np.array([np.inf, 1], "<f4").tobytes())
    body = proto_response_to_http(inf.SerializeToString(), _asked(False)).body
    assert orjson.loads(body)["outputs"][0]["data"] == [None, 1.0]


def _malformed(edit: Any) -> bytes:
    message = pb.ModelInferResponse.FromString(_response())
    edit(message)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\xff", "malformed protobuf"),
        (_malformed(lambda m: m.raw_output_contents.pop()), "raw_output_contents for"),
        (_malformed(lambda m: m.raw_output_contents.__setitem__(0, b"abc")), r"outputs\[0\]: output 'f32': shape \[2, 3\] of FP32 needs 24 bytes but the binary data has 3"),
        (_malformed(lambda m: setattr(m.outputs[0], "datatype", "FP8")), "unknown datatype"),
        (_malformed(lambda m: m.outputs[0].shape.__setitem__(0, -2)), "negative dimension"),
        (_malformed(lambda m: m.raw_output_contents.__setitem__(5, b"\x09\x00\x00\x00x")), r"outputs\[5\]: BYTES tensor data is truncated"),
        (pb.ModelInferResponse(outputs=[pb.ModelInferResponse.InferOutputTensor(name="o", datatype="FP32", shape=[2])])
         .SerializeToString(), "needs 2 elements but contents.fp32_contents has 0"),
    ],
)  # fmt: skip
def test_malformed_instance_responses_are_refused(body: bytes, match: str) -> None:
    for binary in (True, False):
        with pytest.raises(MalformedResponse, match=match):
            proto_response_to_http(body, _asked(binary))


# -- metadata --------------------------------------------------------------------------------


def test_model_metadata_goes_both_ways() -> None:
    reply = pb.ModelMetadataResponse(name="m", versions=["1"], platform="p")
    reply.inputs.add(name="x", datatype="FP32", shape=[-1, 3])
    reply.outputs.add(name="y", datatype="INT64", shape=[-1])
    doc = orjson.loads(metadata_to_json(reply))
    assert doc == {
        "name": "m", "versions": ["1"], "platform": "p",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
    }  # fmt: skip
    assert metadata_from_json(metadata_to_json(reply)) == reply


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{", b'{"name": 1}', b'{"versions": "1"}', b'{"inputs": {}}', b'{"inputs": [{"shape": ["a"]}]}',
     b'{"outputs": [{"name": "y", "shape": [-2]}]}', b'{"inputs": [{"name": "x", "shape": [1e30]}]}'],
)  # fmt: skip
def test_malformed_instance_metadata_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        metadata_from_json(body)


def _deep(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(levels):
        doc = {"a": doc}
    return doc


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()  # orjson stops at 254 levels: the body a client may send


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                 "parameters": {"p": _deep(300)}}), "cannot be sent to a gRPC instance"),
        (_dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
                             "parameters": {"p": _deep(300)}}]}), "cannot be sent to a gRPC instance"),
        (_dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                 "outputs": [{"name": "y", "parameters": {"p": _deep(300)}}]}), "cannot be sent to a gRPC instance"),
        # NaN tokens send the body through Python's parser, which reads integers of any size
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}], "parameters": {"p": 1'
         + b"0" * 30 + b"}}", "cannot be sent to a gRPC instance"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [NaN, 1' + b"0" * 400 + b"]}]}",
         r"inputs\[0\] 'x': FP32 data"),
        (orjson.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [{"a": 1}]}],
                       "parameters": {"q": [1]}}), None),  # a non-text BYTES element goes as its JSON text
    ],
)  # fmt: skip
def test_what_protobuf_cannot_carry_is_a_bad_request_not_a_crash(body: bytes, match: str | None) -> None:
    if match is None:
        message = pb.ModelInferRequest.FromString(http_request_to_proto(body, None, "m", None).data)
        assert message.raw_input_contents[0] == bytes_elements_to_raw([b'{"a":1}'])
        return
    with pytest.raises(BadRequest, match=match):
        http_request_to_proto(body, None, "m", None)


@pytest.mark.parametrize(("datatype", "field", "value"), [("UINT8", "uint_contents", 300), ("INT8", "int_contents", -200),
                                                         ("INT16", "int_contents", 40000)])
def test_typed_contents_out_of_their_datatype_are_a_malformed_response(datatype: str, field: str, value: int) -> None:
    message = pb.ModelInferResponse(model_name="m")
    getattr(message.outputs.add(name="o", datatype=datatype, shape=[1]).contents, field).append(value)
    for binary in (True, False):
        with pytest.raises(MalformedResponse, match="outside"):
            proto_response_to_http(message.SerializeToString(), _asked(binary))
