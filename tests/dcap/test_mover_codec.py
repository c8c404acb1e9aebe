"""The data-channel parser and reply writer, byte for byte against the spec's worked example."""

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap import mover_codec as mc
from distcache.dcap.mover_codec import NEED_DATA, ProtocolError, RequestParser


def drain(parser, begin_data_after_write=True):
    events = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if begin_data_after_write and isinstance(ev, (mc.Write, mc.SeekAndWrite)):
            parser.begin_data()


def test_worked_example_from_the_spec():
    p = RequestParser(expect_hello=True)
    challenge = b"MjM4YTRmZDgtMzliMS00YmMxLWEzMDctMzQ5NjY0OGQwZjFl"
    p.receive_data(bytes.fromhex("00000002 00000030".replace(" ", "")) + challenge)
    p.receive_data(bytes.fromhex("0000000c00000002 00000000000ffffa".replace(" ", "")))
    p.receive_data(bytes.fromhex("0000000400000004"))
    assert drain(p) == [mc.Hello(2, challenge), mc.Read(1048570), mc.Close(None)]
    assert mc.ack(mc.READ).hex() == "0000000c0000000600000002" + "00000000"
    assert mc.DATA_HEADER.hex() == "0000000400000008"
    assert mc.DATA_END.hex() == "ffffffff"
    assert mc.fin(mc.READ).hex() == "0000000c0000000700000002" + "00000000"
    assert mc.ack(mc.CLOSE).hex() == "0000000c0000000600000004" + "00000000"


def test_close_with_adler32_from_transcript():
    p = RequestParser(expect_hello=False)
    p.receive_data(bytes.fromhex("00000014" "000000040000000c00000001000000012dffa3cc"))
    assert drain(p) == [mc.Close(0x2DFFA3CC)]
    assert mc.encode_close(0x2DFFA3CC).hex() == "00000014000000040000000c00000001000000012dffa3cc"


def test_write_stream_and_every_request_kind():
    stream = b"".join([
        mc.encode_write(), mc.encode_data(b"abcdef", block=4),
        mc.encode_seek(10, mc.SEEK_SET), mc.encode_seek_and_read(3, mc.SEEK_CUR, 99),
        mc.encode_seek_and_write(0, mc.SEEK_END), mc.encode_data(b""),
        mc.encode_readv([(0, 5), (100, 7)]), mc.encode_locate(), mc.encode_read(5),
        struct.pack(">ii", 4, mc.STATUS), mc.encode_close(),
    ])
    p = RequestParser(expect_hello=False)
    p.receive_data(stream)
    events = drain(p)
    assert events == [
        mc.Write(), mc.DataChunk(b"abcd"), mc.DataChunk(b"ef"), mc.DataEnd(),
        mc.Seek(10, 0), mc.SeekAndRead(3, 1, 99), mc.SeekAndWrite(0, 2), mc.DataEnd(),
        mc.ReadV(((0, 5), (100, 7))), mc.Locate(), mc.Read(5), mc.Unsupported(mc.STATUS), mc.Close(None),
    ]


def test_write_is_not_data_until_the_mover_accepts_it():
    p = RequestParser(expect_hello=False)
    p.receive_data(mc.encode_write() + mc.encode_close())
    assert p.next_event() == mc.Write()
    assert p.next_event() == mc.Close(None)


def test_oversized_blocks_are_refused():
    p = RequestParser(expect_hello=False)
    p.receive_data(struct.pack(">i", mc.MAX_BLOCK + 1))
    with pytest.raises(ProtocolError):
        p.next_event()
    p = RequestParser(expect_hello=False)
    p.receive_data(mc.encode_write())
    p.next_event()
    p.begin_data()
    p.receive_data(mc.DATA_HEADER + struct.pack(">i", mc.MAX_BLOCK + 1))
    with pytest.raises(ProtocolError):
        p.next_event()


def test_a_parser_that_raised_stays_failed_and_refuses_more_input():
    p = RequestParser(expect_hello=False)
    p.receive_data(mc.encode_locate() + struct.pack(">i", 2) + b"xx" + mc.encode_close())
    assert p.next_event() == mc.Locate()
    assert not p.failed
    with pytest.raises(ProtocolError):
        p.next_event()
    assert p.failed
    assert p.buffered() == 0  # what followed the bad block is dropped, not parsed
    with pytest.raises(ProtocolError):
        p.next_event()
    with pytest.raises(ProtocolError):
        p.receive_data(mc.encode_close())
    with pytest.raises(RuntimeError):
        p.begin_data()


