"""V2 request parsing and validation (gateway.protocol.v2, datatypes): pure, no I/O."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.datatypes import (
    DATATYPE_SIZES,
    byte_size,
    count_bytes_elements,
    element_count,
    element_size,
)
from gateway.protocol.v2 import (
    decode_proto_infer,
    json_batch,
    parse_header_length,
    parse_http_infer,
    parse_proto_infer,
    proto_batch,
)


def _body(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _inp(name: str = "x", datatype: str = "FP32", shape: list[int] | None = None, **kw: object) -> dict:
    shape = [2, 3] if shape is None else shape
    out: dict = {"name": name, "datatype": datatype, "shape": shape, **kw}
    if "data" not in kw and "parameters" not in kw:
        out["data"] = [0.5] * element_count(shape)
    return out


def _binary(*tensors: tuple[dict, bytes], **extra: object) -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": [t for t, _ in tensors], **extra})
    return head + b"".join(raw for _, raw in tensors), len(head)


# -- datatypes --------------------------------------------------------------------------------


def test_datatype_sizes_cover_v2() -> None:
    assert DATATYPE_SIZES["BOOL"] == 1 and DATATYPE_SIZES["FP16"] == 2 and DATATYPE_SIZES["FP64"] == 8
    assert DATATYPE_SIZES["UINT32"] == 4 and DATATYPE_SIZES["INT64"] == 8 and DATATYPE_SIZES["BYTES"] is None
    assert byte_size("FP32", [4, 2]) == 32
    assert byte_size("BYTES", [4]) is None
    with pytest.raises(BadRequest, match="unknown datatype 'FP128'"):
        element_size("FP128")


def test_count_bytes_elements() -> None:
    buf = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    assert count_bytes_elements(buf) == 3
    with pytest.raises(BadRequest, match="truncated"):
        count_bytes_elements(buf[:-1])
    with pytest.raises(BadRequest, match="truncated"):
        count_bytes_elements(buf + b"\x01\x00")


# -- JSON ---------------------------------------------------------------------------------------


def test_json_request_parses_to_typed_value() -> None:
    body = _body(
        _inp("a", shape=[4, 2]),
        _inp("b", "INT64", [4]),
        id="q1",
        parameters={"qos_ms": 100},
        outputs=[{"name": "output0", "parameters": {"binary_data": True}}],
    )
    req = parse_http_infer(body, "rm2", "1")
    assert (req.model, req.version, req.id, req.batch) == ("rm2", "1", "q1", 4)
    assert [t.name for t in req.inputs] == ["a", "b"]
    assert req.inputs[1].shape == (4,) and req.inputs[1].raw_size is None
    assert req.parameters == {"qos_ms": 100}
    assert req.wants_binary("output0") and not req.wants_binary("other")
    assert json_batch(orjson.loads(body)) == 4


def test_nested_data_is_counted_row_major() -> None:
    req = parse_http_infer(_body(_inp(shape=[2, 2], data=[[1, 2], [3, 4]])), "m")
    assert req.batch == 2
    with pytest.raises(BadRequest, match="needs 4 elements but 'data' has 3"):
        parse_http_infer(_body(_inp(shape=[2, 2], data=[[1, 2], [3]])), "m")


def test_binary_data_output_request_parameter() -> None:
    req = parse_http_infer(_body(_inp(), parameters={"binary_data_output": True}), "m")
    assert req.wants_binary("output0")
    req = parse_http_infer(
        _body(
            _inp(),
            parameters={"binary_data_output": True},
            outputs=[{"name": "output0", "parameters": {"binary_data": False}}],
        ),
        "m",
    )
    assert not req.wants_binary("output0")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{}", "no inputs"),
        (orjson.dumps({"inputs": []}), "no inputs"),
        (_body(_inp(shape=[2, 3], data=[1.0] * 5)), "needs 6 elements but 'data' has 5"),
        (_body(_inp(datatype="FLOAT")), "unknown datatype 'FLOAT'"),
        (_body(_inp(shape=[0, 3], data=[])), "batch size 0"),
        (_body(_inp(shape=[2, -1], data=[])), "negative"),
        (_body(_inp(shape="2x3", data=[])), "'shape' must be a list of integers"),  # type: ignore[arg-type]
        (_body({"name": "x", "datatype": "FP32", "shape": [1]}), "has no data"),
        (_body({"datatype": "FP32", "shape": [1], "data": [1]}), "'name' must be a non-empty string"),
        (_body(_inp("x"), _inp("x")), "more than once"),
        (_body(_inp(), id=7), "id: expected a string"),
        (_body(_inp(), parameters=[1]), "parameters: expected a JSON object"),
        (_body(_inp(), outputs={"name": "o"}), "outputs: expected a list"),
    ],
)
def test_bad_json_requests(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_http_infer(body, "m")


def test_a_scalar_first_input_is_one_query() -> None:
    scalar = {"name": "t", "datatype": "FP32", "shape": [], "data": 0.5}
    assert parse_http_infer(_body(scalar, _inp(shape=[3, 2], data=[1.0] * 6)), "m").batch == 1
    assert parse_http_infer(_body(scalar), "m").batch == 1
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="t", datatype="FP32", shape=[]).contents.fp32_contents.append(0.5)
    assert parse_proto_infer(request).batch == 1 and proto_batch(request) == 1


def test_binary_extension() -> None:
    a = np.ones((3, 2), np.float32).tobytes()
    strings = b"".join(struct.pack("<I", 1) + b"s" for _ in range(3))
    body, n = _binary(
        ({"name": "a", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": len(a)}}, a),
        (
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"binary_data_size": len(strings)},
            },
            strings,
        ),
    )
    req = parse_http_infer(body, "m", header_length=parse_header_length(str(n), len(body)))
    assert req.batch == 3 and req.header_length == n
    assert [t.raw_size for t in req.inputs] == [24, len(strings)]


@pytest.mark.parametrize(
    ("size", "raw", "message"),
    [
        (20, b"\0" * 20, "needs 24 bytes but the binary data has 20"),
        (24, b"\0" * 20, "runs past the end"),
        (24, b"\0" * 28, "add up to 24"),
    ],
)
def test_binary_length_mismatch(size: int, raw: bytes, message: str) -> None:
    body, n = _binary(
        ({"name": "a", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": size}}, raw)
    )
    with pytest.raises(BadRequest, match=message):
        parse_http_infer(body, "m", header_length=n)


def test_binary_needs_header_and_sane_header_length() -> None:
    body, _ = _binary(
        ({"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}, b"")
    )
    with pytest.raises(BadRequest, match="no Inference-Header-Content-Length"):
        parse_http_infer(body, "m")
    assert parse_header_length(None, 10) is None
    for bad in ("x", "0", "11"):
        with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
            parse_header_length(bad, 10)


# -- protobuf -----------------------------------------------------------------------------------


def _proto(
    shape: list[int], datatype: str = "FP32", raw: bytes | None = None, n: int | None = None
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="rm2", id="r1")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    elif datatype == "FP32":
        t.contents.fp32_contents.extend([0.0] * (element_count(shape) if n is None else n))
    return req


def test_proto_request_parses() -> None:
    req = _proto([5, 2], raw=b"\0" * 40)
    req.parameters["qos_ms"].double_param = 80.0
    req.outputs.add(name="output0").parameters["binary_data"].bool_param = True
    parsed = parse_proto_infer(decode_proto_infer(req.SerializeToString()))
    assert (parsed.model, parsed.id, parsed.batch) == ("rm2", "r1", 5)
    assert parsed.parameters == {"qos_ms": 80.0}
    assert parsed.inputs[0].raw_size == 40 and parsed.outputs[0].binary is True
    assert proto_batch(req) == 5
    assert parse_proto_infer(_proto([3, 2])).batch == 3  # data in contents


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (pb.ModelInferRequest(model_name="rm2"), "no inputs"),
        (_proto([0, 2], raw=b""), "batch size 0"),
        (_proto([2, 2], raw=b"\0" * 12), "needs 16 bytes"),
        (_proto([2, 2], n=3), "contents.fp32_contents has 3"),
        (_proto([2, 2], datatype="FLOAT", raw=b""), "unknown datatype"),
        (_proto([2], datatype="FP16"), "only be sent in raw_input_contents"),
    ],
)
def test_bad_proto_requests(req: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_proto_infer(req)


def test_malformed_protobuf_and_raw_count() -> None:
    with pytest.raises(BadRequest, match="malformed protobuf"):
        decode_proto_infer(b"\xff\xff\xff\xff")
    req = _proto([1], raw=b"\0" * 4)
    req.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(BadRequest, match="one per input"):
        parse_proto_infer(req)
    with pytest.raises(BadRequest, match="batch size 0"):
        proto_batch(_proto([0]))
