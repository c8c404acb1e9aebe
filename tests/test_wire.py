"""The distcache codec against the captured C bytes, the spec's edge cases and random input."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from distcache import wire
from vectors import hexfile, transcript

GOLDEN = transcript("distcache-c-golden.log")


def header(resp=0, uid=1, cls=0, op=1, complete=1, dlen=0, level=0x00110000):
    return wire.HEADER.pack(level, resp, uid, cls, op, complete, dlen)


def test_golden_requests_decode_and_reencode_identically():
    for _, direction, data in GOLDEN:
        decoder = wire.Decoder(expect=(direction == "S>C"))
        [message] = decoder.feed(data)
        assert wire.encode(message.is_response, message.uid, message.op, message.payload) == data
        assert decoder.idle


def test_golden_add_payload():
    _, _, data = GOLDEN[0]
    [message] = wire.Decoder().feed(data)
    add = wire.parse_add(message.payload)
    assert add == wire.AddRequest(300000, b"sess-0001", b"hello-session-data")
    assert wire.encode_add_payload(b"sess-0001", b"hello-session-data", 300000) == message.payload


def test_multiframe_add_vector():
    data = hexfile("distcache-c-multiframe-add.hex")
    frames = wire.split_frames(data)
    assert [len(p) for _, p in frames] == [2048, 2048, 922]
    [message] = wire.Decoder().feed(data)
    add = wire.parse_add(message.payload)
    assert add.session_id == b"BIGSESSION" and len(add.data) == 5000
    assert add.timeout_ms == 600000 and message.uid == 0x1234
    assert wire.encode_request(message.uid, message.op, message.payload) == data


@pytest.mark.parametrize("size,frames", [(0, 1), (1, 1), (2048, 1), (2049, 2), (4096, 2),
                                         (32768, 16)])
def test_framing_sizes(size, frames):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = wire.encode_request(7, wire.OP_GET, payload)
    parts = wire.split_frames(data)
    assert len(parts) == frames
    assert all(len(p) == 2048 and h[11] == 0 for h, p in parts[:-1])
    assert parts[-1][0][11] == 1
    assert wire.Decoder().feed(data) == [wire.Message(False, 7, wire.OP_GET, payload)]


def test_encode_refuses_oversized_payload():
    with pytest.raises(ValueError):
        wire.encode_request(1, wire.OP_ADD, bytes(32769))


def test_byte_by_byte_feed():
    data = b"".join(d for _, direction, d in GOLDEN if direction == "C>S")
    decoder = wire.Decoder()
    messages = []
    for i in range(len(data)):
        messages += decoder.feed(data[i:i + 1])
    assert len(messages) == 8 and decoder.idle


def test_version_is_judged_after_four_bytes():
    decoder = wire.Decoder()
    assert decoder.feed(b"\x00\x11\xff") == []
    with pytest.raises(wire.ProtocolError, match="protocol level"):
        wire.Decoder().feed(b"\x00\x12\x00\x00")
    # only the high 16 bits count: a different patch level is fine
    [m] = wire.Decoder().feed(header(level=0x0011ABCD))
    assert m.op == wire.OP_GET


@pytest.mark.parametrize("fields,reason", [
    (dict(resp=2), "is_response"),
    (dict(resp=1), "response where a request"),
    (dict(cls=1), "class"),
    (dict(op=4), "operation 4"),
    (dict(complete=2), "complete"),
    (dict(dlen=2049), "exceeds"),
    (dict(complete=0, dlen=100), "non-final"),
])
def test_malformed_headers(fields, reason):
    with pytest.raises(wire.ProtocolError, match=reason):
        wire.Decoder(expect=False).feed(header(**fields))


def test_request_sent_to_a_client():
    with pytest.raises(wire.ProtocolError, match="request where a response"):
        wire.Decoder(expect=True).feed(header(resp=0))


def test_continuation_must_keep_uid_and_operation():
    first = header(uid=1, op=0, complete=0, dlen=2048) + bytes(2048)
    for other in (header(uid=2, op=0, dlen=1), header(uid=1, op=1, dlen=1)):
        with pytest.raises(wire.ProtocolError, match="continuation"):
            wire.Decoder().feed(first + other + b"x")


def test_more_than_sixteen_frames():
    frame = header(complete=0, dlen=2048) + bytes(2048)
    with pytest.raises(wire.ProtocolError, match="longer than"):
        wire.Decoder().feed(frame * 16 + header(dlen=0))


def test_messages_before_a_fault_are_kept():
    good = wire.encode_request(5, wire.OP_HAVE, b"id")
    with pytest.raises(wire.ProtocolError) as info:
        wire.Decoder().feed(good + good + header(op=9))
    assert [m.uid for m in info.value.messages] == [5, 5]


@pytest.mark.parametrize("payload,result", [
    (struct.pack(">II", 604800001, 2) + b"idD", wire.ERR_TIMEOUT_RANGE),
    (struct.pack(">II", 604800000, 2) + b"id", wire.ERR_CORRUPT),
    (struct.pack(">II", 1000, 3) + b"id", wire.ERR_CORRUPT),
    (struct.pack(">II", 1000, 0) + b"data", wire.ERR_ID_RANGE),
    (struct.pack(">II", 1000, 65) + bytes(66), wire.ERR_ID_RANGE),
    # the timeout is judged before the id length
    (struct.pack(">II", 0xFFFFFFFF, 0), wire.ERR_TIMEOUT_RANGE),
])
def test_add_checks_in_order(payload, result):
    assert wire.parse_add(payload) == result


def test_add_limits_accepted():
    add = wire.parse_add(struct.pack(">II", 604800000, 64) + bytes(64) + b"d")
    assert add.timeout_ms == 604800000 and len(add.session_id) == 64 and add.data == b"d"


def test_short_add_is_a_protocol_error():
    with pytest.raises(wire.ProtocolError):
        wire.parse_add(b"\x00" * 7)


messages = st.lists(st.tuples(st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 3),
                              st.binary(max_size=6000)), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_random_splits_decode_the_same(msgs, data):
    stream = b"".join(wire.encode(r, u, o, p) for r, u, o, p in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = wire.Decoder(expect=None)
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += decoder.feed(stream[prev:cut])
        prev = cut
    assert got == [wire.Message(r, u, o, p) for r, u, o, p in msgs]
    assert decoder.idle


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([None, False, True]))
def test_garbage_raises_only_protocol_error(garbage, expect):
    decoder = wire.Decoder(expect=expect)
    try:
        decoder.feed(garbage)
    except wire.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parse_add_never_raises_anything_else(payload):
    try:
        result = wire.parse_add(payload)
    except wire.ProtocolError:
        assert len(payload) < 8
    else:
        assert isinstance(result, (int, wire.AddRequest))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5),
                          st.integers(0, 2), st.integers(0, 2100), st.binary(max_size=40)),
                max_size=5))
def test_well_versioned_garbage_raises_only_protocol_error(frames):
    """Frames with a valid version but random fields and lengths reach the deeper checks."""
    stream = b"".join(header(resp=r % 2, cls=c % 2, op=o, complete=k, dlen=n) + body
                      for r, c, o, k, n, body in frames)
    decoder = wire.Decoder(expect=None)
    try:
        for m in decoder.feed(stream):
            assert isinstance(m, wire.Message)
    except wire.ProtocolError:
        pass


def test_receive_returns_messages_and_the_fault_beside_them():
    good = wire.encode_request(5, wire.OP_HAVE, b"id")
    assert wire.Decoder().receive(good) == ([wire.Message(False, 5, wire.OP_HAVE, b"id")], None)
    messages, error = wire.Decoder().receive(good + header(op=9))
    assert [m.uid for m in messages] == [5] and isinstance(error, wire.ProtocolError)


def test_each_protocol_error_has_its_own_messages():
    first = wire.ProtocolError("one")
    first.messages.append(wire.Message(False, 1, wire.OP_GET, b"x"))
    assert wire.ProtocolError("two").messages == []
    assert wire.ProtocolError("three", [first.messages[0]]).messages == first.messages


def test_a_failed_decoder_refuses_more_input():
    good = wire.encode_request(5, wire.OP_HAVE, b"id")
    decoder = wire.Decoder()
    assert decoder.failed is None
    with pytest.raises(wire.ProtocolError) as info:
        decoder.feed(good + header(op=9) + good)
    assert decoder.failed is info.value
    assert decoder.buffered == 0 and decoder.idle
    with pytest.raises(wire.ProtocolError, match="after a fault") as later:
        decoder.feed(good)
    assert later.value.messages == []
    assert decoder.failed is info.value


def test_receive_after_a_fault_discards_the_input_quietly():
    good = wire.encode_request(5, wire.OP_HAVE, b"id")
    decoder = wire.Decoder()
    messages, error = decoder.receive(good + b"\x00\x12\x00\x00")
    assert len(messages) == 1 and error is decoder.failed is not None
    assert decoder.receive(good) == ([], None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=300))
def test_after_any_fault_every_feed_raises(garbage, more):
    decoder = wire.Decoder(expect=None)
    try:
        decoder.feed(garbage)
    except wire.ProtocolError:
        with pytest.raises(wire.ProtocolError):
            decoder.feed(more)
        assert decoder.receive(more) == ([], None)
