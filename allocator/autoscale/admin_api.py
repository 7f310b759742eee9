"""Calls to the admin APIs the actuators drive (the gateway's pool, kairos-servers'), over one
aiohttp session: one error type, and the gateway's pool as a small client."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateway.errors import KairosError


class AdminApiError(KairosError):
    """An admin API refused (``status``) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        """The API answered no (4xx): asking again will not help."""
        return self.status is not None and self.status < 500


async def admin_call(
    session: aiohttp.ClientSession, headers: dict[str, str], method: str, url: str, ok: tuple[int, ...], **kw: Any
) -> Any:
    """One call; its JSON body, or AdminApiError with the API's own words (a body that is not
    JSON, such as a proxy's error page, with its status and its start)."""
    try:
        async with session.request(method, url, headers=headers, **kw) as resp:
            text = (await resp.read()).decode("utf-8", "replace")
            try:
                body = json.loads(text)
            except ValueError:
                status = resp.status if resp.status >= 400 else None  # a 2xx that is not the API: retried
                raise AdminApiError(f"{method} {url}: {resp.status}, not JSON: {text[:120]!r}", status) from None
            if resp.status not in ok:
                error = body.get("error") if isinstance(body, dict) else body
                raise AdminApiError(f"{method} {url}: {resp.status} {error}", resp.status)
            return body
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise AdminApiError(f"{method} {url}: {exc or type(exc).__name__}") from exc


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def instance_list(method: str, url: str, body: Any) -> list[dict[str, Any]]:
    """The ``instances`` of an admin API's answer, each with a name; AdminApiError otherwise."""
    items = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        raise AdminApiError(f"{method} {url}: the answer has no list of named instances")
    return items


Call = Callable[..., Awaitable[Any]]  # (method, url, ok statuses, **request options) -> the JSON body


class GatewayPool:
    """The gateway's pool through its admin API (``gateway.admin``). ``call``: how a request goes
    (default ``admin_call`` on ``session``; an actuator passes its own)."""

    def __init__(
        self, session: aiohttp.ClientSession, admin_url: str, token: str | None = None, call: Call | None = None
    ) -> None:
        self.url = admin_url.rstrip("/") + "/admin/instances"
        headers = bearer(token)

        async def direct(method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
            return await admin_call(session, headers, method, url, ok, **kw)

        self._call: Call = call or direct

    async def instances(self) -> dict[str, dict[str, Any]]:
        """name -> {name, model, variant, type, state, ...} of every instance in the pool."""
        body = await self._call("GET", self.url, (200,))
        return {i["name"]: i for i in instance_list("GET", self.url, body)}

    async def add(self, model: str, type_name: str, name: str, http: str | None, grpc: str | None,
                  variant: str | None = None) -> None:
        doc: dict[str, Any] = {"model": model, "type": type_name, "name": name}
        if variant is not None and variant != model:
            doc["variant"] = variant
        if http:
            doc["http"] = http
        if grpc:
            doc["grpc"] = grpc
        await self._call("POST", self.url, (201,), json=doc)

    async def drain(self, name: str) -> None:
        """No new query for it (AdminApiError 404: not in the pool)."""
        await self._call("POST", f"{self.url}/{name}/drain", (200,))

    async def remove(self, name: str) -> dict[str, Any]:
        """Drain and remove (200: gone, 202: still holds queries; 404: not there)."""
        body: dict[str, Any] = await self._call("DELETE", f"{self.url}/{name}", (200, 202, 404))
        return body
