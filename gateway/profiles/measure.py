"""Measure one V2 model's service time over a grid of batch sizes, on any V2 endpoint (HTTP or
gRPC): warm-up, then a fixed number of timed requests per batch size at a set concurrency.

A request's service time is what the server reports in its response parameters (``service_us``
and the like, as the gateway's estimator reads them) when it reports one and ``timing`` allows,
else the client's round trip. At concurrency 1 on an idle server that is the service time the
gateway's profiles hold. Above 1 a single-stream server queues: a round trip then includes the
wait, a server-reported service time does not (the load can still slow a real server down).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import grpc
import numpy as np
import orjson

from gateway.backend.grpc_client import INFER_METHOD
from gateway.backend.negotiation import ServerInfo
from gateway.profiles.payload import TensorSpec, grpc_request, http_body, random_tensor
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from gateway.protocol.routing import json_response_header, reported_service_ms_json, reported_service_ms_proto
from gateway.protocol.v2 import INFERENCE_HEADER

TIMINGS = ("auto", "client", "server")


class ProfilingError(Exception):
    """The endpoint refused or failed a request: profiling stops, with the server's words."""


class Target(Protocol):
    server: ServerInfo | None

    async def metadata(self) -> Any: ...

    def prepare(self, specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> Any: ...

    async def send(self, prepared: Any) -> tuple[float, float | None]:
        """(client round trip, server-reported service time or None), both in ms."""
        ...

    async def close(self) -> None: ...


class HttpTarget:
    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = 60.0) -> None:
        self.base = url.rstrip("/")
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self.model_url = self.base + path
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
        self.server: ServerInfo | None = None

    async def metadata(self) -> Any:
        self.server = ServerInfo.from_json(await self._get(self.base + "/v2"))
        return await self._get(self.model_url)

    async def _get(self, url: str) -> Any:
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProfilingError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        if resp.status != 200:
            raise ProfilingError(f"GET {url}: HTTP {resp.status}: {body[:300]!r}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProfilingError(f"GET {url}: not a V2 server's JSON: {body[:300]!r}") from None

    def prepare(self, specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> Any:
        binary = self.server is not None and self.server.binary_tensors
        return http_body(specs, [random_tensor(s, batch, rng) for s in specs], binary)

    async def send(self, prepared: Any) -> tuple[float, float | None]:
        headers = {"Content-Type": prepared.content_type}
        if prepared.header_length is not None:
            headers[INFERENCE_HEADER] = str(prepared.header_length)
        start = time.perf_counter()
        try:
            async with self.session.post(self.model_url + "/infer", data=prepared.body, headers=headers) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProfilingError(f"POST {self.model_url}/infer: {type(exc).__name__}: {exc}") from None
        rtt = (time.perf_counter() - start) * 1000.0
        if resp.status != 200:
            raise ProfilingError(f"POST {self.model_url}/infer: HTTP {resp.status}: {body[:300]!r}")
        length = resp.headers.get(INFERENCE_HEADER)
        header = json_response_header(body, int(length) if length and length.isdigit() else None)
        return rtt, reported_service_ms_json(header)

    async def close(self) -> None:
        await self.session.close()


class GrpcTarget:
    def __init__(self, address: str, model: str, version: str = "", timeout_s: float = 60.0) -> None:
        self.address = address.removeprefix("grpc://")
        self.model, self.version, self.timeout_s = model, version, timeout_s
        self.channel = grpc.aio.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        self.stub = GRPCInferenceServiceStub(self.channel)
        self._infer = self.channel.unary_unary(INFER_METHOD)
        self.server: ServerInfo | None = None

    async def metadata(self) -> Any:
        try:
            server = await self.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=self.timeout_s)
            self.server = ServerInfo.from_proto(server.name, server.version, server.extensions)
            meta = await self.stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model, version=self.version), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise ProfilingError(f"{self.address}: {exc.code().name}: {exc.details()}") from None
        return {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]}

    def prepare(self, specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> Any:
        return grpc_request(self.model, self.version, specs, [random_tensor(s, batch, rng) for s in specs])

    async def send(self, prepared: Any) -> tuple[float, float | None]:
        start = time.perf_counter()
        try:
            body: bytes = await self._infer(prepared, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise ProfilingError(f"{self.address} ModelInfer: {exc.code().name}: {exc.details()}") from None
        rtt = (time.perf_counter() - start) * 1000.0
        return rtt, reported_service_ms_proto(pb.ModelInferResponse.FromString(body))

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class Measurement:
    """Service times (ms) per batch size, and where they came from."""

    samples: dict[int, np.ndarray] = field(default_factory=dict)
    round_trips: dict[int, np.ndarray] = field(default_factory=dict)
    timing: str = "client"  # what ``samples`` are: "server"-reported or "client" round trips


Progress = Callable[[int, int, int], None]  # (batch, done, total)


async def measure(
    target: Target,
    specs: Sequence[TensorSpec],
    batches: Sequence[int],
    samples: int,
    warmup: int = 5,
    concurrency: int = 1,
    timing: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
) -> Measurement:
    rng = np.random.default_rng(seed)
    result = Measurement()
    reported: dict[int, list[float | None]] = {}
    for batch in batches:
        prepared = [target.prepare(specs, batch, rng) for _ in range(min(samples, 8))]
        for i in range(warmup):
            await target.send(prepared[i % len(prepared)])
        client, reported[batch] = await _timed(target, prepared, samples, concurrency, batch, progress)
        result.round_trips[batch] = np.array(client)
        if timing == "server" and None in reported[batch]:
            raise ProfilingError("--timing server: the endpoint does not report its service time")
    # One kind of time in a file: the server's only where every answer reported one.
    if timing != "client" and all(None not in times for times in reported.values()):
        result.samples = {b: np.array(times, dtype=float) for b, times in reported.items()}
        result.timing = "server"
    else:
        result.samples = dict(result.round_trips)
        result.timing = "client"
    return result


async def _timed(
    target: Target, prepared: list[Any], samples: int, concurrency: int, batch: int, progress: Progress | None
) -> tuple[list[float], list[float | None]]:
    """``samples`` requests, ``concurrency`` at a time: round trips and reported times."""
    client: list[float] = []
    server: list[float | None] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < samples:
            i = next_index
            next_index += 1
            rtt, reported = await target.send(prepared[i % len(prepared)])
            client.append(rtt)
            server.append(reported)
            if progress is not None:
                progress(batch, len(client), samples)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, samples)))))
    return client, server


def default_grid(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    grid = [1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch]
    return grid if grid[-1] == max_batch else [*grid, max_batch]
