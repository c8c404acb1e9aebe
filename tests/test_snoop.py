"""dc_snoop's analysis (sans I/O) and its command line."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.python import usage

from distcache import cflags, snoop_tap, wire
from distcache.snoop import (TO_CLIENT, TO_SERVER, Pair, StreamAnalyser, describe_request,
                             describe_response, session_id_text)

from proxy_support import load_log, multiframe_add, requests_and_replies


def test_session_ids_print_as_text_or_hex():
    assert session_id_text(b"sess-0001") == '"sess-0001"'
    assert session_id_text(b"\x00\xffab") == "0x00ff6162"
    assert session_id_text(b"") == '""'
    assert session_id_text(b"a" * 70) == '"' + "a" * 64 + '"...'


def test_golden_requests_are_described():
    requests, _ = requests_and_replies("distcache-c-golden.log")
    analyser = StreamAnalyser(TO_SERVER)
    lines = analyser.feed(b"".join(requests))
    assert lines[0] == ('C>S uid=1 ADD request 35 bytes id="sess-0001" data=18 bytes '
                        'timeout=300000ms')
    assert lines[2] == 'C>S uid=3 HAVE request 9 bytes id="sess-0001"'
    assert [line.split()[2] for line in lines] == ["ADD", "ADD", "HAVE", "GET", "REMOVE",
                                                    "REMOVE", "GET", "HAVE"]
    assert analyser.summary() == "C>S 236 bytes in 8 messages"


def test_golden_replies_are_described():
    _, replies = requests_and_replies("distcache-c-golden.log")
    lines = StreamAnalyser(TO_CLIENT).feed(b"".join(replies))
    assert lines[:4] == ["S>C uid=1 ADD response 1 byte result=OK",
                         "S>C uid=2 ADD response 1 byte result=MATCHING_SESSION",
                         "S>C uid=3 HAVE response 1 byte result=OK",
                         "S>C uid=4 GET response 18 bytes session data"]
    assert lines[6] == "S>C uid=7 GET response 1 byte result=NOTOK (miss)"


def test_server_down_replies_are_explained():
    _, replies = requests_and_replies("distcache-c-client-server-down.log")
    (line, _) = StreamAnalyser(TO_CLIENT).feed(b"".join(replies))
    assert line.startswith("S>C uid=1 ADD response 0 bytes empty")


def test_a_disconnected_reply_is_named():
    m = wire.Message(True, 3, wire.OP_HAVE, b"\x02")
    assert describe_response(m).endswith("result=DISCONNECTED")


def test_invalid_adds_say_what_a_server_would_do():
    short = wire.Message(False, 1, wire.OP_ADD, b"\x00\x01")
    assert "malformed" in describe_request(short)
    too_long = wire.Message(False, 1, wire.OP_ADD, wire.encode_add_payload(b"x", b"d", 10 ** 9))
    assert describe_request(too_long).endswith("a server answers TIMEOUT_RANGE")


def test_a_multiframe_add_is_one_line():
    analyser = StreamAnalyser(TO_SERVER)
    data = multiframe_add()
    lines = [line for i in range(0, len(data), 700) for line in analyser.feed(data[i:i + 700])]
    assert lines == ['C>S uid=4660 ADD request 5018 bytes id="BIGSESSION" data=5000 bytes '
                     'timeout=600000ms']


def test_malformed_input_is_explained_once_and_then_only_counted():
    analyser = StreamAnalyser(TO_SERVER)
    good = wire.encode_request(1, wire.OP_GET, b"id")
    lines = analyser.feed(good + b"\x00\x12\x00\x00rest")
    assert lines[0] == 'C>S uid=1 GET request 2 bytes id="id"'
    assert lines[1].startswith("C>S malformed after 1 messages: protocol level 0x00120000")
    assert analyser.feed(good) == []
    assert analyser.summary() == (f"C>S {len(good) * 2 + 8} bytes in 1 messages "
                                  "(undecoded after the fault)")


def test_an_unfinished_message_is_reported_in_the_summary():
    analyser = StreamAnalyser(TO_CLIENT)
    analyser.feed(wire.encode_response(1, wire.OP_GET, b"abc")[:-1])
    assert analyser.summary() == "S>C 16 bytes in 0 messages and 16 bytes of an unfinished message"


def test_a_pair_reports_once_with_both_directions():
    lines = []
    clock = task.Clock()
    pair = Pair(7, lines.append, clock)
    pair.analyse(pair.to_server, wire.encode_request(1, wire.OP_HAVE, b"s"))
    pair.analyse(pair.to_client, wire.encode_response(1, wire.OP_HAVE, b"\x01"))
    clock.advance(1.5)
    pair.finish("closed by the client")
    pair.finish("closed by the server")
    assert lines == ['pair 7 C>S uid=1 HAVE request 1 byte id="s"',
                     "pair 7 S>C uid=1 HAVE response 1 byte result=NOTOK",
                     "pair 7 closed by the client after 1.500s: C>S 15 bytes in 1 messages; "
                     "S>C 15 bytes in 1 messages"]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 400), max_size=12))
def test_any_split_of_a_stream_gives_the_same_lines(cuts):
    requests, _ = requests_and_replies("distcache-c-golden.log")
    data = b"".join(requests)
    whole = StreamAnalyser(TO_SERVER).feed(data)
    analyser = StreamAnalyser(TO_SERVER)
    lines, last = [], 0
    for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        lines += analyser.feed(data[last:cut])
        last = cut
    assert lines == whole


@settings(max_examples=200, deadline=None)
@given(direction=st.sampled_from([TO_SERVER, TO_CLIENT]),
       chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_garbage_never_raises_and_is_counted(direction, chunks):
    analyser = StreamAnalyser(direction)
    for chunk in chunks:
        for line in analyser.feed(chunk):
            assert line.startswith(direction)
    assert analyser.bytes == sum(map(len, chunks))
    assert analyser.summary().startswith(direction)


def parse(*argv):
    options = snoop_tap.Options()
    options.parseOptions(list(argv))
    return options


def test_options():
    options = parse("--listen", "UNIX:/tmp/snoop", "--connect", "UNIX:/tmp/scache")
    assert (options["listen"], options["server"]) == ("UNIX:/tmp/snoop", "UNIX:/tmp/scache")
    for argv in (["--listen", "UNIX:/a"], ["--server", "UNIX:/a"],
                 ["--listen", "bogus", "--server", "UNIX:/a"]):
        with pytest.raises(usage.UsageError):
            parse(*argv)


def test_c_flags():
    argv = cflags.twistd_argv("dc_snoop", ["-listen", "IP:9002", "-server", "IP:cache:9001"])
    assert argv[-5:] == ["dc_snoop", "--listen", "IP:9002", "--server", "IP:cache:9001"]


def test_service_pickles_and_plugin_is_found():
    service = snoop_tap.makeService(parse("--listen", "UNIX:/tmp/a", "--server", "UNIX:/tmp/b"))
    copy = pickle.loads(pickle.dumps(service))
    assert (copy.listen, copy.server, copy.factory) == ("UNIX:/tmp/a", "UNIX:/tmp/b", None)
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    assert {p.tapname: p for p in getPlugins(IServiceMaker)}["dc_snoop"].options is \
        snoop_tap.Options


def test_vectors_are_what_the_tests_assume():
    assert [d for d, _ in load_log("distcache-c-golden.log")].count("C>S") == 8
