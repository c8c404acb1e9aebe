"""The Twisted client on an in-memory transport: framing, pipelining, uid matching, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone

from distcache import wire
from distcache.client import (CacheClientProtocol, CacheConnectionLost, CacheDisconnected,
                              CacheUnavailable, MalformedReply, UnexpectedReply)

VECTORS = Path(__file__).resolve().parent / "vectors"


def connected():
    protocol = CacheClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def requests(transport):
    messages = wire.Decoder(expect=False).feed(transport.value())
    transport.clear()
    return messages


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def failure_of(d, kind):
    value = result(d)
    assert isinstance(value, Failure), value
    assert value.check(kind), value
    return value.value


def golden_requests():
    """The C client's request bytes from the golden transcript, in order."""
    lines = (VECTORS / "distcache-c-golden.log").read_text().splitlines()
    return [bytes.fromhex(line.split()[3]) for line in lines if " C>S " in line]


def test_requests_match_the_c_client_byte_for_byte():
    protocol, transport = connected()
    sent = []
    for call in (lambda: protocol.add(b"sess-0001", b"hello-session-data", 300000),
                 lambda: protocol.add(b"sess-0001", b"hello-session-data", 300000),
                 lambda: protocol.has(b"sess-0001"),
                 lambda: protocol.get(b"sess-0001"),
                 lambda: protocol.remove(b"sess-0001"),
                 lambda: protocol.remove(b"sess-0001"),
                 lambda: protocol.get(b"sess-0001"),
                 lambda: protocol.has(b"sess-0001")):
        call()
        sent.append(transport.value())
        transport.clear()
    assert sent == golden_requests()


def test_golden_replies_mean_what_the_c_server_meant():
    lines = (VECTORS / "distcache-c-golden.log").read_text().splitlines()
    replies = b"".join(bytes.fromhex(line.split()[3]) for line in lines if " S>C " in line)
    protocol, transport = connected()
    calls = [protocol.add(b"sess-0001", b"hello-session-data", 300000),
             protocol.add_status(b"sess-0001", b"hello-session-data", 300000),
             protocol.has(b"sess-0001"),
             protocol.get(b"sess-0001"),
             protocol.remove(b"sess-0001"),
             protocol.remove(b"sess-0001"),
             protocol.get(b"sess-0001"),
             protocol.has(b"sess-0001")]
    protocol.dataReceived(replies)
    assert [result(d) for d in calls] == [
        True, wire.ERR_MATCHING_SESSION, True, b"hello-session-data", True, False, None, False]


def test_requests_pipeline_and_replies_match_by_uid_in_any_order():
    protocol, transport = connected()
    gets = [protocol.get(b"id-%d" % i) for i in range(5)]
    sent = requests(transport)
    assert len(sent) == 5 and protocol.outstanding == 5
    assert len({m.uid for m in sent}) == 5
    for message in reversed(sent):
        protocol.dataReceived(wire.encode_response(message.uid, wire.OP_GET,
                                                   b"data of " + message.payload))
    assert [result(d) for d in gets] == [b"data of id-%d" % i for i in range(5)]
    assert protocol.outstanding == 0


def test_a_reply_split_into_single_bytes_and_a_multiframe_reply():
    protocol, transport = connected()
    d = protocol.get(b"big")
    (message,) = requests(transport)
    data = bytes(range(256)) * 20  # 5120 bytes: three frames
    for byte in wire.encode_response(message.uid, wire.OP_GET, data):
        protocol.dataReceived(bytes([byte]))
    assert result(d) == data


def test_add_of_a_session_spanning_frames_is_framed_like_the_c_client():
    protocol, transport = connected()
    protocol.add(b"0123456789", b"D" * 5000, 300000)
    frames = wire.split_frames(transport.value())
    assert [len(payload) for _, payload in frames] == [2048, 2048, 8 + 10 + 5000 - 4096]


@pytest.mark.parametrize("reply, value", [(b"\x00", True), (b"\x01", False)])
def test_remove_and_has(reply, value):
    for method, op in (("remove", wire.OP_REMOVE), ("has", wire.OP_HAVE)):
        protocol, transport = connected()
        d = getattr(protocol, method)(b"some-id")
        (message,) = requests(transport)
        assert message.op == op
        protocol.dataReceived(wire.encode_response(message.uid, op, reply))
        assert result(d) is value


def test_add_is_true_only_on_ok_and_exposes_the_result_byte():
    for status in (wire.OK, wire.NOTOK, wire.ERR_MATCHING_SESSION, wire.ERR_DATA_RANGE):
        protocol, transport = connected()
        stored = protocol.add(b"some-id", b"data", 1000)
        raw = protocol.add_status(b"other-id", b"data", 1000)
        for message in requests(transport):
            protocol.dataReceived(wire.encode_response(message.uid, wire.OP_ADD,
                                                       bytes([status])))
        assert result(stored) is (status == wire.OK)
        assert result(raw) == status


@pytest.mark.parametrize("method", ["get", "has", "remove"])
def test_dc_client_answers_become_errors(method):
    protocol, transport = connected()
    unavailable = getattr(protocol, method)(b"x1")
    dropped = getattr(protocol, method)(b"x2")
    first, second = requests(transport)
    protocol.dataReceived(wire.encode_response(first.uid, first.op, b""))
    protocol.dataReceived(wire.encode_response(second.uid, second.op, b"\x02"))
    failure_of(unavailable, CacheUnavailable)
    failure_of(dropped, CacheDisconnected)
    assert protocol.connected  # well-framed answers: the connection is still good


