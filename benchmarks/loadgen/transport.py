"""Targets: send one V2 infer request and classify what came back.

One shared keep-alive connection pool (HTTP, ``gateway.backend.http1.Http1Pool``) or one channel (gRPC, grpc.aio) per run. The hot path
builds the body with ``PayloadFactory`` and parses only the response ``parameters`` (for the
per-instance share); it never goes through tritonclient.

Error kinds (stable strings, the keys of ``errors`` in the report): ``http_<status>``,
``grpc_<CODE>`` (e.g. ``grpc_UNAVAILABLE``, ``grpc_DEADLINE_EXCEEDED`` from a server that shed the
query), ``timeout`` (the client's per-request timeout), ``connection`` (refused, reset,
disconnected), ``bad_response`` (a 200 whose body is not a V2 response), ``cancelled`` (still in
flight when the run was aborted).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson

from benchmarks.loadgen.payloads import PayloadFactory
from gateway.backend.http1 import Http1Pool, HttpError
from gateway.errors import ConfigError
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.params import INSTANCE_KEYS, PARAM_VARIANT
from gateway.protocol.v2 import GRPC_INFER_METHOD, INFERENCE_HEADER, proto_param_value


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str  # "http" | "grpc"
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """``http://host:port`` (HTTP/REST) or ``grpc://host:port`` (gRPC); the scheme picks the protocol."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "grpc"):
        raise ConfigError(f"--url {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"--url {url!r}: expected a host and a port, e.g. {parts.scheme or 'http'}://127.0.0.1:8000")
    if parts.path not in ("", "/"):
        raise ConfigError(f"--url {url!r}: expected no path; the V2 paths are added per model")
    return Endpoint(parts.scheme, parts.hostname, port)


@dataclass(frozen=True, slots=True)
class Outcome:
    error: str | None  # None: a successful V2 response; else an error kind (module docstring)
    instance: str | None = None
    variant: str | None = None  # the model variant that served it (response parameter gateway_variant)
    detail: str | None = None  # an error's text from the server (its V2 "error" or gRPC details), bounded


def error_text(text: str, limit: int = 200) -> str:
    """A server's error text, printable and bounded: it is shown to the user as it came."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."


def _http_error_text(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
    except ValueError:
        return error_text(body[:256].decode("utf-8", "replace"))
    return error_text(str(obj.get("error", obj)) if isinstance(obj, dict) else str(obj))


class TargetUnreachable(Exception):
    """The endpoint did not answer the pre-flight check."""


def routing_headers(payloads: PayloadFactory, batch: int) -> list[tuple[str, str]]:
    """The routing facts as the endpoint picker reads them from headers (gateway/epp/request.py)."""
    out = [("kairos-model", payloads.model), ("kairos-batch", str(batch))]
    if payloads.service_class is not None:
        out.append(("kairos-class", payloads.service_class))
    return out


class Target(ABC):
    def __init__(self, endpoint: Endpoint, payloads: PayloadFactory, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.payloads = payloads
        self.timeout_s = timeout_s

    @abstractmethod
    async def open(self, check_timeout_s: float = 5.0) -> None:
        """Connect and check the endpoint answers (raises TargetUnreachable)."""

    @abstractmethod
    async def infer(self, batch: int, request_id: str) -> Outcome: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Target:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _variant(params: Any) -> str | None:
    value = params.get(PARAM_VARIANT) if isinstance(params, dict) else None
    return value if isinstance(value, str) else None


def _instance(params: Any) -> str | None:
    if isinstance(params, dict):
        for key in INSTANCE_KEYS:
            value = params.get(key)
            if value is not None:
                return str(value)
    return None


class HttpTarget(Target):
    def __init__(
        self,
        endpoint: Endpoint,
        payloads: PayloadFactory,
        timeout_s: float,
        *,
        binary: bool = False,
        connections: int = 1000,
        routing: bool = False,
    ) -> None:
        super().__init__(endpoint, payloads, timeout_s)
        self.binary = binary
        self.connections = connections
        self.routing = routing
        self.path = f"/v2/models/{payloads.model}/infer"
        self._pool: Http1Pool | None = None

    async def open(self, check_timeout_s: float = 5.0) -> None:
        self._pool = Http1Pool(self.endpoint.host, self.endpoint.port, self.connections)
        url = f"http://{self.endpoint.authority}/v2/health/ready"
        try:
            async with asyncio.timeout(check_timeout_s):
                await self._pool.request("GET", "/v2/health/ready")  # any HTTP answer will do
        except (HttpError, OSError, TimeoutError) as exc:
            await self.close()
            raise TargetUnreachable(f"cannot reach {url}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def infer(self, batch: int, request_id: str) -> Outcome:
        assert self._pool is not None, "open() the target first"
        if self.binary:
            body, header_len = self.payloads.binary(batch, request_id)
            headers = f"Content-Type: application/octet-stream\r\n{INFERENCE_HEADER}: {header_len}\r\n"
        else:
            body = self.payloads.json(batch, request_id)
            headers = "Content-Type: application/json\r\n"
        if self.routing:
            headers += "".join(f"{k}: {v}\r\n" for k, v in routing_headers(self.payloads, batch))
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._pool.request("POST", self.path, headers, body)
        except TimeoutError:
            return Outcome("timeout")
        except (HttpError, OSError):
            return Outcome("connection")
        if resp.status != 200:
            return Outcome(f"http_{resp.status}", detail=_http_error_text(resp.body))
        hl = resp.headers.get(INFERENCE_HEADER.lower())
        try:
            obj = orjson.loads(resp.body if hl is None else resp.body[: int(hl)])
        except ValueError:
            return Outcome("bad_response")
        params = obj.get("parameters") if isinstance(obj, dict) else None
        return Outcome(None, _instance(params), _variant(params))


def _grpc_params(resp: pb.ModelInferResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*INSTANCE_KEYS, PARAM_VARIANT):
        if key in resp.parameters:
            value = proto_param_value(resp.parameters[key])
            if value is not None:
                out[key] = value
    return out


class GrpcTarget(Target):
    def __init__(self, endpoint: Endpoint, payloads: PayloadFactory, timeout_s: float, routing: bool = False) -> None:
        super().__init__(endpoint, payloads, timeout_s)
        self.routing = routing
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None

    async def open(self, check_timeout_s: float = 5.0) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.endpoint.authority,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        # Requests are pre-serialized bytes (no request_serializer); responses are parsed.
        self._call = self._channel.unary_unary(
            GRPC_INFER_METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        failure = await self._connect(check_timeout_s)
        if failure is not None:
            await self.close()
            raise TargetUnreachable(f"cannot reach grpc://{self.endpoint.authority}: {failure}")

    async def _connect(self, timeout_s: float) -> str | None:
        """Wait for READY; None once connected, else what happened: the first TRANSIENT_FAILURE
        (refused, or nothing listening) or no answer within ``timeout_s``."""
        assert self._channel is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        state = self._channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                return "the connection failed (refused, or nothing listening there)"
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._channel.wait_for_state_change(state), left)
            except TimeoutError:
                break
            state = self._channel.get_state(try_to_connect=True)
        return None if state == grpc.ChannelConnectivity.READY else f"no connection within {timeout_s:g} s"

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def infer(self, batch: int, request_id: str) -> Outcome:
        assert self._call is not None, "open() the target first"
        body = self.payloads.grpc(batch, request_id)
        try:
            metadata = routing_headers(self.payloads, batch) if self.routing else None
            resp = await self._call(body, timeout=self.timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and details in ("", "Deadline Exceeded"):
                return Outcome("timeout")  # our own deadline; a server's (a shed query) says why
            return Outcome(f"grpc_{code.name}", detail=error_text(details))
        params = _grpc_params(resp)
        return Outcome(None, _instance(params), _variant(params))


def make_target(
    endpoint: Endpoint,
    payloads: PayloadFactory,
    timeout_s: float,
    *,
    binary: bool = False,
    connections: int = 1000,
    routing_headers: bool = False,
) -> Target:
    if endpoint.protocol == "grpc":
        return GrpcTarget(endpoint, payloads, timeout_s, routing_headers)
    return HttpTarget(endpoint, payloads, timeout_s, binary=binary, connections=connections, routing=routing_headers)
