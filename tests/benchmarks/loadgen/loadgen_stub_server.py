"""A tiny real V2 server (HTTP/REST + gRPC, one process) for the loadgen's integration tests.

Behaviour is a pure function of the request's batch size, so a test knows every outcome:
batch == ``--error-batch`` -> HTTP 503 / gRPC UNAVAILABLE; batch >= ``--slow-batch`` -> sleeps
``--slow-ms``; otherwise sleeps ``--delay-ms`` (0: answers at once). Every response reports
``instance`` and ``service_ms`` parameters. ``GET /stats`` returns {"received": n, "distinct_ids": k,
"routing_headers": {"agree": a, "disagree": d}}: requests whose kairos-batch/kairos-model headers
(``--routing-headers``) match their body, and those whose do not.

Run: ``python loadgen_stub_server.py [--delay-ms 1] ...``; it prints {"http": port, "grpc": port}
on one stdout line once both listen (ports chosen by the OS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import grpc
import orjson
from aiohttp import web

from gateway.protocol import grpc_predict_v2_pb2 as pb

HEADER_LENGTH = "Inference-Header-Content-Length"


class Stub:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.received = 0
        self.ids: set[str] = set()
        self.routing = {"agree": 0, "disagree": 0}

    def check_routing(self, headers: Any, model: str, batch: int) -> None:
        """Routing headers, when sent, must say what the body says."""
        if "kairos-batch" in headers or "kairos-model" in headers:
            agree = headers.get("kairos-batch") == str(batch) and headers.get("kairos-model") == model
            self.routing["agree" if agree else "disagree"] += 1

    async def serve_one(self, batch: int, request_id: str) -> bool:
        """Record the request, wait its service time; False if it must fail."""
        self.received += 1
        self.ids.add(request_id)
        if batch == self.args.error_batch:
            return False
        delay = self.args.slow_ms if batch >= self.args.slow_batch else self.args.delay_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        return True

    def params(self, batch: int) -> dict[str, Any]:
        slow = batch >= self.args.slow_batch
        return {"instance": self.args.instance, "service_ms": self.args.slow_ms if slow else self.args.delay_ms}

    # -- HTTP --------------------------------------------------------------------------------
    async def http_infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        hl = request.headers.get(HEADER_LENGTH)
        obj = orjson.loads(body if hl is None else body[: int(hl)])
        batch = int(obj["inputs"][0]["shape"][0])
        self.check_routing(request.headers, request.match_info["model"], batch)
        if not await self.serve_one(batch, str(obj.get("id", ""))):
            return web.json_response({"error": "stub: overloaded"}, status=503)
        out = {
            "model_name": request.match_info["model"],
            "id": obj.get("id", ""),
            "parameters": self.params(batch),
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [batch, 1], "data": [0.5] * batch}],
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def http_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def http_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "distinct_ids": len(self.ids), "routing_headers": self.routing})

    # -- gRPC --------------------------------------------------------------------------------
    async def grpc_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        req = pb.ModelInferRequest.FromString(data)
        batch = int(req.inputs[0].shape[0])
        self.check_routing(dict(context.invocation_metadata() or ()), req.model_name, batch)
        if not await self.serve_one(batch, req.id):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stub: overloaded")
        resp = pb.ModelInferResponse(model_name=req.model_name, id=req.id)
        for k, v in self.params(batch).items():
            if isinstance(v, str):
                resp.parameters[k].string_param = v
            else:
                resp.parameters[k].double_param = float(v)
        out = resp.outputs.add(name="score", datatype="FP32", shape=[batch, 1])
        del out
        resp.raw_output_contents.append(b"\0\0\0?" * batch)
        return resp.SerializeToString()

    async def grpc_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()


async def main_async(args: argparse.Namespace) -> None:
    stub = Stub(args)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v2/models/{model}/infer", stub.http_infer)
    app.router.add_get("/v2/health/ready", stub.http_ready)
    app.router.add_get("/stats", stub.http_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(stub.grpc_infer),
        "ServerReady": grpc.unary_unary_rpc_method_handler(stub.grpc_ready),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(orjson.dumps({"http": http_port, "grpc": grpc_port}).decode() + "\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(0)
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--delay-ms", type=float, default=1.0)
    p.add_argument("--slow-batch", type=int, default=10**9)
    p.add_argument("--slow-ms", type=float, default=0.0)
    p.add_argument("--error-batch", type=int, default=-1)
    p.add_argument("--instance", default="stub-0")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
