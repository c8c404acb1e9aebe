"""dc_server's protocol on in-memory transports and a fake clock."""

import struct

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from distcache import wire
from distcache.server import CacheServerFactory
from distcache.store import SessionStore
from vectors import transcript


@pytest.fixture
def clock():
    c = Clock()
    c.advance(100)
    return c


def connect(factory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def take(transport):
    data = transport.value()
    transport.clear()
    return data


def replies(data):
    return wire.Decoder(expect=True).feed(data)


def test_golden_transcript(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    for _, direction, data in transcript("distcache-c-golden.log"):
        if direction == "C>S":
            proto.dataReceived(data)
        else:
            assert take(transport) == data


def test_pipelined_requests_answered_in_order(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    big = bytes(range(256)) * 127 + bytes(245)  # the largest session a message can carry
    stream = [wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(b"big", big, 60000))]
    for uid in range(2, 40):
        stream.append(wire.encode_request(uid, (wire.OP_GET, wire.OP_HAVE)[uid % 2], b"big"))
    proto.dataReceived(b"".join(stream))
    got = replies(take(transport))
    assert [m.uid for m in got] == list(range(1, 40))
    assert got[0].payload == b"\x00"
    for m in got[1:]:
        assert m.payload == (big if m.op == wire.OP_GET else b"\x00")
    assert factory.activity.operations == 39


def test_add_result_bytes(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    cases = [
        (struct.pack(">II", 604800001, 1) + b"ab", 0x66),
        (struct.pack(">II", 1000, 5) + b"ab", 0x64),
        (struct.pack(">II", 1000, 0) + b"ab", 0x67),
        (struct.pack(">II", 1000, 65) + bytes(70), 0x67),
        (struct.pack(">II", 1000, 1) + b"ab", 0x00),
        (struct.pack(">II", 1000, 1) + b"ab", 0x65),
    ]
    for uid, (payload, result) in enumerate(cases):
        proto.dataReceived(wire.encode_request(uid, wire.OP_ADD, payload))
        [m] = replies(take(transport))
        assert (m.uid, m.payload) == (uid, bytes([result]))


def test_malformed_input_answers_what_came_before_then_closes(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    good = wire.encode_request(9, wire.OP_HAVE, b"x")
    proto.dataReceived(good + b"\x00\x12\x00\x00" + bytes(10))
    assert [m.uid for m in replies(take(transport))] == [9]
    assert transport.disconnecting
    proto.dataReceived(good)
    assert take(transport) == b""


def test_short_add_closes(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, b"1234567"))
    assert transport.disconnecting and take(transport) == b""


def test_expiry_follows_the_reactor_clock(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(b"s", b"d", 2000)))
    clock.advance(1.999)
    proto.dataReceived(wire.encode_request(2, wire.OP_HAVE, b"s"))
    clock.advance(0.001)
    proto.dataReceived(wire.encode_request(3, wire.OP_HAVE, b"s"))
    assert [m.payload for m in replies(take(transport))] == [b"\x00", b"\x00", b"\x01"]


class SlowStore:
    """A store that answers through Deferreds fired later, as a networked one would."""

    def __init__(self, clock):
        self.inner = SessionStore(clock)
        self.waiting = []

    def __len__(self):
        return len(self.inner)

    def _later(self, value):
        d = defer.Deferred()
        self.waiting.append((d, value))
        return d

    def add(self, sid, data, timeout):
        return self._later(self.inner.add(sid, data, timeout))

    def get(self, sid):
        return self._later(self.inner.get(sid))

    def have(self, sid):
        return self.inner.have(sid)  # answered at once

    def remove(self, sid):
        return self._later(self.inner.remove(sid))


def test_deferred_answers_keep_request_order(clock):
    store = SlowStore(clock)
    factory = CacheServerFactory(store)
    proto, transport = connect(factory)
    proto.dataReceived(
        wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(b"s", b"data", 9000))
        + wire.encode_request(2, wire.OP_HAVE, b"s")
        + wire.encode_request(3, wire.OP_GET, b"s")
        + wire.encode_request(4, wire.OP_HAVE, b"nope"))
    assert take(transport) == b""
    (d1, v1), (d3, v3) = store.waiting
    d3.callback(v3)
    assert take(transport) == b""
    d1.callback(v1)
    got = replies(take(transport))
    assert [(m.uid, m.payload) for m in got] == [(1, b"\x00"), (2, b"\x00"), (3, b"data"),
                                                (4, b"\x01")]
    # back on the fast path afterwards
    proto.dataReceived(wire.encode_request(5, wire.OP_HAVE, b"s"))
    assert [m.uid for m in replies(take(transport))] == [5]


def test_store_failure_closes_the_connection(clock):
    store = SlowStore(clock)
    factory = CacheServerFactory(store)
    proto, transport = connect(factory)
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"s"))
    store.waiting[0][0].errback(RuntimeError("database gone"))
    assert transport.disconnecting


