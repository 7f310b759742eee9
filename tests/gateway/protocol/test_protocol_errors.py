"""InferenceError <-> V2 HTTP / gRPC mapping, and the address file (gateway.protocol)."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson
import pytest

from gateway.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    InferenceError,
    ModelNotFound,
    NoHealthyInstance,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from gateway.protocol.addresses import AddressList, InstanceAddress, read_address_file, write_address_file
from gateway.protocol.errors import error_from_grpc, error_from_http, grpc_status, http_error

CASES = [
    (BadRequest("b"), 400, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound("m"), 404, grpc.StatusCode.NOT_FOUND),
    (PayloadTooLarge("p"), 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded("o", retry_after_s=2.5), 503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable("u"), 502, grpc.StatusCode.UNAVAILABLE),
    (NoHealthyInstance("n", retry_after_s=0.2), 503, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded("d"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (InferenceError("i"), 500, grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("exc", "status", "code"), CASES)
def test_mapping(exc: InferenceError, status: int, code: grpc.StatusCode) -> None:
    err = http_error(exc)
    assert err.status == status
    assert orjson.loads(err.body) == {"error": str(exc)}
    assert grpc_status(exc) == code
    back = error_from_http(err.status, err.body)
    assert back.status == status and (str(back) == str(exc) or status == 500)


def test_retry_after_and_reverse_grpc() -> None:
    assert http_error(Overloaded("busy", retry_after_s=2.5)).headers["Retry-After"] == "3"
    assert isinstance(error_from_grpc(grpc.StatusCode.NOT_FOUND, "x"), ModelNotFound)
    assert isinstance(error_from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"), Overloaded)
    too_big = error_from_grpc(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)"
    )
    assert isinstance(too_big, PayloadTooLarge)
    assert error_from_grpc(grpc.StatusCode.UNKNOWN, None).status == 500
    assert str(error_from_http(502, b"not json")) == "not json"


def test_address_file_round_trip(tmp_path: Path) -> None:
    addrs = AddressList(
        model="rm2",
        pid=42,
        instances=(
            InstanceAddress(
                0, "g4dn.xlarge-0", "g4dn.xlarge", "rm2", "http://127.0.0.1:1", "127.0.0.1:2", 42
            ),
        ),
    )
    path = tmp_path / "sub" / "instances.json"
    write_address_file(path, addrs)
    assert read_address_file(path) == addrs
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    with pytest.raises(ConfigError, match="no such address file"):
        read_address_file(tmp_path / "missing.json")
    path.write_text('{"instances": [{"name": 1}]}')
    with pytest.raises(ConfigError, match="not an address file"):
        read_address_file(path)


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (409, "ABORTED"), (422, "INVALID_ARGUMENT"),
     (429, "RESOURCE_EXHAUSTED"), (501, "UNIMPLEMENTED"), (418, "INVALID_ARGUMENT")],
)
def test_an_http_instances_client_error_reaches_a_grpc_client_as_its_grpc_equivalent(status: int, code: str) -> None:
    """A gRPC query sent to an instance's HTTP endpoint: the status a gRPC instance would give
    (Triton answers 501 where its gRPC server says UNIMPLEMENTED); unknown 4xx stay INVALID_ARGUMENT."""
    import grpc

    from gateway.backend.grpc_over_http import _client_error

    reply = _client_error(status, "the instance's words", 1.0)
    assert reply.grpc_code == getattr(grpc.StatusCode, code) and reply.status == status
