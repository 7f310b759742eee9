"""Decoded HPACK header blocks, reused by their bytes while the dynamic table stays as it was.

A peer that opens many streams with the same headers (Envoy's ext_proc client, one stream per
request) sends the same block each time: indexed fields and literals that are not indexed. Such a
block leaves the dynamic table unchanged, so while no other block has changed it, its fields are
the same: the cache keeps them and skips the pure-Python decoder (docs/epp.md). Any other block
(a literal with incremental indexing, a size update, or a never-indexed literal, which may carry
a credential) empties the cache.
"""

from __future__ import annotations

import hpack

Headers = tuple[tuple[bytes, bytes], ...]

MAX_ENTRIES = 32
MAX_BLOCK_BYTES = 2048  # longer blocks are decoded every time


class CachingDecoder:
    def __init__(self, decoder: hpack.Decoder, max_entries: int = MAX_ENTRIES) -> None:
        self.decoder = decoder
        self._max = max_entries
        self._blocks: dict[bytes, Headers] = {}

    def decode(self, block: bytes) -> Headers:
        """The block's fields (raw bytes); hpack's errors pass through."""
        hit = self._blocks.get(block)
        if hit is not None:
            return hit
        headers: Headers = tuple(self.decoder.decode(block, raw=True))
        if len(block) > MAX_BLOCK_BYTES or not cacheable(block):
            self._blocks.clear()
        else:
            if len(self._blocks) >= self._max:
                self._blocks.clear()
            self._blocks[block] = headers
        return headers


def cacheable(block: bytes) -> bool:
    """Whether decoding ``block`` (already decoded once, so well formed) leaves the dynamic table
    as it was and may be kept: only indexed fields and literals without indexing (RFC 7541 6).
    Never-indexed literals (0001, sensitive values such as credentials) are not kept either."""
    i, end = 0, len(block)
    while i < end:
        first = block[i]
        if first & 0x80:  # indexed field
            i = _skip_integer(block, i, 7)
        elif first & 0xF0 == 0x00:  # literal without indexing
            name_index = first & 0x0F
            i = _skip_integer(block, i, 4)
            if name_index == 0:
                i = _skip_string(block, i)
            i = _skip_string(block, i)
        else:  # never indexed (0001), incremental indexing (01) or a table size update (001)
            return False
        if i < 0:
            return False
    return True


def _skip_integer(block: bytes, i: int, prefix: int) -> int:
    """The index after the integer at ``i`` with a ``prefix``-bit prefix; -1 if it runs off the end."""
    mask = (1 << prefix) - 1
    if block[i] & mask != mask:
        return i + 1
    i += 1
    while i < len(block):
        if not block[i] & 0x80:
            return i + 1
        i += 1
    return -1


def _skip_string(block: bytes, i: int) -> int:
    if i < 0 or i >= len(block):
        return -1
    mask = 0x7F
    length = block[i] & mask
    j = i + 1
    if length == mask:
        shift = 0
        length = mask
        while True:
            if j >= len(block):
                return -1
            b = block[j]
            length += (b & 0x7F) << shift
            shift += 7
            j += 1
            if not b & 0x80:
                break
    end = j + length
    return end if end <= len(block) else -1
