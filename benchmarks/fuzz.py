"""``python -m benchmarks.fuzz``: malformed V2 requests mixed with valid traffic, on loopback.

Starts a small rm2 pool and a gateway, then sends ``--http`` malformed HTTP requests (raw
sockets: bad JSON, wrong field types, shapes past their bounds, deep nesting, bad versions and
Content-Types, lying lengths, binary-extension errors) and ``--grpc`` malformed gRPC calls (bad
protobuf, bad shapes, typed contents out of range, raw sizes that do not match, bad versions and
parameters), each malformed by construction and drawn from a seeded generator, interleaved with
valid HTTP and gRPC queries that carry unique ids. Some of either kind are well formed V2 but not
rm2's inputs: the instance refuses those, and its error comes back. It checks what the issue asks:

* every malformed request gets a client error (HTTP 4xx; gRPC INVALID_ARGUMENT, NOT_FOUND,
  OUT_OF_RANGE, FAILED_PRECONDITION or RESOURCE_EXHAUSTED);
* every valid query is answered 200 / OK with its own id;
* no instance leaves the rotation (``kairos_health_changes_total`` stays 0);
* the gateway logs no traceback.

Exit 0 when all hold, 1 otherwise (the failures are printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson

from benchmarks.loadgen import PayloadFactory, run_async
from benchmarks.processes import start_gateway, start_servers
from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.v2 import GRPC_INFER_METHOD

MODEL = "rm2"
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


# -- malformed HTTP ------------------------------------------------------------------------------


# Valid requests carry rm2's real inputs (dense FP32 [batch, 13], sparse INT64 [batch, 26]): the
# instances refuse any other. The malformed cases below break the first of them.
_PAYLOADS = PayloadFactory(MODEL, None, max_batch=8)


def _doc(batch: int = 2) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(_PAYLOADS.json(batch, "x"))
    del doc["parameters"]
    return doc


def _infer_head(path: str, body: bytes, extra: str = "", content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")


INFER = f"/v2/models/{MODEL}/infer"


def _json_case(rng: random.Random) -> bytes:
    """A JSON infer body that is malformed by construction, with a valid HTTP head."""
    doc = _doc(rng.randint(1, 8))
    inp = doc["inputs"][0]
    kind = rng.randrange(17)
    body: bytes
    if kind == 0:
        body = orjson.dumps(doc)[: rng.randint(1, 40)]  # truncated JSON
    elif kind == 1:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))).replace(b"{", b"(") or b"("
    elif kind == 2:
        doc["inputs"] = rng.choice([[], {}, "x", None, 3, [1, 2]])
        body = orjson.dumps(doc)
    elif kind == 3:
        inp["shape"] = rng.choice([[], ["2", 13], [-1, 13], [2.5, 13], [True, 13], "2,13", None])
        body = orjson.dumps(doc)
    elif kind == 4:
        big = rng.choice([2**63, 2**64 + 7, 10**30, 2**41])
        body = b'{"inputs":[{"name":"dense","datatype":"FP32","shape":[%d,13],"data":[0.5]}]}' % big
    elif kind == 5:
        inp["datatype"] = rng.choice(["FP33", "", "fp32", 7, None, "☃"])
        body = orjson.dumps(doc)
    elif kind == 6:
        del inp["data"]
        body = orjson.dumps(doc)
    elif kind == 7:
        inp["data"] = inp["data"][: -rng.randint(1, 5)]
        body = orjson.dumps(doc)
    elif kind == 8:
        depth = rng.randint(40, 1000)
        inp["shape"] = [1, 1]
        body = orjson.dumps(doc).replace(b'"data":[0.5]', b'"data":' + b"[" * depth + b"1" + b"]" * depth)
    elif kind == 9:
        doc["id"] = rng.choice([3, ["a"], {"a": 1}, "i" * rng.randint(1025, 5000)])
        body = orjson.dumps(doc)
    elif kind == 10:
        doc["parameters"] = {"qos_ms": rng.choice([-1, 0, "soon", True, 1e300, "1e999", [1]])}
        body = orjson.dumps(doc)
    elif kind == 11:
        doc["parameters"] = rng.choice([[], "x", 5])
        body = orjson.dumps(doc)
    elif kind == 12:
        inp["shape"] = [rng.randint(1001, 100_000), 13]
        body = orjson.dumps(doc)
    elif kind == 13:
        inp["shape"] = [2] * rng.randint(33, 60)
        body = orjson.dumps(doc)
    elif kind == 14:
        inp["name"] = rng.choice(["", None, 5])
        body = orjson.dumps(doc)
    elif kind == 15:
        _not_its_json_inputs(doc["inputs"], rng)
        body = orjson.dumps(doc)
    else:
        doc["inputs"] = [inp, dict(inp)]
        body = orjson.dumps(doc)
    return _infer_head(INFER, body) + body


def _not_its_json_inputs(inputs: list[dict[str, Any]], rng: random.Random) -> None:
    """Well formed, but not the model's inputs (name, datatype, width, one missing, batches that
    differ): the gateway forwards it and the instance refuses it."""
    dense, sparse = inputs
    batch = dense["shape"][0]
    kind = rng.randrange(5)
    if kind == 0:
        dense["name"] = rng.choice(["input0", "x", "Dense"])
    elif kind == 1:
        dense["datatype"] = "FP64"
    elif kind == 2:
        dense["shape"] = [batch, 12]
        dense["data"] = dense["data"][: 12 * batch]
    elif kind == 3:
        del inputs[1]
    else:
        sparse["shape"] = [batch + 1, 26]
        sparse["data"] = sparse["data"] + [1] * 26


def _head_case(rng: random.Random) -> bytes:
    """A valid body behind a head that is wrong: path, version, Content-Type, lengths."""
    body = orjson.dumps(_doc(2))
    kind = rng.randrange(7)
    if kind == 0:
        version = rng.choice(["%E2%98%83", "1%0D%0AX:%20y", "a%00b", "%20", "v" * 300, "%0A"])
        return _infer_head(f"/v2/models/{MODEL}/versions/{version}/infer", body) + body
    if kind == 1:
        ct = rng.choice([b"application/json; charset=\xe9", b"\xff\xfe", b"a" * 400])
        head = _infer_head(INFER, body).replace(b"Content-Type: application/json", b"Content-Type: " + ct)
        return head + body
    if kind == 2:
        n = rng.choice(["-1", "x", str(len(body) + 5), "0"])
        return _infer_head(INFER, body, f"Inference-Header-Content-Length: {n}\r\n") + body
    if kind == 3:
        bad = rng.choice(["%E2%98%83", "m" * 300, "a%0D%0Ab"])
        return _infer_head(f"/v2/models/{bad}/infer", body) + body
    if kind == 4:
        return _infer_head(INFER, b"") + b""  # empty body
    if kind == 5:  # binary extension: sizes that do not add up
        head_doc = _doc(2)
        inp = head_doc["inputs"][0]
        del inp["data"]
        inp["parameters"] = {"binary_data_size": rng.choice([-4, 10**9, "8"])}
        header = orjson.dumps(head_doc)
        full = header + bytes(104)
        return (
            _infer_head(INFER, full, f"Inference-Header-Content-Length: {len(header)}\r\n", "application/octet-stream")
            + full
        )
    return _infer_head(INFER, body, "Transfer-Encoding: chunked\r\n") + body  # both lengths: refused


def malformed_http(rng: random.Random) -> bytes:
    return _json_case(rng) if rng.random() < 0.7 else _head_case(rng)


# -- malformed gRPC ------------------------------------------------------------------------------


def _valid_proto(batch: int = 2) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(_PAYLOADS.grpc(batch, "g"))


def malformed_grpc(rng: random.Random) -> bytes:
    r = _valid_proto(rng.randint(1, 8))
    kind = rng.randrange(13)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32))) + b"\xff\xff\xff\xff"
    if kind == 1:
        del r.inputs[:]
        del r.raw_input_contents[:]
    elif kind == 2:
        r.inputs[0].shape[0] = rng.choice([-1, 0, 2**62, 5000])
    elif kind == 3:
        r.raw_input_contents[0] = r.raw_input_contents[0][: -rng.randint(1, 8)]
    elif kind == 4:
        del r.raw_input_contents[:]
        t = r.inputs[0]
        t.datatype = rng.choice(["UINT8", "INT8", "UINT16", "INT16"])
        t.shape[:] = [1, 1]
        out_of_range = {"UINT8": 300, "UINT16": 70_000, "INT8": rng.choice([-200, 200]), "INT16": rng.choice([-40_000, 40_000])}
        field_name = "uint_contents" if t.datatype.startswith("U") else "int_contents"
        getattr(t.contents, field_name).append(out_of_range[t.datatype])
    elif kind == 5:
        r.model_version = rng.choice(["☃", "1\r\nX: y", "a b", "v" * 300])
    elif kind == 6:
        r.parameters["qos_ms"].string_param = rng.choice(["soon", "-3", "inf", "nan"])
    elif kind == 7:
        r.inputs[0].datatype = rng.choice(["FP33", "", "☃"])
    elif kind == 8:
        r.id = "i" * rng.randint(1025, 4000)
    elif kind == 9:
        del r.raw_input_contents[:]  # typed contents missing for FP32
    elif kind == 10:
        r.inputs[0].shape[:] = [2] * rng.randint(33, 50)
    elif kind == 11:
        _not_its_proto_inputs(r, rng)
    else:
        r.model_name = rng.choice(["", "m" * 10_000, "nope"])
    return r.SerializeToString()


def _not_its_proto_inputs(r: pb.ModelInferRequest, rng: random.Random) -> None:
    """``_not_its_json_inputs`` for gRPC (raw contents kept the size their shape says)."""
    dense, sparse = r.inputs
    batch = dense.shape[0]
    kind = rng.randrange(5)
    if kind == 0:
        dense.name = rng.choice(["input0", "x", "Dense"])
    elif kind == 1:
        dense.datatype = "INT32"  # 4 bytes an element, as FP32
    elif kind == 2:
        dense.shape[1] = 12
        r.raw_input_contents[0] = r.raw_input_contents[0][: 4 * 12 * batch]
    elif kind == 3:
        del r.inputs[1]
        del r.raw_input_contents[1]
    else:
        sparse.shape[0] = batch + 1
        r.raw_input_contents[1] += bytes(8 * 26)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class FuzzResult:
    http_sent: int = 0
    grpc_sent: int = 0
    valid_sent: int = 0
    http_statuses: Counter[int] = field(default_factory=Counter)
    grpc_codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    health_changes: float = 0.0
    tracebacks: int = 0
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures and self.health_changes == 0 and self.tracebacks == 0

    def to_json(self) -> dict[str, object]:
        return {
            "http_malformed": self.http_sent,
            "grpc_malformed": self.grpc_sent,
            "valid": self.valid_sent,
            "http_statuses": {str(k): v for k, v in sorted(self.http_statuses.items())},
            "grpc_codes": dict(sorted(self.grpc_codes.items())),
            "failures": self.failures[:50],
            "failure_count": len(self.failures),
            "health_changes": self.health_changes,
            "tracebacks": self.tracebacks,
            "wall_s": round(self.wall_s, 1),
            "passed": self.passed,
        }


async def _raw_http(host: str, port: int, data: bytes, timeout_s: float = 10.0) -> int | None:
    """Send ``data`` on a fresh connection; the response status, None if the gateway closed the
    connection without one (what an HTTP server may do to bytes that are not HTTP)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        if not line:
            return None
        return int(line.split(b" ", 2)[1])
    finally:
        writer.close()


