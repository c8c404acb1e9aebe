"""The memcached text codec: golden requests, memcached's error rules, and fuzzing."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distcache import memcache, wire
from distcache.memcache import Command, Decoder, MemcacheError, Reject


def decode(data):
    return Decoder().feed(data)


# Golden cases: what clients send, and the events they become.
GOLDEN = [
    (b"get k\r\n", [Command(b"get", (b"k",))]),
    (b"get a b  c\r\n", [Command(b"get", (b"a", b"b", b"c"))]),
    (b"gets a\n", [Command(b"gets", (b"a",))]),
    (b"set k 0 60 5\r\nhello\r\n", [Command(b"set", (b"k",), 0, 60, b"hello")]),
    (b"add k 0 0 0\r\n\r\n", [Command(b"add", (b"k",), 0, 0, b"")]),
    (b"set k 0 -1 2 noreply\r\nab\r\n",
     [Command(b"set", (b"k",), 0, -1, b"ab", noreply=True)]),
    (b"set k 0 1 4\r\n\r\n\r\n\r\n", [Command(b"set", (b"k",), 0, 1, b"\r\n\r\n")]),
    (b"delete k\r\n", [Command(b"delete", (b"k",))]),
    (b"delete k 0 noreply\r\n", [Command(b"delete", (b"k",), noreply=True)]),
    (b"touch k 100\r\n", [Command(b"touch", (b"k",), exptime=100)]),
    (b"touch k 100 noreply\r\n", [Command(b"touch", (b"k",), exptime=100, noreply=True)]),
    (b"version\r\n", [Command(b"version")]),
    (b"stats\r\n", [Command(b"stats")]),
    (b"stats settings\r\n", [Command(b"stats", args=(b"settings",))]),
    (b"flush_all\r\n", [Command(b"flush_all")]),
    (b"flush_all 0 noreply\r\n", [Command(b"flush_all", noreply=True)]),
    (b"quit\r\n", [Command(b"quit")]),
    # memcached's answers that keep the connection.
    (b"\r\n", [Reject(memcache.ERROR)]),
    (b"bogus\r\n", [Reject(memcache.ERROR)]),
    (b"get\r\n", [Reject(memcache.ERROR)]),
    (b"incr k 1\r\n", [Reject(memcache.ERROR)]),
    (b"set k 0 0\r\n", [Reject(memcache.ERROR)]),
    (b"set k 0 0 x\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"set k 0 0 -1\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"set k x 0 2\r\nab\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"set k 0 y 2\r\nab\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"set k 4294967296 0 2\r\nab\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"set k 7 0 2\r\nab\r\n", [Reject(memcache.BAD_FLAGS)]),
    (b"set k 0 0 2\r\nabc\r\n", [Reject(memcache.BAD_CHUNK), Reject(memcache.ERROR)]),
    (b"replace k 0 0 2\r\nab\r\n", [Reject(memcache.ERROR)]),
    (b"cas k 0 0 2 99\r\nab\r\n", [Reject(memcache.ERROR)]),
    (b"delete k 5\r\n", [Reject(memcache.BAD_DELETE)]),
    (b"delete\r\n", [Reject(memcache.BAD_DELETE)]),
    (b"touch k soon\r\n", [Reject(memcache.BAD_EXPTIME)]),
    (b"version 2\r\n", [Reject(memcache.ERROR)]),
    (b"flush_all x\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"get " + b"k" * 251 + b"\r\n", [Reject(memcache.BAD_FORMAT)]),
    (b"get " + b"k" * 250 + b"\r\n", [Command(b"get", (b"k" * 250,))]),
    (b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\nversion\r\n",
     [Reject(memcache.BAD_FORMAT), Command(b"version")]),
]


@pytest.mark.parametrize("data,events", GOLDEN)
def test_golden(data, events):
    assert decode(data) == events


@pytest.mark.parametrize("data,events", GOLDEN)
def test_golden_byte_by_byte(data, events):
    decoder = Decoder()
    got = []
    for i in range(len(data)):
        got += decoder.feed(data[i:i + 1])
    assert got == events


def test_pipelined_requests_come_out_in_order():
    data = b"set a 0 0 1\r\nx\r\nget a b\r\nbogus\r\ndelete a noreply\r\nversion\r\n"
    assert [e.name if isinstance(e, Command) else e.reply for e in decode(data)] == [
        b"set", b"get", memcache.ERROR, b"delete", b"version"]


def test_value_at_the_limit_is_accepted_and_one_more_is_refused_unbuffered():
    decoder = Decoder()
    body = b"v" * memcache.VALUE_MAX
    assert decoder.feed(b"set k 0 0 %d\r\n" % len(body) + body + b"\r\n")[0].data == body
    big = memcache.VALUE_MAX + 1
    assert decoder.feed(b"set k 0 0 %d\r\n" % big) == []
    for _ in range(big // 4096):
        assert decoder.feed(b"x" * 4096) == []
        assert decoder.buffered == 0
    rest = big - (big // 4096) * 4096
    assert decoder.feed(b"x" * rest + b"\r\nversion\r\n") == [
        Reject(memcache.TOO_LARGE), Command(b"version")]


def test_too_large_with_noreply_is_silent():
    big = memcache.VALUE_MAX + 10
    assert decode(b"set k 0 0 %d noreply\r\n" % big + b"x" * big + b"\r\n") == [
        Reject(memcache.TOO_LARGE, noreply=True)]


def test_overlong_line_ends_the_connection_and_the_decoder():
    decoder = Decoder()
    events = decoder.feed(b"x" * (memcache.LINE_MAX + 2))
    assert events == [Reject(memcache.LINE_TOO_LONG, close=True)]
    assert decoder.closed and decoder.buffered == 0
    with pytest.raises(MemcacheError):
        decoder.feed(b"version\r\n")


def test_a_long_get_line_is_allowed_up_to_its_own_limit():
    keys = [b"k%d" % i for i in range(3000)]
    line = b"get " + b" ".join(keys) + b"\r\n"
    assert memcache.LINE_MAX < len(line) < memcache.GET_LINE_MAX
    assert decode(line) == [Command(b"get", tuple(keys))]
    assert decode(b"get " + b"k " * memcache.GET_LINE_MAX)[-1].close


def test_quit_stops_reading():
    decoder = Decoder()
    assert decoder.feed(b"quit\r\nversion\r\n") == [Command(b"quit")]
    with pytest.raises(MemcacheError):
        decoder.feed(b"version\r\n")


def test_replies():
    assert memcache.value(b"k", b"abc") == b"VALUE k 0 3\r\nabc\r\n"
    assert memcache.value(b"k", b"", 7) == b"VALUE k 0 0 7\r\n\r\n"
    assert memcache.stats([("pid", 1), ("version", "x")]) == (
        b"STAT pid 1\r\nSTAT version x\r\nEND\r\n")
    assert memcache.version("1.6") == b"VERSION 1.6\r\n"
    assert memcache.cas_unique(b"a") == memcache.cas_unique(b"a") != memcache.cas_unique(b"b")


def test_store_id_keeps_short_keys_and_digests_long_ones():
    assert memcache.store_id(b"k" * 64) == b"k" * 64
    apache = b"mod_ssl-sess:" + b"AB" * 32
    assert len(apache) == 77
    sid = memcache.store_id(apache)
    assert len(sid) == wire.MAX_ID_LEN
    assert sid == apache[:32] + hashlib.sha256(apache).digest()[:32]
    assert memcache.store_id(apache + b"0") != sid


@pytest.mark.parametrize("exptime,now,ms", [
    (0, 1e9, wire.MAX_TIMEOUT_MS),
    (-1, 1e9, 0),
    (60, 1e9, 60000),
    (memcache.RELATIVE_MAX, 1e9, wire.MAX_TIMEOUT_MS),
    (3600, 1e9, 3600000),
    (2_000_000_100, 2_000_000_000, 100000),
    (2_000_000_000, 2_000_000_000, 0),
    (1_000_000_000, 2_000_000_000, 0),
    (4_000_000_000, 2_000_000_000, wire.MAX_TIMEOUT_MS),
])
def test_timeout_ms(exptime, now, ms):
    assert memcache.timeout_ms(exptime, now) == ms


# Fuzzing: any bytes, cut anywhere, give the same events, never an exception, and a
# bounded buffer.
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_any_bytes_cut_anywhere(data, cuts):
    whole = Decoder()
    try:
        expected = whole.feed(data)
    except MemcacheError:  # pragma: no cover - a fresh decoder never refuses
        raise
    decoder = Decoder()
    got = []
    last = 0
    for cut in sorted(set(c for c in cuts if c <= len(data))) + [len(data)]:
        if decoder.closed:
            break
        got += decoder.feed(data[last:cut])
        last = cut
        assert decoder.buffered <= memcache.GET_LINE_MAX + 2 + memcache.VALUE_MAX + 2
    assert got == expected
    for event in got:
        assert isinstance(event, (Command, Reject))


commands = st.sampled_from([
    b"get k\r\n", b"set k 0 0 3\r\nabc\r\n", b"delete k\r\n", b"touch k 1\r\n",
    b"version\r\n", b"bogus\r\n", b"set k 0 0 2\r\nabc\r\n", b"add k 0 0 x\r\n",
    b"stats\r\n", b"gets a b\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=12), st.binary(max_size=40))
def test_well_formed_pipelines_survive_garbage_after_them(items, tail):
    events = decode(b"".join(items) + tail)
    clean = decode(b"".join(items))
    assert events[:len(clean)] == clean
