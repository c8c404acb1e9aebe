"""The one adler32 of whole files: equal to zlib's over the bytes, across block edges."""

import io
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap.checksum import (
    ADLER32_IMPLEMENTATION, ADLER32_START, BLOCK_SIZE, adler32_concat, adler32_of, adler32_of_file,
    adler32_of_pieces,
)


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 7])
def test_adler32_of_a_file_matches_zlib_at_block_edges(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert adler32_of_file(str(path)) == zlib.adler32(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096), st.binary(max_size=4096), st.integers(1, 97))
def test_adler32_of_continues_a_running_value_from_the_file_position(head, tail, block):
    f = io.BytesIO(head + tail)
    f.seek(len(head))
    running = zlib.adler32(head, ADLER32_START)
    assert adler32_of(f, running, block=block) == zlib.adler32(head + tail)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_adler32_of_two_pieces_joins_to_that_of_the_whole(first, second):
    joined = adler32_concat(zlib.adler32(first), zlib.adler32(second), len(second))
    assert joined == zlib.adler32(first + second)


def test_adler32_joins_pieces_longer_than_the_modulus_with_every_byte_at_its_top():
    first, second = b"\xff" * 70000, b"\xff" * 140000  # sums wrap 65521 more than once
    assert adler32_concat(zlib.adler32(first), zlib.adler32(second), len(second)) == \
        zlib.adler32(first + second)
    assert adler32_concat(zlib.adler32(first), zlib.adler32(b""), 0) == zlib.adler32(first)
    assert adler32_concat(zlib.adler32(b""), zlib.adler32(second), len(second)) == \
        zlib.adler32(second)


def test_adler32_of_pieces_reads_views_as_their_bytes():
    data = bytes(range(256)) * 50
    view = memoryview(data)
    assert adler32_of_pieces([view[:100], view[100:7000], b"", view[7000:]]) == zlib.adler32(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=70000), max_size=4), st.integers(0, 0xFFFFFFFF))
def test_the_implementation_in_use_sums_as_zlib_does_from_any_running_value(pieces, start):
    """ISA-L's adler32, when installed, must give zlib's values (start: any 32-bit running value)."""
    start = ((start >> 16) % 65521) << 16 | (start & 0xFFFF) % 65521
    expected = start
    for piece in pieces:
        expected = zlib.adler32(piece, expected)
    assert adler32_of_pieces(pieces, start) == expected
    assert ADLER32_IMPLEMENTATION in ("isal", "zlib")
