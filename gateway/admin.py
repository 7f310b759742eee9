"""The pool admin API, on its own port: list the instances with their state, add one, drain
one, remove one, while queries flow. What a control loop (or an operator) actuates.

    GET    /admin/instances                  {"instances": [{name, model, type, state, ...}]}
    POST   /admin/instances                  {"model", "type", "http" and/or "grpc", "name"?, "variant"?}
    POST   /admin/instances/{name}/drain     no new queries; it finishes what it holds
    DELETE /admin/instances/{name}           drained, then gone once it holds nothing

Bound to loopback by default. Bound elsewhere it needs a bearer token (``KAIROS_ADMIN_TOKEN``
in the environment, checked at start-up); with a token set, every request must carry
``Authorization: Bearer <token>`` or gets 401. Errors are V2-style ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.config import Endpoint
from gateway.endpoint_urls import instance_urls
from gateway.errors import BadRequest, ConfigError, InferenceError, Unauthorized
from gateway.protocol.errors import http_error
from gateway.protocol.limits import check_name, quote

TOKEN_ENV = "KAIROS_ADMIN_TOKEN"
MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("kairos.admin")
MAX_ADDRESS_CHARS = 512


@dataclass(frozen=True, slots=True)
class NewInstance:
    """An instance to add, as validated from a request."""

    model: str
    endpoint: Endpoint


class PoolAdmin(Protocol):
    """What the API drives (``gateway.app.Gateway``)."""

    def instances(self) -> list[dict[str, Any]]: ...

    async def add_instance(self, new: NewInstance) -> dict[str, Any]: ...

    def drain_instance(self, name: str) -> dict[str, Any]: ...

    def remove_instance(self, name: str) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_token(host: str) -> str | None:
    """The token from the environment; ConfigError when the API would be open off loopback."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"gateway.admin_host {host!r} is not loopback: set {TOKEN_ENV} to the bearer token the admin API requires"
        )
    return token


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_app(token: str | None) -> web.Application:
    """An aiohttp application for an admin API: the bearer token checked first (when set), and
    one error format for everything a handler raises. (The gateway's and kairos-servers'.)"""
    expected = token.encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if expected is not None:
                scheme, _, value = request.headers.get("Authorization", "").partition(" ")
                token_given = value.strip().encode("utf-8", "surrogateescape")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token_given, expected):
                    raise Unauthorized("the admin API needs Authorization: Bearer <token>")
            return await handler(request)
        except InferenceError as exc:
            error = http_error(exc)
            headers = dict(error.headers)
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = 'Bearer realm="kairos-admin"'
            return web.Response(status=error.status, body=error.body, headers=headers)
        except web.HTTPRequestEntityTooLarge:
            return json_response(413, {"error": f"request body larger than {MAX_BODY_BYTES} bytes"})
        except (web.HTTPException, web.RequestPayloadError):
            raise  # json_http_errors answers them
        except Exception:  # a bug: one JSON error, logged, never a bare 500 page
            log.exception("admin %s %s failed", request.method, request.path)
            return json_response(500, {"error": "internal error; see the log"})

    return web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_http_errors, guard])


class AdminApi:
    def __init__(self, pool: PoolAdmin, token: str | None) -> None:
        self.pool = pool
        self.app = admin_app(token)
        add = self.app.router.add_route
        add("GET", "/admin/instances", self.list)
        add("POST", "/admin/instances", self.add)
        add("POST", "/admin/instances/{name}/drain", self.drain)
        add("DELETE", "/admin/instances/{name}", self.remove)

    async def list(self, request: web.Request) -> web.Response:
        return json_response(200, {"instances": self.pool.instances()})

    async def add(self, request: web.Request) -> web.Response:
        new = parse_new_instance(await request.read())
        return json_response(201, await self.pool.add_instance(new))

    async def drain(self, request: web.Request) -> web.Response:
        return json_response(200, self.pool.drain_instance(instance_name(request)))

    async def remove(self, request: web.Request) -> web.Response:
        info = self.pool.remove_instance(instance_name(request))
        return json_response(200 if info["state"] == "removed" else 202, info)


def instance_name(request: web.Request) -> str:
    return check_name(request.match_info["name"], "instance name")


def json_object(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """A request body that must be a JSON object with only ``fields``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("expected a JSON object") from None
    if not isinstance(doc, dict):
        raise BadRequest("expected a JSON object")
    extra = sorted(set(doc) - set(fields))
    if extra:
        raise BadRequest(f"unknown field {quote(extra[0])}; expected {', '.join(fields)}")
    return doc


def text_field(doc: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ADDRESS_CHARS:
        raise BadRequest(f"{key}: expected a non-empty string, got {quote(value)}")
    return value


def parse_new_instance(body: bytes) -> NewInstance:
    doc = json_object(body, ("model", "variant", "type", "name", "http", "grpc"))

    def text(key: str, required: bool = False) -> str | None:
        return text_field(doc, key, required)

    model = check_name(text("model", True) or "", "model")
    type_name = check_name(text("type", True) or "", "type")
    name = text("name")
    try:  # the rule the config and --instance follow
        http, grpc = instance_urls(text("http"), text("grpc"))
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None
    variant = text("variant")
    endpoint = Endpoint(
        check_name(name, "name") if name is not None else "",
        type_name,
        http,
        grpc,
        check_name(variant, "variant") if variant is not None and variant != model else None,
    )
    return NewInstance(model, endpoint)


@web.middleware
async def json_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own error answers (404 for an unknown path, 405 with its Allow) and a body that
    does not decode as its Content-Encoding, as JSON errors (the admin APIs', the planner's)."""
    try:
        return await handler(request)
    except web.RequestPayloadError:
        return json_response(400, {"error": "the request body could not be read (its Content-Encoding?)"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = json_response(exc.status, {"error": exc.reason})
        if "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer


def json_response(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
