"""``kairos-plan serve``: the planner over HTTP (aiohttp), for a control loop or a person with curl.

  POST /plan    a plan request (JSON) -> 200 the plan | 400 a malformed request, the field named |
                408 its body not in within body_timeout_s | 413 too large, or its plan past
                max_memory_bytes | 422 no plan meets it, with the reason | 503 busy, or no plan
                found within the time limit | 500 the planner failed
  GET  /health  200 {"status": "ok"}
Plans are solved in child processes (the loop keeps answering), at most ``workers`` at a time and
``queue`` waiting; each plan's time limit (the solve and any refinement) is capped at ``max_time_s``,
and a child still solving ``grace_s`` after it is stopped (503): no request holds a worker for good.
A request past ``workers`` + ``queue`` is refused before its body is read; a client that leaves
stops its solve (``kairos-plan serve`` runs with handler cancellation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import orjson
from aiohttp import web

from allocator.planner.isolated import PlannerCrashed, PlanTooLarge, plan_in_child
from allocator.planner.plan import Plan
from allocator.planner.request import PlanRequest, PlanRequestError, parse_plan_request
from allocator.planner.solve import PlanInfeasible, PlanTimeout
from gateway.admin import json_http_errors
from gateway.profiles import ProfileSet

MAX_BODY_BYTES = 8 * 1024 * 1024
log = logging.getLogger("kairos.plan")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceOptions:
    workers: int = 1
    queue: int = 8
    max_time_s: float = 30.0
    grace_s: float = 5.0
    body_timeout_s: float = 10.0  # a request's body must arrive within this (it holds a place)
    max_memory_bytes: int | None = 4 << 30  # each solve's address space (a large request took 1.6 GB)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")


def _busy(message: str) -> web.Response:
    return web.Response(status=503, headers={"Retry-After": "1"}, body=orjson.dumps({"error": message}),
                        content_type="application/json")


def make_app(profiles: ProfileSet, options: ServiceOptions = ServiceOptions()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_http_errors])
    solving = asyncio.Semaphore(options.workers)
    waiting = 0

    async def _solve(req: PlanRequest) -> Plan:
        limit = min(req.time_limit_s, options.max_time_s)
        try:
            return await plan_in_child(dataclasses.replace(req, time_limit_s=limit), limit + options.grace_s,
                                       options.max_memory_bytes)
        except PlanTimeout as exc:
            if limit < req.time_limit_s:  # raising it would not help: the service caps it
                raise PlanTimeout(f"no plan found within {limit:g} s, this service's cap on time_limit_s "
                                  "(kairos-plan serve --max-time); simplify the request") from exc
            raise

    def _parse(body: bytes) -> PlanRequest:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PlanRequestError(f"body: not valid JSON ({exc})") from None
        return parse_plan_request(raw, profiles)

    async def plan(request: web.Request) -> web.Response:
        nonlocal waiting
        if waiting >= options.workers + options.queue:  # before the body: a refusal costs nothing
            return _busy("the planner is busy; retry")
        waiting += 1
        try:
            try:
                async with asyncio.timeout(options.body_timeout_s):
                    body = await request.read()
            except TimeoutError:
                return _error(408, f"the request body did not arrive within {options.body_timeout_s:g} s")
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
            req = await asyncio.to_thread(_parse, body)  # up to 8 MiB: not on the loop
            async with solving:
                result = await _solve(req)
        except PlanRequestError as exc:
            return _error(400, str(exc))
        except PlanTimeout as exc:
            return _busy(str(exc))
        except PlanInfeasible as exc:
            return _error(422, str(exc))
        except PlanTooLarge as exc:
            return _error(413, str(exc))
        except PlannerCrashed as exc:
            log.error("plan failed: %s", exc)
            return _error(500, f"the planner failed: {exc}")
        finally:
            waiting -= 1
        return web.Response(body=orjson.dumps(result.to_json()), content_type="application/json")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post("/plan", plan)
    app.router.add_get("/health", health)
    return app
