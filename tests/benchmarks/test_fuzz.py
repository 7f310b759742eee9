"""The fuzz run, small: malformed requests of every kind the generator makes, mixed with valid
ones, against a live gateway on each gRPC server."""

from __future__ import annotations

import random

import grpc
import pytest

from benchmarks.fuzz import malformed_grpc, malformed_http, run_fuzz
from gateway.errors import BadRequest, InferenceError
from gateway.protocol.routing import routing_from_proto
from gateway.protocol.v2 import decode_proto_infer, parse_proto_infer
from servers.schema import check_inputs, inputs_for


def test_generators_are_seeded() -> None:
    a, b = random.Random(3), random.Random(3)
    assert [malformed_http(a) for _ in range(50)] == [malformed_http(b) for _ in range(50)]
    assert [malformed_grpc(a) for _ in range(50)] == [malformed_grpc(b) for _ in range(50)]


def test_every_grpc_case_is_malformed_by_construction() -> None:
    """Each generated call fails V2's checks (the gateway's, or the instance's: rm2's inputs
    included), or names a model the gateway does not serve, or a batch past the model's profile."""
    rng = random.Random(0)
    for _ in range(500):
        data = malformed_grpc(rng)
        try:
            request = decode_proto_infer(data)
            info = routing_from_proto(request)
            check_inputs(inputs_for("rm2"), parse_proto_infer(request).inputs)
        except (BadRequest, InferenceError):
            continue
        assert request.model_name != "rm2" or not 1 <= info.batch <= 1000, request


@pytest.mark.slow
@pytest.mark.parametrize(
    ("server", "endpoints", "seed"),
    # both endpoints, on each gRPC server; then one endpoint only, so that every request of the
    # other protocol is translated
    [("native", "both", 1), ("grpcio", "both", 1), ("native", "grpc", 2), ("native", "http", 2)],
)
def test_fuzz_run_every_malformed_request_is_a_client_error(server: str, endpoints: str, seed: int) -> None:
    result = run_fuzz(600, 150, seed=seed, grpc_server=server, endpoints=endpoints)
    assert result.failures == []
    assert result.health_changes == 0 and result.tracebacks == 0
    assert sum(result.http_statuses.values()) == 600
    assert sum(result.grpc_codes.values()) == 150
    assert set(result.grpc_codes) <= {c.name for c in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)}
