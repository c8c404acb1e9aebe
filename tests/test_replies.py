"""What each reply means to a client, and which requests are refused before sending."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from distcache import replies, wire
from distcache.replies import (CacheDisconnected, CacheError, CacheUnavailable, UnexpectedReply,
                               add_payload, check_id, read_add, read_flag, read_get, read_reply)


def test_ids_of_one_to_sixty_four_bytes():
    assert check_id(b"x") == b"x"
    assert check_id(bytearray(b"y" * 64)) == b"y" * 64
    assert check_id(memoryview(b"abc")) == b"abc"
    for bad in (b"", b"z" * 65):
        with pytest.raises(ValueError):
            check_id(bad)
    with pytest.raises(TypeError):
        check_id("text")


def test_add_payload_is_the_wire_layout():
    assert add_payload(b"sess-0001", b"hello-session-data", 300000) == (
        struct.pack(">II", 300000, 9) + b"sess-0001hello-session-data")


@pytest.mark.parametrize("args,kind", [
    ((b"id", b"", 10), ValueError),
    ((b"id", "text", 10), TypeError),
    ((b"id", b"d", -1), ValueError),
    ((b"id", b"d", wire.MAX_TIMEOUT_MS + 1), ValueError),
    ((b"id", b"d" * (wire.MESSAGE_MAX - 8 - 1), 10), ValueError),
    ((b"", b"d", 10), ValueError),
])
def test_add_payload_refuses_what_a_server_would(args, kind):
    with pytest.raises(kind):
        add_payload(*args)


def test_the_largest_add_fits_one_message():
    payload = add_payload(b"id", b"d" * (wire.MESSAGE_MAX - 10), wire.MAX_TIMEOUT_MS)
    assert len(payload) == wire.MESSAGE_MAX


def test_add_results():
    assert read_add(b"\x00") == wire.OK
    assert read_add(b"\x65") == wire.ERR_MATCHING_SESSION
    with pytest.raises(CacheUnavailable):
        read_add(b"")
    assert read_add(b"\x02") == wire.DISCONNECTED  # one byte is a result byte for ADD
    with pytest.raises(UnexpectedReply):
        read_add(b"\x00\x00")


def test_get_results():
    assert read_get(b"\x01") is None
    assert read_get(b"\x00") == b"\x00"
    assert read_get(b"session data") == b"session data"
    with pytest.raises(CacheUnavailable):
        read_get(b"")
    with pytest.raises(CacheDisconnected):
        read_get(b"\x02")


@pytest.mark.parametrize("op", [wire.OP_REMOVE, wire.OP_HAVE])
def test_flag_results(op):
    assert read_flag(op, b"\x00") is True
    assert read_flag(op, b"\x01") is False
    with pytest.raises(CacheUnavailable):
        read_flag(op, b"")
    with pytest.raises(CacheDisconnected):
        read_flag(op, b"\x02")
    with pytest.raises(UnexpectedReply, match="0505"):
        read_flag(op, b"\x05\x05")


def test_read_reply_follows_the_operation():
    assert read_reply(wire.OP_ADD, b"\x00") == 0
    assert read_reply(wire.OP_GET, b"\x00") == b"\x00"
    assert read_reply(wire.OP_HAVE, b"\x00") is True
    assert read_reply(wire.OP_REMOVE, b"\x01") is False


def test_errors_are_one_family():
    for name in ("CacheUnavailable", "CacheDisconnected", "UnexpectedReply", "MalformedReply",
                 "CacheUnreachable", "CacheConnectionLost", "CacheTimeout"):
        assert issubclass(getattr(replies, name), CacheError)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3), st.binary(max_size=40))
def test_any_payload_is_a_value_or_a_cache_error(op, payload):
    try:
        value = read_reply(op, payload)
    except CacheError:
        return
    if op == wire.OP_GET:
        assert value is None or value == payload
    elif op == wire.OP_ADD:
        assert value == payload[0] and len(payload) == 1
    else:
        assert value is (payload == b"\x00")