def test_replies_ready_before_a_store_failure_are_written_before_the_close(clock):
    store = SlowStore(clock)
    proto, transport = connect(CacheServerFactory(store))
    proto.dataReceived(
        wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(b"s", b"data", 9000))
        + wire.encode_request(2, wire.OP_HAVE, b"s")
        + wire.encode_request(3, wire.OP_GET, b"s"))
    (d1, v1), (d3, _) = store.waiting
    d3.errback(RuntimeError("database gone"))
    assert take(transport) == b"" and not transport.disconnecting
    d1.callback(v1)
    assert [(m.uid, m.payload) for m in replies(take(transport))] == [(1, b"\x00"), (2, b"\x00")]
    assert transport.disconnecting


def test_nothing_is_written_after_a_store_failure_closes_the_connection(clock):
    store = SlowStore(clock)
    proto, transport = connect(CacheServerFactory(store))
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a")
                       + wire.encode_request(2, wire.OP_GET, b"b"))
    (d1, _), (d2, v2) = store.waiting
    d1.errback(RuntimeError("database gone"))
    assert transport.disconnecting
    d2.callback(v2)
    proto.dataReceived(wire.encode_request(3, wire.OP_HAVE, b"b"))
    assert take(transport) == b""


class FiredStore(SlowStore):
    """A store whose Deferreds have already fired when it returns them (a cache hit)."""

    def _later(self, value):
        return defer.succeed(value)

    def remove(self, sid):
        return defer.fail(RuntimeError("database gone"))


def test_already_fired_deferreds_keep_request_order(clock):
    proto, transport = connect(CacheServerFactory(FiredStore(clock)))
    proto.dataReceived(
        wire.encode_request(1, wire.OP_HAVE, b"s")
        + wire.encode_request(2, wire.OP_ADD, wire.encode_add_payload(b"s", b"data", 9000))
        + wire.encode_request(3, wire.OP_HAVE, b"s")
        + wire.encode_request(4, wire.OP_GET, b"s"))
    assert [(m.uid, m.payload) for m in replies(take(transport))] == [
        (1, b"\x01"), (2, b"\x00"), (3, b"\x00"), (4, b"data")]
    assert not transport.disconnecting


def test_an_already_failed_deferred_answers_what_came_before_then_closes(clock):
    proto, transport = connect(CacheServerFactory(FiredStore(clock)))
    proto.dataReceived(wire.encode_request(1, wire.OP_HAVE, b"s")
                       + wire.encode_request(2, wire.OP_REMOVE, b"s")
                       + wire.encode_request(3, wire.OP_HAVE, b"s"))
    assert [m.uid for m in replies(take(transport))] == [1]
    assert transport.disconnecting


def test_malformed_input_behind_a_pending_answer_closes_once_it_is_written(clock):
    store = SlowStore(clock)
    proto, transport = connect(CacheServerFactory(store))
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"s") + b"\x00\x12\x00\x00")
    assert not transport.disconnecting
    proto.dataReceived(wire.encode_request(2, wire.OP_HAVE, b"s"))
    [(d1, v1)] = store.waiting
    d1.callback(v1)
    assert [(m.uid, m.payload) for m in replies(take(transport))] == [(1, b"\x01")]
    assert transport.disconnecting


def test_closing_logs_the_peer_as_host_and_port(clock):
    from twisted.internet.address import IPv4Address
    from twisted.logger import capturedLogs
    proto = CacheServerFactory(SessionStore(clock)).buildProtocol(None)
    proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567)))
    with capturedLogs() as events:
        proto.dataReceived(b"\x00\x12\x00\x00")
    [event] = events
    assert event["peer"] == "10.1.2.3:4567"


