"""The one adler32 of whole files: equal to zlib's over the bytes, across block edges."""

import io
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap.checksum import ADLER32_START, BLOCK_SIZE, adler32_of, adler32_of_file


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
