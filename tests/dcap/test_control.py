"""Control-line parsing and reply formatting, checked against the real client's lines."""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap import control
from distcache.dcap.control import BadURL, ProtocolError, parse_request

TRANSCRIPT = Path(__file__).resolve().parents[1] / "vectors" / "dccp-2.47.14-transcript.txt"


def test_hello_line():
    r = parse_request(b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=13414 -gid=0')
    assert (r.sid, r.cid, r.name, r.command) == (0, 0, "client", "hello")
    assert r.args == ("0", "0", "2", "47", "14", "")
    assert r.options == {"uid": "0", "pid": "13414", "gid": "0"}


def test_open_line_with_flags_and_repeated_extras():
    r = parse_request(b'2 0 client open "dcap://127.0.0.1//pnfs/x" r vm 45085 -timeout=30 '
                      b'-onerror=default -send=100000 -receive=200000 -passive  -foo=bar  -foo=baz  -uid=0')
    assert r.args == ("dcap://127.0.0.1//pnfs/x", "r", "vm", "45085")
    assert r.options["passive"] is None
    assert r.options["foo"] == "baz"
    assert [k for k, _ in r.extras].count("foo") == 2
    assert r.int_option("timeout", -1) == 30
    assert r.int_option("missing", 7) == 7


def test_quoted_token_keeps_blanks_and_tabs_split():
    assert control.tokenise(b'a\t"b c"\r d') == ["a", "b c", "d"]
    assert control.tokenise(b'"unterminated x') == ["unterminated x"]


@pytest.mark.parametrize("line", [b"", b"1 2 client", b"x 0 client stat", b"1 -2 client stat", b"1 2"])
def test_protocol_violations(line):
    with pytest.raises(ProtocolError):
        parse_request(line)


def test_every_client_line_of_the_transcript_parses():
    count = 0
    for raw in open(TRANSCRIPT, encoding="ascii"):
        if raw.startswith("CTL<- '"):
            line = raw[len("CTL<- '"):].rstrip("\n")[:-1]
            r = parse_request(line.encode("ascii"))
            assert r.name == "client"
            if r.args and r.args[0].startswith("dcap://"):
                assert control.decode_url(r.args[0]).startswith("/pnfs/")
            count += 1
    assert count > 20


@pytest.mark.parametrize("url,path", [
    ("dcap://127.0.0.1//pnfs/x", "/pnfs/x"),
    ("dcap://host:22125/a//b///c/", "/a/b/c"),
    ("dcap://h/a%20b%2Fc", "/a b/c"),
    ("/plain/path", "/plain/path"),
    ("dcap://h", "/"),
    ("dcap://h/%2e%2e/etc", "/../etc"),
])
def test_decode_url(url, path):
    assert control.decode_url(url) == path


@pytest.mark.parametrize("url", ["dcap://h/a%00b", "relative", "dcap://h/%ff"])
def test_decode_url_refuses(url):
    with pytest.raises(BadURL):
        control.decode_url(url)


def test_decode_mode_like_java_integer_decode():
    assert control.decode_mode("493", 0) == 0o755
    assert control.decode_mode("0644", 0) == 0o644
    assert control.decode_mode("0x1ff", 0) == 0o777
    assert control.decode_mode("bogus", 0o600) == 0o600
    assert control.decode_mode(None, 0o666) == 0o666


def test_replies():
    assert control.welcome("2", "47") == b"0 0 server welcome 2 47\n"
    assert control.ok(2, 0) == b"2 0 client ok\n"
    assert control.pong(5, 2) == b"5 2 server pong\n"
    assert control.failed(2, 0, 2, "No such file or directory", "ENOENT") == \
        b'2 0 client failed 2 "No such file or directory" ENOENT\n'
    assert control.connect(2, 0, "127.0.0.1", 47535, "abc") == b"2 0 client connect 127.0.0.1 47535 abc\n"
    line = control.stat_reply(1, 0, size=17000, uid=0, gid=0, atime=1, mtime=2, ctime=3,
                              kind="file", mode=0o644, ino=1234)
    assert line.startswith(b"1 0 client stat -st_size=17000 -st_uid=0 -st_gid=0 -st_atime=1 "
                           b"-st_mtime=2 -st_ctime=3 -st_mode=-rw-r--r-- -st_ino=1234")
    assert control.mode_string("dir", 0o755) == "drwxr-xr-x"


def test_failed_escapes_non_ascii_and_quotes_and_stays_short():
    line = control.failed(1, 0, 19, 'd\u00e9nied "x"\n' + "y" * 10000, "EACCES")
    assert max(line) < 128
    assert len(line) <= control.MAX_REPLY_LENGTH
    assert line.count(b'"') == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_lines_raise_only_protocol_error(data):
    try:
        parse_request(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_decode_url_raises_only_bad_url(text):
    try:
        path = control.decode_url(text)
    except BadURL:
        return
    assert path.startswith("/") and "//" not in path and "\x00" not in path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_escape_is_ascii(text):
    out = control.escape(text)
    assert all(32 <= ord(c) < 127 for c in out)
    assert '"' not in out


_word = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='"'), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 2**31), _word, _word,
       st.lists(st.tuples(_word.filter(lambda w: not w.startswith("-") and "=" not in w), st.one_of(st.none(), _word)), max_size=5))