async def fuzz(http_addr: str, grpc_addr: str, n_http: int, n_grpc: int, seed: int, concurrency: int = 16) -> FuzzResult:
    rng = random.Random(seed)
    host, port = http_addr.rsplit(":", 1)
    result = FuzzResult()
    started = time.perf_counter()
    valid_every = 5
    jobs: list[Callable[[], object]] = []
    channel = grpc.aio.insecure_channel(grpc_addr)
    call = channel.unary_unary(GRPC_INFER_METHOD)
    valid_body = orjson.dumps(_doc(4))

    async def one_http(data: bytes, i: int) -> None:
        try:
            status = await _raw_http(host, int(port), data)
        except (OSError, TimeoutError) as exc:
            result.failures.append(f"http #{i}: {type(exc).__name__}: {exc}")
            return
        result.http_statuses[status or 0] += 1
        if status is not None and not 400 <= status < 500:
            result.failures.append(f"http #{i}: status {status} for {data[:120]!r}")

    async def one_grpc(data: bytes, i: int) -> None:
        try:
            await call(data, timeout=10)
        except grpc.aio.AioRpcError as exc:
            result.grpc_codes[exc.code().name] += 1
            if exc.code() not in CLIENT_CODES:
                result.failures.append(f"grpc #{i}: {exc.code().name} {exc.details()!r:.120}")
            return
        result.grpc_codes["OK"] += 1
        result.failures.append(f"grpc #{i}: OK for a malformed request {data[:80]!r}")

    async def one_valid(i: int) -> None:
        rid = f"valid-{i}"
        if i % 2:
            body = valid_body.replace(b'"id":"x"', f'"id":"{rid}"'.encode())
            data = _infer_head(INFER, body) + body
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(data)
                raw = await asyncio.wait_for(reader.read(), 30)
            finally:
                writer.close()
            head, _, payload = raw.partition(b"\r\n\r\n")
            ok = head.startswith(b"HTTP/1.1 200") and orjson.loads(payload).get("id") == rid
        else:
            r = _valid_proto(4)
            r.id = rid
            try:
                reply = pb.ModelInferResponse.FromString(await call(r.SerializeToString(), timeout=30))
                ok = reply.id == rid
            except grpc.aio.AioRpcError as exc:
                ok = False
                rid += f" ({exc.code().name})"
        if not ok:
            result.failures.append(f"valid query {rid} not answered as itself")

    for i in range(n_http):
        data = malformed_http(rng)
        jobs.append(lambda d=data, k=i: one_http(d, k))  # type: ignore[misc]
        result.http_sent += 1
    for i in range(n_grpc):
        data = malformed_grpc(rng)
        jobs.append(lambda d=data, k=i: one_grpc(d, k))  # type: ignore[misc]
        result.grpc_sent += 1
    rng.shuffle(jobs)
    mixed: list[Callable[[], object]] = []
    for k, job in enumerate(jobs):
        mixed.append(job)
        if k % valid_every == 0:
            mixed.append(lambda v=result.valid_sent: one_valid(v))  # type: ignore[misc]
            result.valid_sent += 1
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def run(job: Callable[[], object]) -> None:
        nonlocal done
        async with sem:
            await job()  # type: ignore[misc]
        done += 1
        if done % 1000 == 0:
            print(f"  {done}/{len(mixed)} requests, {len(result.failures)} failures", file=sys.stderr, flush=True)

    await asyncio.gather(*(run(job) for job in mixed))
    await channel.close()
    result.wall_s = time.perf_counter() - started
    return result