def test_reply_forms():
    assert mc.seek_ack(42) == struct.pack(">iiiiq", 20, 6, 3, 0, 42)
    assert mc.locate_ack(17, 3) == struct.pack(">iiiiqq", 28, 6, 9, 0, 17, 3)
    assert mc.ack_error(4, 33, "bad") == struct.pack(">iiiiH", 17, 6, 4, 33, 3) + b"bad"
    assert mc.fin_error(2, 5, "io") == struct.pack(">iiiiH", 16, 7, 2, 5, 2) + b"io"
    assert mc.client_hello(7) == struct.pack(">ii", 7, 0)


_requests = st.one_of(
    st.integers(0, 2**40).map(mc.encode_read),
    st.tuples(st.integers(-2**40, 2**40), st.integers(0, 2)).map(lambda t: mc.encode_seek(*t)),
    st.tuples(st.integers(0, 2**40), st.integers(0, 2), st.integers(0, 2**30)).map(lambda t: mc.encode_seek_and_read(*t)),
    st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**20)), max_size=6).map(mc.encode_readv),
    st.just(mc.encode_locate()),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)).map(mc.encode_close),
    st.binary(max_size=3000).map(lambda b: mc.encode_write() + mc.encode_data(b, block=700)),
)


def _split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=200, deadline=None)
@given(st.lists(_requests, max_size=8), st.lists(st.integers(0, 10**6), max_size=20))
def test_random_splits_give_the_same_events(reqs, cuts):
    stream = mc.encode_hello(3, b"chal") + b"".join(reqs)
    whole = RequestParser(expect_hello=True)
    whole.receive_data(stream)
    expected = drain(whole)
    split = RequestParser(expect_hello=True)
    got = []
    for piece in _split(stream, cuts):
        split.receive_data(piece)
        got += drain(split)

    def merge(events):
        out = []
        for e in events:
            if isinstance(e, mc.DataChunk) and out and isinstance(out[-1], mc.DataChunk):
                out[-1] = mc.DataChunk(bytes(out[-1].data) + bytes(e.data))
            else:
                out.append(e)
        return out

    assert merge(got) == merge(expected)
    assert whole.buffered() == 0


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.binary(max_size=400), st.booleans())
def test_garbage_raises_only_protocol_error(hello, data, writing):
    p = RequestParser(expect_hello=hello)
    p.receive_data(data)
    try:
        drain(p, begin_data_after_write=writing)
    except ProtocolError:
        assert p.failed
        with pytest.raises(ProtocolError):
            p.next_event()
    else:
        assert not p.failed


TRANSCRIPT = Path(__file__).resolve().parents[1] / "vectors" / "dccp-2.47.14-transcript.txt"
_KINDS = {mc.READ: mc.Read, mc.CLOSE: mc.Close, mc.WRITE: mc.Write, mc.SEEK_AND_READ: mc.SeekAndRead}


def test_every_data_request_of_the_real_client_parses():
    seen = []
    for line in TRANSCRIPT.read_text(encoding="ascii").splitlines():
        m = re.match(r"DATA cmd size (\d+) code (\d+) raw ([0-9a-f]+)$", line)
        if m:
            size, code, raw = int(m.group(1)), int(m.group(2)), bytes.fromhex(m.group(3))
            p = RequestParser(expect_hello=False)
            p.receive_data(struct.pack(">i", size) + raw)
            event = p.next_event()
            assert isinstance(event, _KINDS[code]), line
            assert p.next_event() is NEED_DATA
            seen.append(event)
        m = re.match(r"DATA handshake sid (\d+) challen (\d+) challenge b'([^']*)'", line)
        if m:
            p = RequestParser(expect_hello=True)
            p.receive_data(struct.pack(">ii", int(m.group(1)), int(m.group(2))) + m.group(3).encode("ascii"))
            assert p.next_event() == mc.Hello(int(m.group(1)), m.group(3).encode("ascii"))
    assert mc.Read(1048570) in seen
    assert mc.Close(0x2DFFA3CC) in seen
    assert mc.SeekAndRead(0x4257, mc.SEEK_SET, 1 << 20) in seen
