"""Routing facts read from requests; gateway parameters added to responses without re-encoding."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import BadRequest
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.params import set_proto_parameters
from gateway.protocol.routing import (
    add_json_parameters,
    gateway_parameters,
    gateway_parameters_suffix,
    json_response_header,
    reported_service_ms_json,
    reported_service_ms_proto,
    routing_from_json,
    routing_from_proto,
)


def test_json_routing_reads_batch_id_and_qos() -> None:
    info = routing_from_json(
        {"id": "a", "parameters": {"qos_ms": 20}, "inputs": [{"name": "x", "shape": [7, 3], "datatype": "FP32"}]}
    )
    assert (info.batch, info.request_id, info.qos_ms) == (7, "a", 20.0)
    assert routing_from_json({"inputs": [{"name": "x", "shape": [1]}]}).qos_ms is None
    assert routing_from_json({"inputs": [{"name": "x", "shape": []}]}).batch == 1  # a scalar: one query


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "x", "shape": [0, 3]}]},
        {"inputs": [{"name": "x", "shape": [2]}], "parameters": {"qos_ms": -1}},
        {"inputs": [{"name": "x", "shape": [2]}], "id": 5},
    ],
)
def test_json_routing_rejects_what_it_cannot_route(header: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        routing_from_json(header)


def test_proto_routing() -> None:
    r = pb.ModelInferRequest(model_name="rm2", id="z")
    r.inputs.add(name="x", datatype="FP32", shape=[4, 2])
    r.raw_input_contents.append(bytes(32))
    r.parameters["qos_ms"].int64_param = 100
    info = routing_from_proto(r)
    assert (info.batch, info.request_id, info.qos_ms) == (4, "z", 100.0)


def test_json_parameters_merge_and_binary_tail_is_untouched() -> None:
    header = orjson.dumps({"id": "a", "parameters": {"service_ms": 3.5}, "outputs": []})
    tail = bytes(range(256)) * 4
    body, length = add_json_parameters(header + tail, len(header), {"gateway_instance": "gpu-0"})
    assert length is not None and body[length:] == tail
    assert orjson.loads(body[:length])["parameters"] == {"service_ms": 3.5, "gateway_instance": "gpu-0"}
    assert reported_service_ms_json(json_response_header(header + tail, len(header))) == 3.5
    assert reported_service_ms_json(json_response_header(b"[1, 2]", None)) is None  # not an object
    assert reported_service_ms_json(json_response_header(b"{not json", None)) is None
    # A time no clock measures (negative, NaN, over an hour) is no measurement: it would run the
    # instance's busy-seconds counter backwards and teach the estimator nonsense.
    for bad in (-1000, float("nan"), 4e9):
        params = {"parameters": {"service_us": bad, "service_ms": 2.0}}
        assert reported_service_ms_json(params) == 2.0  # the next key that is sane
        assert reported_service_ms_json({"parameters": {"service_us": bad}}) is None
        reply = pb.ModelInferResponse()
        reply.parameters["service_ms"].double_param = bad
        assert reported_service_ms_proto(reply) is None
    assert reported_service_ms_json({"parameters": {"service_us": 0}}) == 0.0
    # A header parsed once by the backend is reused, and the body is the same as parsing it here.
    parsed = json_response_header(header + tail, len(header))
    assert add_json_parameters(header + tail, len(header), {"gateway_instance": "gpu-0"}, parsed) == (body, length)
    plain, none = add_json_parameters(b'{"id": "a"}', None, {"gateway_e2e_us": 1000})
    assert none is None and orjson.loads(plain) == {"id": "a", "parameters": {"gateway_e2e_us": 1000}}


def test_proto_suffix_merges_into_the_response() -> None:
    resp = pb.ModelInferResponse(model_name="rm2", id="a", raw_output_contents=[b"\x00" * 16])
    resp.parameters["service_us"].int64_param = 2000
    resp.parameters["gateway_instance"].string_param = "set by the instance"  # the gateway's wins
    merged = pb.ModelInferResponse.FromString(resp.SerializeToString() + gateway_parameters_suffix("cpu-1", 0.5, 7.25))
    assert merged.id == "a" and merged.raw_output_contents == [b"\x00" * 16]
    assert merged.parameters["gateway_instance"].string_param == "cpu-1"
    # int64 microseconds: the parameter type every V2 protobuf (KServe, MLServer, Triton) has.
    assert merged.parameters["gateway_queue_us"].WhichOneof("parameter_choice") == "int64_param"
    assert merged.parameters["gateway_queue_us"].int64_param == 500
    assert merged.parameters["gateway_e2e_us"].int64_param == 7250
    assert reported_service_ms_proto(merged) == 2.0


@pytest.mark.parametrize("instance", ["cpu-1", "é" * 70, "x" * 300, ""])
@pytest.mark.parametrize(("queue_ms", "e2e_ms"), [(0.0, 0.0), (0.12345, 3.9996), (1e9, 2.5e-7), (-0.5, 3e12)])
def test_hand_written_suffix_is_what_protobuf_would_write(instance: str, queue_ms: float, e2e_ms: float) -> None:
    """Against the message protobuf builds from ``gateway_parameters`` (long and non-ASCII names
    take multi-byte lengths)."""
    reference = pb.ModelInferResponse()
    set_proto_parameters(reference.parameters, gateway_parameters(instance, queue_ms, e2e_ms))
    ours = pb.ModelInferResponse.FromString(gateway_parameters_suffix(instance, queue_ms, e2e_ms))
    assert ours == reference and len(ours.parameters) == 3


def test_late_queries_parameter_is_read_and_checked() -> None:
    header = {"inputs": [{"name": "x", "shape": [1]}], "parameters": {"late_queries": "serve"}}
    assert routing_from_json(header).late == "serve"
    assert routing_from_json({"inputs": [{"name": "x", "shape": [1]}]}).late is None
    with pytest.raises(BadRequest, match="late_queries"):
        routing_from_json({"inputs": [{"name": "x", "shape": [1]}], "parameters": {"late_queries": "never"}})
    r = pb.ModelInferRequest(model_name="rm2")
    r.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    r.raw_input_contents.append(bytes(4))
    r.parameters["late_queries"].string_param = "serve"
    assert routing_from_proto(r).late == "serve"
