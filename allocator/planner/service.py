"""``kairos-plan serve``: the planner over HTTP (aiohttp), for a control loop or a person with curl.

  POST /plan    a plan request (JSON) -> 200 the plan | 400 a malformed request, the field named |
                422 no plan meets it, with the reason | 413 too large | 503 busy
  GET  /health  200 {"status": "ok"}
Plans are solved in a worker thread (the loop keeps answering), at most ``workers`` at a time and
``queue`` waiting; each plan's time limit (the solve and any refinement) is capped at ``max_time_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
from aiohttp import web

from allocator.planner.plan import Plan, make_plan
from allocator.planner.request import PlanRequest, PlanRequestError, parse_plan_request
from allocator.planner.solve import PlanInfeasible
from gateway.profiles import ProfileSet

MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceOptions:
    workers: int = 1
    queue: int = 8
    max_time_s: float = 30.0


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")


def make_app(profiles: ProfileSet, options: ServiceOptions = ServiceOptions()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    solving = asyncio.Semaphore(options.workers)
    waiting = 0

    def _solve(req: PlanRequest) -> Plan:
        return make_plan(dataclasses.replace(req, time_limit_s=min(req.time_limit_s, options.max_time_s)))

    async def plan(request: web.Request) -> web.Response:
        nonlocal waiting
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body: not valid JSON ({exc})")
        try:
            req = parse_plan_request(raw, profiles)
        except PlanRequestError as exc:
            return _error(400, str(exc))
        if waiting >= options.workers + options.queue:
            return web.Response(status=503, headers={"Retry-After": "1"},
                                body=orjson.dumps({"error": "the planner is busy; retry"}), content_type="application/json")
        waiting += 1
        try:
            async with solving:
                result = await asyncio.to_thread(_solve, req)
        except PlanInfeasible as exc:
            return _error(422, str(exc))
        finally:
            waiting -= 1
        return web.Response(body=orjson.dumps(result.to_json()), content_type="application/json")

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post("/plan", plan)
    app.router.add_get("/health", health)
    return app