def test_a_result_byte_that_means_nothing_to_has_is_an_error():
    protocol, transport = connected()
    d = protocol.has(b"x")
    (message,) = requests(transport)
    protocol.dataReceived(wire.encode_response(message.uid, wire.OP_HAVE, b"\x05"))
    failure_of(d, UnexpectedReply)


def test_garbage_fails_every_outstanding_call_and_closes():
    protocol, transport = connected()
    calls = [protocol.get(b"a"), protocol.has(b"b"), protocol.add(b"c", b"d", 10)]
    protocol.dataReceived(b"\x00\x12\x00\x00 not a reply")
    for d in calls:
        failure_of(d, MalformedReply)
    assert transport.disconnecting or transport.disconnected
    # Later calls fail at once with the same reason.
    failure_of(protocol.get(b"a"), MalformedReply)


def test_a_reply_nobody_asked_for_fails_every_outstanding_call():
    protocol, transport = connected()
    calls = [protocol.get(b"a"), protocol.get(b"b")]
    requests(transport)
    protocol.dataReceived(wire.encode_response(999, wire.OP_GET, b"\x01"))
    for d in calls:
        failure_of(d, UnexpectedReply)
    assert transport.disconnecting or transport.disconnected


def test_a_reply_with_the_wrong_operation_fails_every_outstanding_call():
    protocol, transport = connected()
    calls = [protocol.get(b"a"), protocol.get(b"b")]
    first, _ = requests(transport)
    protocol.dataReceived(wire.encode_response(first.uid, wire.OP_HAVE, b"\x01"))
    for d in calls:
        failure_of(d, UnexpectedReply)


def test_replies_decoded_before_garbage_are_still_delivered():
    protocol, transport = connected()
    good, bad = protocol.has(b"a"), protocol.has(b"b")
    first, _ = requests(transport)
    protocol.dataReceived(wire.encode_response(first.uid, wire.OP_HAVE, b"\x00") + b"\xff" * 14)
    assert result(good) is True
    failure_of(bad, MalformedReply)


def test_lost_connection_fails_every_outstanding_call():
    protocol, transport = connected()
    calls = [protocol.get(b"a"), protocol.remove(b"b")]
    protocol.connectionLost(Failure(ConnectionDone("gone")))
    for d in calls:
        error = failure_of(d, CacheConnectionLost)
        assert "gone" in str(error)
    failure_of(protocol.has(b"c"), CacheConnectionLost)


def test_bad_arguments_fail_before_anything_is_sent():
    protocol, transport = connected()
    failure_of(protocol.get(b""), ValueError)
    failure_of(protocol.get(b"x" * 65), ValueError)
    failure_of(protocol.has("text"), TypeError)
    failure_of(protocol.add(b"id", b"", 10), ValueError)
    failure_of(protocol.add(b"id", b"d", wire.MAX_TIMEOUT_MS + 1), ValueError)
    failure_of(protocol.add(b"id", b"d" * wire.MESSAGE_MAX, 10), ValueError)
    assert transport.value() == b""


def test_a_cancelled_call_drops_its_late_reply_and_the_connection_carries_on():
    from twisted.internet import defer
    from twisted.internet.task import Clock
    clock = Clock()
    protocol, transport = connected()
    slow = protocol.get(b"slow").addTimeout(1.0, clock)
    following = protocol.has(b"next")
    first, second = requests(transport)
    clock.advance(1.5)
    failure_of(slow, defer.TimeoutError)
    protocol.dataReceived(wire.encode_response(first.uid, wire.OP_GET, b"late data"))
    protocol.dataReceived(wire.encode_response(second.uid, wire.OP_HAVE, b"\x00"))
    assert result(following) is True
    assert protocol.outstanding == 0 and not transport.disconnecting
    later = protocol.get(b"again")
    (message,) = requests(transport)
    protocol.dataReceived(wire.encode_response(message.uid, wire.OP_GET, b"\x01"))
    assert result(later) is None


def test_a_cancelled_call_is_not_failed_again_when_the_connection_drops():
    protocol, transport = connected()
    d = protocol.get(b"x")
    d.cancel()
    failure = result(d)
    assert isinstance(failure, Failure)
    protocol.connectionLost(Failure(ConnectionDone("gone")))  # must not raise AlreadyCalled


def test_uids_wrap_and_skip_those_still_pending():
    protocol, transport = connected()
    protocol._next_uid = 0
    oldest = protocol.get(b"old")                # uid 0, still unanswered
    protocol._next_uid = 0xFFFFFFFF
    last = protocol.has(b"a")                    # uid 0xffffffff
    wrapped = protocol.has(b"b")                 # not 0 again: that one is pending
    uids = [m.uid for m in requests(transport)]
    assert uids == [0, 0xFFFFFFFF, 1]
    protocol.dataReceived(wire.encode_response(1, wire.OP_HAVE, b"\x00")
                          + wire.encode_response(0, wire.OP_GET, b"old data")
                          + wire.encode_response(0xFFFFFFFF, wire.OP_HAVE, b"\x01"))
    assert (result(oldest), result(last), result(wrapped)) == (b"old data", False, True)


def test_nothing_is_read_after_the_stream_went_bad():
    from twisted.logger import capturedLogs
    protocol, transport = connected()
    d = protocol.get(b"a")
    with capturedLogs() as events:
        protocol.dataReceived(b"\xff" * 14)
        protocol.dataReceived(b"\xff" * 14)
        protocol.dataReceived(wire.encode_response(1, wire.OP_GET, b"x"))
    failure_of(d, MalformedReply)
    assert len(events) == 1
