"""HTTP/REST front end of one emulated instance (V2 paths), on aiohttp.

Errors are V2 errors: the status of the ``InferenceError`` with ``{"error": message}``, mapped
in ``gateway.protocol.errors``; unknown paths and methods get the same JSON shape. Outputs are
returned in binary form (binary tensor extension) when the request asks for it, as
tritonclient does by default; otherwise as JSON ``data``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.errors import InferenceError, PayloadTooLarge
from gateway.protocol.errors import error_body, http_error
from gateway.protocol.v2 import INFERENCE_HEADER, parse_header_length, parse_http_infer
from servers.instance import (
    EXTENSIONS,
    MODEL_VERSION,
    OUTPUT_DATATYPE,
    OUTPUT_NAME,
    OUTPUT_SHAPE,
    PLATFORM,
    SERVER_NAME,
    SERVER_VERSION,
    Instance,
    ServiceRecord,
)

_JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status=status, content_type=_JSON
    )


@web.middleware
async def _v2_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InferenceError as exc:
        err = http_error(exc)
        return web.Response(body=err.body, status=err.status, headers=err.headers)
    except web.HTTPException as exc:
        # aiohttp's own 404/405/413 answers: same V2 error shape as ours.
        if exc.status < 400:
            raise
        return web.Response(body=error_body(exc.reason), status=exc.status, content_type=_JSON)


class HttpFrontEnd:
    """The V2 REST routes for one instance."""

    def __init__(self, instance: Instance, max_body_bytes: int) -> None:
        self.instance = instance
        self.max_body_bytes = max_body_bytes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[_v2_errors])
        get, post = web.get, web.post
        routes = [
            get("/v2/health/live", self.live),
            get("/v2/health/ready", self.ready),
            get("/v2", self.server_metadata),
        ]
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                get(base, self.model_metadata),
                get(base + "/ready", self.model_ready),
                post(base + "/infer", self.infer),
            ]
        app.add_routes(routes)
        return app

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return _json({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        inst = self.instance
        return _json(
            {
                "name": SERVER_NAME,
                "version": SERVER_VERSION,
                "extensions": list(EXTENSIONS),
                "instance": inst.name,
                "instance_type": inst.instance_type,
            }
        )

    def _model(self, request: web.Request) -> str:
        model = request.match_info["model"]
        self.instance.check_model(model, request.match_info.get("version", ""))
        return model

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._model(request)
        return _json(
            {
                "name": model,
                "versions": [MODEL_VERSION],
                "platform": PLATFORM,
                "inputs": [
                    {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in self.instance.inputs
                ],
                "outputs": [{"name": OUTPUT_NAME, "datatype": OUTPUT_DATATYPE, "shape": list(OUTPUT_SHAPE)}],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        return _json({"name": self._model(request), "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        model = self._model(request)
        # Refuse an oversized body before reading it.
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"request body is {length} bytes: the limit is {self.max_body_bytes}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes") from None
        header_length = parse_header_length(request.headers.get(INFERENCE_HEADER), len(body))
        req = parse_http_infer(body, model, request.match_info.get("version", ""), header_length)
        record = await self.instance.serve(self.instance.check_request(req))
        return self._response(model, req.id, record, binary=req.wants_binary(OUTPUT_NAME))

    def _response(self, model: str, request_id: str, record: ServiceRecord, binary: bool) -> web.Response:
        inst = self.instance
        batch = record.batch
        scores = inst.scores[:batch]
        output: dict[str, object] = {"name": OUTPUT_NAME, "datatype": OUTPUT_DATATYPE, "shape": [batch, 1]}
        doc = {
            "model_name": model,
            "model_version": MODEL_VERSION,
            "id": request_id,
            "parameters": inst.response_parameters(record),
            "outputs": [output],
        }
        if not binary:
            output["data"] = scores
            return _json(doc)
        raw = scores.tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps(doc)
        return web.Response(
            body=head + raw,
            content_type="application/octet-stream",
            headers={INFERENCE_HEADER: str(len(head))},
        )
