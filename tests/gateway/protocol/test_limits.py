"""Bounds on client values: names, versions, content types, shapes, nesting, typed contents."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.limits import (
    MAX_JSON_DEPTH,
    check_content_type,
    check_name,
    check_nesting,
    check_version,
    json_too_deep,
    quote,
)
from gateway.protocol.routing import routing_from_json_body, routing_from_proto
from gateway.protocol.v2 import parse_http_infer, parse_proto_infer


@pytest.mark.parametrize("name", ["rm2", "resnet-50_v1.2", "a" * 256])
def test_safe_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 257, "☃", "a/b", "1\r\nX: y", "a b", "%41", "a\x00"])
def test_unsafe_names_and_versions_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        check_name(name)
    if name:
        with pytest.raises(BadRequest):
            check_version(name)


def test_no_version_is_none() -> None:
    assert check_version(None) is None and check_version("") is None


@pytest.mark.parametrize("value", ["application/json; charset=\xe9", "a\r\nb", "x" * 300])
def test_content_types_outside_printable_ascii_are_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="Content-Type"):
        check_content_type(value)
    assert check_content_type("application/json; charset=utf-8") == "application/json; charset=utf-8"


def test_quote_bounds_what_an_error_echoes() -> None:
    assert len(quote("m" * 10_000)) == 64 and quote("rm2") == "'rm2'"


def _deep(depth: int) -> bytes:
    data = b"[" * depth + b"1" + b"]" * depth
    return b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":' + data + b"}]}"


@pytest.mark.parametrize("depth", [40, 900, 5000])
def test_deep_data_is_a_bad_request_everywhere_never_a_recursion_error(depth: int) -> None:
    body = _deep(depth)
    if depth <= 1000:  # orjson parses up to 1024 levels; past that the JSON itself is refused
        assert json_too_deep(body)
    with pytest.raises(BadRequest):
        routing_from_json_body(body)
    with pytest.raises(BadRequest):
        parse_http_infer(body, "m")


def test_nesting_within_the_shape_passes_and_brackets_in_strings_are_only_a_hint() -> None:
    body = orjson.dumps(
        {
            "id": "[" * (MAX_JSON_DEPTH + 5),
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
        }
    )
    assert json_too_deep(body)  # over-counted from the id's brackets
    assert routing_from_json_body(body).batch == 2  # but the data itself nests within its shape
    check_nesting([[1, 2], [3, 4]], 2, "x")
    with pytest.raises(BadRequest):
        check_nesting([[1, [2]], [3, 4]], 2, "x")


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [
        ("UINT8", "uint_contents", 300),
        ("UINT16", "uint_contents", 70_000),
        ("INT8", "int_contents", -129),
        ("INT16", "int_contents", 40_000),
    ],
)
def test_typed_contents_out_of_range_are_bad_requests(datatype: str, field: str, value: int) -> None:
    r = pb.ModelInferRequest(model_name="m")
    t = r.inputs.add(name="x", datatype=datatype, shape=[1, 1])
    getattr(t.contents, field).append(value)
    with pytest.raises(BadRequest, match="range"):
        parse_proto_infer(r)
    with pytest.raises(BadRequest, match="range"):
        routing_from_proto(r)


def test_proto_version_and_long_ids_are_checked() -> None:
    r = pb.ModelInferRequest(model_name="m", model_version="1\r\nX: y")
    r.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    r.raw_input_contents.append(bytes(4))
    with pytest.raises(BadRequest, match="version"):
        routing_from_proto(r)
    r.model_version = "2"
    r.id = "i" * 5000
    with pytest.raises(BadRequest, match="id"):
        routing_from_proto(r)
    r.id = "ok"
    assert routing_from_proto(r).version == "2"


@pytest.mark.parametrize("shape", [[2**63, 13], [2**40 + 1, 1], [2] * 33])
def test_shapes_past_their_bounds_are_refused(shape: list[int]) -> None:
    body = (
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": [0.5]}]})
        if shape[0] < 2**63
        else (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[9223372036854775808,13],"data":[0.5]}]}')
    )
    with pytest.raises(BadRequest):
        routing_from_json_body(body)
