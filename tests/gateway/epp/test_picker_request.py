"""Reading the routing facts of a request Envoy reports: from the ``kairos-*`` headers, from the
body, and the bounds on every value a client sets."""

from __future__ import annotations

import pytest
from helpers.inputs import json_body, proto_request

from gateway.backend.base import GRPC, HTTP
from gateway.epp.request import GRPC_INFER, header_map, read_body, read_headers
from gateway.errors import BadRequest


def http(path: str = "/v2/models/rm2/infer", method: str = "POST", **more: str) -> dict[str, str]:
    return header_map([(":path", path), (":method", method), *((k.replace("_", "-"), v) for k, v in more.items())])


def grpc(**more: str) -> dict[str, str]:
    pairs = [(":path", GRPC_INFER), ("content-type", "application/grpc"), *((k.replace("_", "-"), v) for k, v in more.items())]
    return header_map(pairs)


def test_http_infer_facts_come_from_the_path_and_headers() -> None:
    pick = read_headers(
        http("/v2/models/rm2/versions/3/infer", kairos_batch="12", kairos_class="gold", kairos_variant="wnd",
             kairos_qos_ms="80", kairos_late="serve", x_request_id="r-1")
    )  # fmt: skip
    assert (pick.protocol, pick.infer, pick.model) == (HTTP, True, "rm2")
    r = pick.routing
    assert r is not None
    assert (r.batch, r.version, r.service_class, r.variant, r.qos_ms, r.late, r.request_id) == (
        12, "3", "gold", "wnd", 80.0, "serve", "r-1"
    )


def test_defaults_and_other_calls() -> None:
    r = read_headers(http()).routing
    assert r is not None and (r.batch, r.service_class, r.qos_ms) == (1, None, None)
    for path, model in (("/v2/models/rm2/ready", "rm2"), ("/v2/models/rm2", "rm2"), ("/v2/health/ready", None)):
        pick = read_headers(http(path, "GET"))
        assert (pick.infer, pick.model, pick.routing) == (False, model, None)
    assert not read_headers(http(method="GET")).infer  # only a POST infers


def test_grpc_needs_the_model_header_unless_the_body_comes() -> None:
    pick = read_headers(grpc(kairos_model="dien", kairos_batch="7"))
    assert (pick.protocol, pick.model) == (GRPC, "dien") and pick.routing and pick.routing.batch == 7
    with pytest.raises(BadRequest, match="kairos-model"):
        read_headers(grpc())
    assert read_headers(grpc(), body_coming=True).model is None
    assert not read_headers(header_map([(":path", "/inference.GRPCInferenceService/ServerReady"),
                                        ("content-type", "application/grpc")])).infer  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"kairos_batch": "0"}, "kairos-batch"),
        ({"kairos_batch": "-3"}, "kairos-batch"),
        ({"kairos_batch": "1" * 11}, "kairos-batch"),
        ({"kairos_batch": "\uff11\uff12"}, "kairos-batch"),  # fullwidth digits: isdigit(), but not ASCII
        ({"kairos_class": "a\r\nb"}, "kairos-class"),
        ({"kairos_class": "x" * 300}, "kairos-class"),
        ({"kairos_variant": "é"}, "kairos-variant"),
        ({"kairos_qos_ms": "nan"}, "kairos-qos-ms"),
        ({"kairos_qos_ms": "1e12"}, "kairos-qos-ms"),
        ({"kairos_late": "maybe"}, "kairos-late"),
        ({"x_request_id": "i" * 5000}, "id"),
    ],
)
def test_hostile_header_values_are_bad_requests(headers: dict[str, str], text: str) -> None:
    with pytest.raises(BadRequest, match=text):
        read_headers(http(**headers))


def test_hostile_paths() -> None:
    with pytest.raises(BadRequest, match="model name"):
        read_headers(http("/v2/models/r%0d%0a/infer"))
    with pytest.raises(BadRequest, match="model version"):
        read_headers(http("/v2/models/rm2/versions/%E2%98%83/infer"))


def test_an_escaped_infer_path_is_still_an_infer_call() -> None:
    """The instance's server decodes the path: an infer call written with escapes must be seen as
    one (it was sent round robin, past the queue and the accounting)."""
    for path in ("/v2/models/rm2/%69nfer", "/v2/models/%72m2/infer", "/v2/models/rm2/infer?x=%2F"):
        pick = read_headers(http(path, kairos_batch="500"))
        assert (pick.infer, pick.model) == (True, "rm2"), path
        assert pick.routing is not None and pick.routing.batch == 500
    for path in ("/v2/models/rm2/../rm2/infer", "/v2//models/rm2/infer", "/v2/models/rm2/%2e%2e/x/infer"):
        with pytest.raises(BadRequest, match="empty or dot segments"):
            read_headers(http(path))


def test_the_body_wins_over_the_headers() -> None:
    headers = http(kairos_batch="1")
    pick = read_body(read_headers(headers), headers, json_body("rm2", 33, parameters={"class": "gold"}))
    assert pick.routing is not None and (pick.routing.batch, pick.routing.service_class) == (33, "gold")
    message = proto_request("dien", 9).SerializeToString()
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    pick = read_body(read_headers(grpc(), body_coming=True), grpc(), framed)
    assert pick.model == "dien" and pick.routing is not None and pick.routing.batch == 9


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"\0\0", "prefix"),
        (b"\0\0\0\0\x05\xff\xff\xff\xff\xff", "ModelInferRequest"),
        (b"\1\0\0\0\0", "compressed"),
    ],
)
def test_bad_grpc_bodies(body: bytes, text: str) -> None:
    with pytest.raises(BadRequest, match=text):
        read_body(read_headers(grpc(), body_coming=True), grpc(), body)


def test_bad_json_bodies() -> None:
    for body in (b"{", b"[]", b'{"inputs": []}', b'{"inputs": [{"shape": [9223372036854775808, 13]}]}'):
        with pytest.raises(BadRequest):
            read_body(read_headers(http()), http(), body)
