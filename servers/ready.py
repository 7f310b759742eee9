"""Readiness: ask every instance, over both protocols, whether it is ready."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import grpc

from gateway.protocol import grpc_predict_v2_pb2 as pb
from gateway.protocol.addresses import InstanceAddress
from gateway.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub


async def _http_ready(session: aiohttp.ClientSession, addr: InstanceAddress) -> bool:
    try:
        async with session.get(f"{addr.http}/v2/health/ready") as resp:
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def _grpc_ready(addr: InstanceAddress, timeout_s: float) -> bool:
    async with grpc.aio.insecure_channel(addr.grpc) as channel:
        try:
            reply = await GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)


async def wait_ready(addresses: Sequence[InstanceAddress], timeout_s: float = 30.0) -> list[InstanceAddress]:
    """Poll until every instance answers ready on HTTP and gRPC; return those that never did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = list(addresses)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:

        async def ready(addr: InstanceAddress) -> bool:
            return await _http_ready(session, addr) and await _grpc_ready(addr, 2.0)

        while pending:
            ok = await asyncio.gather(*(ready(a) for a in pending))
            pending = [a for a, good in zip(pending, ok, strict=True) if not good]
            if not pending or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
    return pending