def test_round_trip_of_generated_requests(sid, cid, name, command, opts):
    words = ["-%s" % k if v is None else "-%s=%s" % (k, v) for k, v in opts]
    line = " ".join([str(sid), str(cid), name, command, '"quoted arg"'] + words)
    r = parse_request(line.encode("ascii"))
    assert (r.sid, r.cid, r.name, r.command) == (sid, cid, name, command)
    assert r.args[0] == "quoted arg"
    expected = {}
    for k, v in opts:
        expected[k] = v
    assert r.options == expected


def _client_lines():
    lines = []
    for raw in open(TRANSCRIPT, encoding="ascii"):
        if raw.startswith("CTL<- '"):
            lines.append(raw[len("CTL<- '"):].rstrip("\n")[:-1].encode("ascii"))
    return lines


def _read_all(reader):
    out = []
    while True:
        r = reader.next_request()
        if r is control.NEED_DATA:
            return out
        out.append(r)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_the_reader_gives_the_real_clients_requests_however_the_bytes_arrive(cuts):
    lines = _client_lines()
    stream = b"".join(line + b"\n" for line in lines)
    points = sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]
    reader = control.RequestReader()
    got, last = [], 0
    for p in points:
        reader.receive_data(stream[last:p])
        last = p
        got += _read_all(reader)
    assert got == [parse_request(line) for line in lines]
    assert not reader.failed


def test_a_reader_that_raised_stays_failed():
    reader = control.RequestReader()
    reader.receive_data(b"1 0 client ping\nbad\n2 0 client ping\n")
    assert reader.next_request().command == "ping"
    with pytest.raises(ProtocolError):
        reader.next_request()
    assert reader.failed
    with pytest.raises(ProtocolError):
        reader.next_request()  # the good line after the bad one is not parsed
    with pytest.raises(ProtocolError):
        reader.receive_data(b"3 0 client ping\n")


@pytest.mark.parametrize("data,ok", [
    (b"1 0 client " + b"x" * (100 - 11) + b"\n", True),    # exactly the limit
    (b"1 0 client " + b"x" * (100 - 10) + b"\n", False),   # one byte over
    (b"1 0 client " + b"x" * (100 - 10), False),           # over, newline not yet seen
    (b"1 0 client " + b"x" * (100 - 11), None),            # at the limit, still waiting
])
def test_the_reader_limits_line_length(data, ok):
    reader = control.RequestReader(max_line=100)
    reader.receive_data(data)
    if ok is None:
        assert reader.next_request() is control.NEED_DATA
    elif ok:
        assert len(reader.next_request().command) == 89
    else:
        with pytest.raises(ProtocolError):
            reader.next_request()
        assert reader.failed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_garbage_gives_requests_or_protocol_error_only(data, step):
    reader = control.RequestReader(max_line=64)
    try:
        for i in range(0, len(data), step):
            reader.receive_data(data[i:i + step])
            _read_all(reader)
    except ProtocolError:
        assert reader.failed
    else:
        assert not reader.failed
        assert len(reader._buf) <= 64