async def _metric(http_addr: str, name: str) -> float:
    host, port = http_addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def run_fuzz(
    n_http: int, n_grpc: int, seed: int = 0, grpc_server: str = "native", endpoints: str = "both"
) -> FuzzResult:
    """``endpoints``: what the gateway is told of each instance: ``both`` (the address file),
    ``grpc`` or ``http`` only (then every request of the other protocol is translated)."""
    with tempfile.TemporaryDirectory(prefix="kairos-fuzz-") as tmp:
        directory = Path(tmp)
        config = directory / "config.json"
        config.write_text(
            json.dumps(
                {
                    "model": MODEL,
                    "pool": [{"type": "g4dn.xlarge", "count": 1}, {"type": "r5n.large", "count": 2}],
                    "servers": {"http_port": 0, "grpc_port": 0, "address_file": str(directory / "instances.json")},
                    "gateway": {"http_port": 0, "grpc_port": 0, "grpc_server": grpc_server, "probe_interval_s": 60.0},
                }
            )
        )
        servers = start_servers(config, directory / "instances.json", directory=directory)
        try:
            if endpoints == "both":
                args = ["--address-file", str(servers.address_file)]
            else:
                args = [a for i in servers.instances for a in
                        ("--instance", f"{i.type}=grpc://{i.grpc}" if endpoints == "grpc" else f"{i.type}={i.http}")]
            gw = start_gateway(config, args, directory)
            try:
                result = run_async(fuzz(gw.http, gw.grpc, n_http, n_grpc, seed))
                result.health_changes = run_async(_metric(gw.http, "kairos_health_changes_total"))
            finally:
                gw.stop()
            result.tracebacks = gw.stderr().count("Traceback")
        finally:
            servers.stop()
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--http", type=int, default=10_000, help="malformed HTTP requests (10,000)")
    p.add_argument("--grpc", type=int, default=2_000, help="malformed gRPC calls (2,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grpc-server", choices=("native", "grpcio"), default="native")
    p.add_argument("--endpoints", choices=("both", "grpc", "http"), default="both",
                   help="the instances' endpoints the gateway is given: one only makes it translate the other protocol")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.http < 0 or args.grpc < 0:
        p.error("--http and --grpc must be >= 0")
    result = run_fuzz(args.http, args.grpc, args.seed, args.grpc_server, args.endpoints)
    summary = result.to_json()
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
