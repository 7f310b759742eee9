"""gzip message compression (grpc-encoding: gzip), bounded: a small compressed message must not
grow past the server's message limit, and large ones are (de)compressed off the event loop."""

from __future__ import annotations

import asyncio
import zlib

import grpc

from gateway.grpc_server.service import RpcError

INLINE_BYTES = 64 * 1024  # below this, (de)compressing takes well under a millisecond: do it in line
_GZIP = 31  # zlib's wbits for the gzip container


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(_GZIP)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RpcError(grpc.StatusCode.INTERNAL, f"cannot decompress the gzip message: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"decompressed message larger than max ({limit} bytes)"
        )
    if not d.eof or d.unused_data:
        raise RpcError(grpc.StatusCode.INTERNAL, "cannot decompress the gzip message: truncated or trailing bytes")
    return out


async def gunzip(data: bytes, limit: int) -> bytes:
    """The message, decompressed; RpcError if it is not gzip or grows past ``limit`` bytes."""
    if len(data) <= INLINE_BYTES:
        return _gunzip(data, limit)
    return await asyncio.to_thread(_gunzip, data, limit)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, _GZIP)
    return c.compress(data) + c.flush()


async def gzip_message(data: bytes) -> bytes:
    if len(data) <= INLINE_BYTES:
        return _gzip(data)
    return await asyncio.to_thread(_gzip, data)
