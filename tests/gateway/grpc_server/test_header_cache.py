"""The header block cache gives what a plain HPACK decoder gives, block for block, whatever the
dynamic table went through; it keeps only blocks that leave the table alone, and stays bounded."""

from __future__ import annotations

import random
from typing import Any

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple

from gateway.grpc_server.header_cache import MAX_ENTRIES, CachingDecoder, cacheable

ENVOY = [(":method", "POST"), (":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
         (":authority", "kairos_epp"), (":scheme", "http"), ("te", "trailers"), ("content-type", "application/grpc")]


def _literal(name: bytes, value: bytes, kind: int) -> bytes:
    """A literal with a new name: kind 0x00 without indexing, 0x10 never indexed, 0x40 incremental."""
    return bytes([kind, len(name)]) + name + bytes([len(value)]) + value


@pytest.mark.parametrize(
    ("block", "alone"),
    [
        (b"\x82\x84\x87", True),  # indexed fields of the static table
        (b"\xff\x00", True),  # an indexed field with a two-byte index (127)
        (_literal(b"x-a", b"1", 0x00), True),
        (_literal(b"x-a", b"1", 0x10), False),  # never indexed: may be a credential, not kept
        (b"\x04\x02/a", True),  # :path by name index, literal value, not indexed
        (b"\x0f\x10\x01x", True),  # a 4-bit name index that takes two bytes (31: content-type)
        (_literal(b"x-a", b"1", 0x40), False),  # incremental indexing adds to the table
        (b"\x44\x02/a", False),
        (b"\x20", False),  # a table size update
        (b"\x82" + _literal(b"x-a", b"1", 0x40) + b"\x84", False),
        (b"\x00\x03x-", False),  # runs off the end
        (b"\x00\x7f", False),
    ],
    ids=["indexed", "long-index", "without-indexing", "never-indexed", "name-index", "long-name-index",
         "incremental", "incremental-name-index", "size-update", "mixed", "truncated", "truncated-length"],
)
def test_which_blocks_are_kept(block: bytes, alone: bool) -> None:
    assert cacheable(block) is alone


def test_a_repeated_block_is_decoded_once_and_given_back_the_same() -> None:
    enc, plain, cached = hpack.Encoder(), hpack.Decoder(), CachingDecoder(hpack.Decoder())
    first = enc.encode(ENVOY)  # adds to the table: decoded, not kept
    assert cached.decode(first) == tuple(plain.decode(first, raw=True))
    again = enc.encode(ENVOY)  # all indexed now
    assert again != first and cacheable(again)
    expected = tuple(plain.decode(again, raw=True))
    calls = 0
    real = cached.decoder.decode

    def counting(block: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:
        nonlocal calls
        calls += 1
        return real(block, raw=raw)

    cached.decoder.decode = counting  # type: ignore[method-assign,assignment]
    assert [cached.decode(again) for _ in range(5)] == [expected] * 5
    assert calls == 1


def test_the_same_bytes_after_the_table_changed_are_decoded_again() -> None:
    """b'\\xbe' names the newest dynamic entry: after another entry is added it means another field."""
    plain, cached = hpack.Decoder(), CachingDecoder(hpack.Decoder())
    for block in (_literal(b"x-a", b"1", 0x40), b"\xbe", b"\xbe", _literal(b"x-b", b"2", 0x40), b"\xbe"):
        assert cached.decode(block) == tuple(plain.decode(block, raw=True))
    assert cached.decode(b"\xbe") == ((b"x-b", b"2"),)


@pytest.mark.parametrize("seed", range(5))
def test_random_streams_of_blocks_decode_as_a_plain_decoder_does(seed: int) -> None:
    rng = random.Random(seed)
    enc, plain, cached = hpack.Encoder(), hpack.Decoder(), CachingDecoder(hpack.Decoder())
    enc.header_table_size = rng.choice([256, 4096])  # a small table evicts often
    lists = [ENVOY, [*ENVOY, ("x-request-id", "abc")], [(":status", "200"), ("grpc-status", "0")]]
    for _ in range(400):
        headers: list[Any]
        r = rng.random()
        if r < 0.6:
            headers = rng.choice(lists)
        elif r < 0.8:
            headers = [*ENVOY, ("x-n", str(rng.randrange(50)))]  # a new value: added to the table
        else:
            headers = [*ENVOY, NeverIndexedHeaderTuple("authorization", f"t{rng.randrange(5)}")]
        block = enc.encode(headers)
        assert cached.decode(block) == tuple(plain.decode(block, raw=True))


def test_the_cache_stays_bounded() -> None:
    cached = CachingDecoder(hpack.Decoder())
    for i in range(5 * MAX_ENTRIES):
        cached.decode(_literal(b"x-a", str(i).encode(), 0x00))
        assert len(cached._blocks) <= MAX_ENTRIES


def test_a_malformed_block_raises_as_hpack_does() -> None:
    cached = CachingDecoder(hpack.Decoder())
    with pytest.raises(hpack.HPACKError):
        cached.decode(b"\xbe")  # no dynamic entry 62 yet
    with pytest.raises(hpack.HPACKError):
        cached.decode(b"\xbe")  # and still none: the error was not kept