def test_a_peer_that_stops_reading_pauses_the_connection(clock):
    factory = CacheServerFactory(SessionStore(clock))
    proto, transport = connect(factory)
    assert transport.producer is proto
    proto.pauseProducing()
    assert transport.producerState == "paused"
    proto.resumeProducing()
    assert transport.producerState == "producing"


@pytest.fixture
def log_lines():
    lines = []

    def observer(event):
        if event.get("log_namespace", "").startswith("distcache.server") and "line" in event:
            lines.append(event["line"])

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_activity_line_once_a_second_when_changed(clock, log_lines):
    factory = CacheServerFactory(SessionStore(clock), clock=clock)
    factory.startFactory()
    proto, transport = connect(factory)
    clock.advance(1)
    assert log_lines == []
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(b"s", b"d", 9000)))
    proto.dataReceived(wire.encode_request(2, wire.OP_GET, b"s"))
    assert log_lines == []
    clock.advance(1)
    assert log_lines == ["Info, total operations =       2  (+     2), total sessions =     1  (+  1)"]
    clock.advance(1)
    assert len(log_lines) == 1
    proto.dataReceived(wire.encode_request(3, wire.OP_REMOVE, b"s"))
    clock.advance(1)
    assert log_lines[-1] == "Info, total operations =       3  (+     1), total sessions =     0  (-  1)"
    factory.stopFactory()


def test_activity_line_every_progress_operations(clock, log_lines):
    factory = CacheServerFactory(SessionStore(clock), progress=3, clock=clock)
    proto, transport = connect(factory)
    for uid in range(7):
        proto.dataReceived(wire.encode_request(uid, wire.OP_HAVE, b"s"))
    assert len(log_lines) == 2
    assert log_lines[1].startswith("Info, total operations =       6  (+     3)")


def test_connection_count(clock):
    factory = CacheServerFactory(SessionStore(clock))
    a, _ = connect(factory)
    b, _ = connect(factory)
    assert factory.connections == 2
    a.connectionLost(None)
    assert factory.connections == 1


def test_idle_connections_close_after_the_idle_timeout_and_no_sooner(clock):
    factory = CacheServerFactory(SessionStore(clock), clock=clock, idle_timeout=10)
    factory.startFactory()
    quiet, _ = connect(factory)
    quiet_transport = quiet.transport
    talking, talking_transport = connect(factory)
    for _ in range(9):  # 9.9 s: within the timeout, nothing closes
        clock.advance(1.1)
        talking.dataReceived(wire.encode_request(1, wire.OP_HAVE, b"x"))
    assert not quiet_transport.disconnecting
    for _ in range(6):  # 15.9 s quiet: past one and a half timeouts
        clock.advance(1)
    assert quiet_transport.disconnecting and factory.idle_closed == 1
    assert not talking_transport.disconnecting
    factory.stopFactory()


def test_a_connection_still_being_answered_is_not_idle(clock):
    factory = CacheServerFactory(SessionStore(clock), clock=clock, idle_timeout=10)
    factory.startFactory()
    proto, transport = connect(factory)
    proto.pauseProducing()  # the peer does not read its replies
    clock.pump([1] * 60)
    assert not transport.disconnecting
    proto.resumeProducing()
    clock.pump([1] * 16)
    assert transport.disconnecting
    factory.stopFactory()


def test_an_idle_timeout_of_zero_never_closes(clock):
    factory = CacheServerFactory(SessionStore(clock), clock=clock, idle_timeout=0)
    factory.startFactory()
    proto, transport = connect(factory)
    clock.advance(10 ** 6)
    assert not transport.disconnecting
    factory.stopFactory()


def test_malformed_connections_are_logged_in_full_only_for_the_first_few(clock):
    from twisted.logger import Logger, formatEvent
    events = []
    factory = CacheServerFactory(SessionStore(clock), clock=clock)
    factory.warnings.log = Logger(namespace="test", observer=events.append)
    for _ in range(20):
        proto, transport = connect(factory)
        proto.dataReceived(b"\xff" * 32)
        assert transport.disconnecting
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 5 and all(line.startswith("closing connection from") for line in lines)
    clock.advance(60)
    assert formatEvent(events[-1]) == ("15 more malformed connections in the last 60 s "
                                       "(not logged one by one)")
    assert factory.protocol_errors == 20
