"""dc_client's multiplexing, tested on in-memory transports and a fake clock."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent

from distcache import wire
from distcache.proxy import (LinkState, LocalFactory, LocalProtocol, ServerLink,
                             UpstreamFactory, UID_MASK)

from proxy_support import MemoryServer, multiframe_add, requests_and_replies


class Proxy:
    """A dc_client with in-memory transports: any number of local clients, one upstream."""

    def __init__(self, idle: float = 0.0):
        self.clock = task.Clock()
        self.link = ServerLink(clock=self.clock, server="UNIX:/run/dc_server")
        self.factory = LocalFactory(self.link, clock=self.clock, idle=idle)
        self.upstream = None
        self.up_transport = None
        self._server_decoder = None

    def local(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def connect_upstream(self, peer=None):
        self.upstream = UpstreamFactory(self.link).buildProtocol(None)
        self.up_transport = StringTransport(peerAddress=peer)
        self.upstream.makeConnection(self.up_transport)
        self._server_decoder = wire.Decoder(expect=False)

    def lose_upstream(self):
        self.upstream.connectionLost(Failure(ConnectionDone()))

    def server_requests(self):
        """The requests the server has received since the last call."""
        data = self.up_transport.value()
        self.up_transport.clear()
        return self._server_decoder.feed(data)

    def answer(self, requests, payload_of=lambda m: b"\x00"):
        self.upstream.dataReceived(b"".join(
            wire.encode_response(m.uid, m.op, payload_of(m)) for m in requests))


def replies(transport):
    return wire.Decoder(expect=True).feed(transport.value())


def gone(proto):
    proto.connectionLost(Failure(ConnectionDone()))


def test_server_down_answers_like_the_c_client():
    requests, expected = requests_and_replies("distcache-c-client-server-down.log")
    proxy = Proxy()
    proto, transport = proxy.local()
    for request, reply in zip(requests, expected):
        transport.clear()
        proto.dataReceived(request)
        assert transport.value() == reply
    assert proxy.link.answered_unreachable == len(requests)


def test_golden_replies_pass_through_with_local_uids_restored():
    requests, expected = requests_and_replies("distcache-c-golden.log")
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    for request, reply in zip(requests, expected):
        transport.clear()
        proto.dataReceived(request)
        (forwarded,) = proxy.server_requests()
        local = wire.Decoder().feed(request)[0]
        assert forwarded.op == local.op and forwarded.payload == local.payload
        server_reply = wire.Decoder(expect=True).feed(reply)[0]
        proxy.upstream.dataReceived(
            wire.encode_response(forwarded.uid, forwarded.op, server_reply.payload))
        assert transport.value() == reply


def test_each_request_gets_a_fresh_upstream_uid():
    proxy = Proxy()
    proxy.connect_upstream()
    a, ta = proxy.local()
    b, tb = proxy.local()
    a.dataReceived(wire.encode_request(7, wire.OP_HAVE, b"x") * 2)
    b.dataReceived(wire.encode_request(7, wire.OP_GET, b"y"))
    forwarded = proxy.server_requests()
    assert len({m.uid for m in forwarded}) == 3
    proxy.answer(forwarded, lambda m: m.payload * 2)
    assert [(m.uid, m.op, m.payload) for m in replies(ta)] == [(7, wire.OP_HAVE, b"xx")] * 2
    assert [(m.uid, m.op, m.payload) for m in replies(tb)] == [(7, wire.OP_GET, b"yy")]


def test_replies_keep_the_local_order_whatever_the_upstream_order():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    proto.dataReceived(b"".join(wire.encode_request(uid, wire.OP_GET, b"%d" % uid)
                                for uid in (10, 11, 12)))
    first, second, third = proxy.server_requests()
    proxy.answer([third, second], lambda m: m.payload)
    assert transport.value() == b""
    proxy.answer([first], lambda m: m.payload)
    assert [(m.uid, m.payload) for m in replies(transport)] == [
        (10, b"10"), (11, b"11"), (12, b"12")]


def test_a_multiframe_add_is_reframed_unchanged_apart_from_the_uid():
    vector = multiframe_add()
    (message,) = wire.Decoder().feed(vector)
    proxy = Proxy()
    proxy.connect_upstream()
    proto, _ = proxy.local()
    for i in range(0, len(vector), 1000):
        proto.dataReceived(vector[i:i + 1000])
    data = proxy.up_transport.value()
    (forwarded,) = wire.Decoder().feed(data)
    assert data == wire.encode_request(forwarded.uid, message.op, message.payload)
    assert len(wire.split_frames(data)) == 3


def test_in_flight_requests_get_disconnected_then_empty_replies_while_down():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, b"a" * 20)
                       + wire.encode_request(2, wire.OP_GET, b"id"))
    proxy.lose_upstream()
    assert transport.value() == (wire.encode_response(1, wire.OP_ADD, b"\x02")
                                 + wire.encode_response(2, wire.OP_GET, b"\x02"))
    transport.clear()
    proto.dataReceived(wire.encode_request(3, wire.OP_HAVE, b"id"))
    assert transport.value() == wire.encode_response(3, wire.OP_HAVE, b"")
    assert proxy.link.answered_disconnected == 2
    # The server is back: requests go upstream again.
    proxy.connect_upstream()
    transport.clear()
    proto.dataReceived(wire.encode_request(4, wire.OP_HAVE, b"id"))
    proxy.answer(proxy.server_requests(), lambda m: b"\x01")
    assert transport.value() == wire.encode_response(4, wire.OP_HAVE, b"\x01")


def test_a_client_hanging_up_mid_request_costs_nothing():
    proxy = Proxy()
    proxy.connect_upstream()
    leaver, leaver_transport = proxy.local()
    stayer, stayer_transport = proxy.local()
    leaver.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
    stayer.dataReceived(wire.encode_request(2, wire.OP_GET, b"b"))
    gone(leaver)
    leaver_transport.clear()
    proxy.answer(proxy.server_requests(), lambda m: m.payload)
    assert leaver_transport.value() == b""
    assert stayer_transport.value() == wire.encode_response(2, wire.OP_GET, b"b")
    assert proxy.link.dropped_replies == 1
    assert not proxy.link.in_flight
    assert not proxy.up_transport.disconnecting


def test_malformed_local_input_closes_that_client_only():
    proxy = Proxy()
    proxy.connect_upstream()
    bad, bad_transport = proxy.local()
    good, good_transport = proxy.local()
    # A valid request, then garbage: the request is still answered, then the close.
    bad.dataReceived(wire.encode_request(5, wire.OP_HAVE, b"x") + b"\x00\x12garbage-bytes")
    good.dataReceived(wire.encode_request(6, wire.OP_HAVE, b"y"))
    assert not bad_transport.disconnecting
    assert bad_transport.producerState == "paused"
    proxy.answer(proxy.server_requests())
    assert replies(bad_transport) == [wire.Message(True, 5, wire.OP_HAVE, b"\x00")]
    assert bad_transport.disconnecting
    assert not good_transport.disconnecting
    assert not proxy.up_transport.disconnecting
    good.dataReceived(wire.encode_request(7, wire.OP_HAVE, b"y"))
    proxy.answer(proxy.server_requests())
    assert [m.uid for m in replies(good_transport)] == [6, 7]


def test_a_response_from_a_local_client_is_malformed():
    proxy = Proxy()
    proto, transport = proxy.local()
    proto.dataReceived(wire.encode_response(1, wire.OP_GET, b"x"))
    assert transport.disconnecting and transport.value() == b""


def test_a_malformed_upstream_reply_drops_the_server_connection():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a")
                       + wire.encode_request(2, wire.OP_GET, b"b"))
    first, _second = proxy.server_requests()
    proxy.upstream.dataReceived(wire.encode_response(first.uid, first.op, b"A")
                                + wire.encode_response(999, wire.OP_GET, b"?"))
    assert proxy.up_transport.disconnecting
    assert not proxy.link.connected
    assert replies(transport) == [wire.Message(True, 1, wire.OP_GET, b"A"),
                                  wire.Message(True, 2, wire.OP_GET, b"\x02")]
    proxy.lose_upstream()  # the real connectionLost that follows changes nothing
    assert proxy.link.answered_disconnected == 1
    assert not transport.disconnecting


def test_garbage_from_the_server_drops_the_server_connection():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
    proxy.upstream.dataReceived(b"\x00\x99\x00\x00" + b"\x00" * 10)
    assert proxy.up_transport.disconnecting
    assert replies(transport) == [wire.Message(True, 1, wire.OP_GET, b"\x02")]


def test_upstream_uids_wrap_and_skip_those_in_flight():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, _ = proxy.local()
    proxy.link._next_uid = UID_MASK
    proto.dataReceived(wire.encode_request(1, wire.OP_HAVE, b"a"))   # takes 0xffffffff
    proxy.link._next_uid = UID_MASK
    proto.dataReceived(wire.encode_request(2, wire.OP_HAVE, b"b") * 2)
    assert [m.uid for m in proxy.server_requests()] == [UID_MASK, 0, 1]


def test_idle_local_connections_are_closed_on_the_clock():
    proxy = Proxy(idle=1.0)
    proxy.connect_upstream()
    proto, transport = proxy.local()
    proxy.clock.advance(0.6)
    proto.dataReceived(wire.encode_request(1, wire.OP_HAVE, b"a"))
    proxy.clock.advance(0.6)
    assert not transport.disconnecting
    # Outstanding requests keep it open however long the server takes.
    proxy.clock.advance(5)
    assert not transport.disconnecting
    proxy.answer(proxy.server_requests())
    proxy.clock.advance(0.9)
    assert not transport.disconnecting
    proxy.clock.advance(0.2)
    assert transport.disconnecting


def test_no_idle_limit_schedules_nothing():
    proxy = Proxy()
    proxy.local()
    assert proxy.clock.getDelayedCalls() == []


def test_a_closed_connection_cancels_its_idle_timer():
    proxy = Proxy(idle=1.0)
    proto, _ = proxy.local()
    gone(proto)
    assert proxy.clock.getDelayedCalls() == []


def test_a_client_not_reading_stops_being_read():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    assert transport.producer is proto and transport.streaming
    proto.pauseProducing()           # its send buffer is full
    assert transport.producerState == "paused"
    proto.resumeProducing()
    assert transport.producerState == "producing"


def test_a_client_pipelining_too_far_ahead_is_held_back_and_paused():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    limit = LocalProtocol.max_outstanding
    proto.dataReceived(b"".join(wire.encode_request(uid, wire.OP_HAVE, b"a")
                                for uid in range(limit * 3)))
    assert transport.producerState == "paused"
    for batch in range(3):
        requests = proxy.server_requests()
        assert len(requests) == limit
        assert len(proxy.link.in_flight) == limit
        proxy.answer(requests)
    assert proxy.server_requests() == []
    assert transport.producerState == "producing"
    assert [m.uid for m in replies(transport)] == list(range(limit * 3))


def test_held_requests_wait_while_the_client_is_not_reading():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    limit = LocalProtocol.max_outstanding
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a") * (limit + 5))
    proto.pauseProducing()  # its send buffer filled up
    proxy.answer(proxy.server_requests(), lambda m: b"x" * 1000)
    assert proxy.server_requests() == []
    proto.resumeProducing()
    assert len(proxy.server_requests()) == 5


def test_held_requests_are_answered_empty_when_the_server_goes_away():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    limit = LocalProtocol.max_outstanding
    proto.dataReceived(b"".join(wire.encode_request(uid, wire.OP_HAVE, b"a")
                                for uid in range(limit + 3)))
    proxy.lose_upstream()
    got = replies(transport)
    assert [m.payload for m in got] == [b"\x02"] * limit + [b""] * 3
    assert [m.uid for m in got] == list(range(limit + 3))
    assert transport.producerState == "producing"


def test_malformed_input_behind_held_requests_closes_after_all_are_answered():
    proxy = Proxy()
    proxy.connect_upstream()
    proto, transport = proxy.local()
    limit = LocalProtocol.max_outstanding
    proto.dataReceived(wire.encode_request(1, wire.OP_HAVE, b"a") * (limit + 1) + b"\xff" * 14)
    proxy.answer(proxy.server_requests())
    assert not transport.disconnecting
    proxy.answer(proxy.server_requests())
    assert transport.disconnecting
    assert len(replies(transport)) == limit + 1


def test_a_slow_server_pauses_every_local_client():
    proxy = Proxy()
    proxy.connect_upstream()
    a, ta = proxy.local()
    proxy.upstream.pauseProducing()
    b, tb = proxy.local()
    assert ta.producerState == tb.producerState == "paused"
    proxy.upstream.resumeProducing()
    assert ta.producerState == tb.producerState == "producing"
    proxy.upstream.pauseProducing()
    proxy.lose_upstream()
    assert ta.producerState == tb.producerState == "producing"


request_st = st.tuples(st.integers(0, UID_MASK), st.sampled_from([1, 2, 3]),
                       st.binary(max_size=80))


@settings(max_examples=60, deadline=None)
@given(plans=st.lists(st.lists(request_st, min_size=1, max_size=8), min_size=1, max_size=5),
       chunk=st.integers(1, 64), order=st.randoms(use_true_random=False))
def test_every_client_gets_its_own_replies_in_order(plans, chunk, order):
    """Any mix of clients, request splits and server reply orders routes replies right."""
    proxy = Proxy()
    proxy.connect_upstream()
    clients = [proxy.local() for _ in plans]
    for (proto, _), plan in zip(clients, plans):
        stream = b"".join(wire.encode_request(uid, op, payload) for uid, op, payload in plan)
        for i in range(0, len(stream), chunk):
            proto.dataReceived(stream[i:i + chunk])
    forwarded = proxy.server_requests()
    assert len({m.uid for m in forwarded}) == sum(map(len, plans))
    order.shuffle(forwarded)
    for m in forwarded:
        proxy.answer([m], lambda m: b"r" + m.payload)
    for (_, transport), plan in zip(clients, plans):
        assert [(m.uid, m.op, m.payload) for m in replies(transport)] == [
            (uid, op, b"r" + payload) for uid, op, payload in plan]
    assert not proxy.link.in_flight


def link_lines(events):
    """The rendered dc_client link lines among captured log events."""
    return [formatEvent(e) for e in events
            if e.get("log_namespace", "").startswith("distcache.upstream")]


def started(proxy, *servers):
    proxy.link.retry = 5.0
    proxy.link.start(servers)
    return servers


def test_an_outage_is_one_line_a_reminder_every_five_minutes_and_one_line_when_over():
    proxy = Proxy()
    server = MemoryServer("/run/dc_server.sock")
    with capturedLogs() as events:
        started(proxy, server)
        proto, transport = proxy.local()
        proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
        proxy.clock.advance(60)
        server.up = False
        server.drop()
        for _ in range(12 * 12):           # twelve minutes of attempts, one every 5 s
            proxy.clock.advance(5)
            proto.dataReceived(wire.encode_request(2, wire.OP_HAVE, b"a"))
        server.up = True
        proxy.clock.advance(5)
    lines = link_lines(events)
    assert lines == [
        "connected to the server at UNIX:/run/dc_server.sock",
        "lost the server at UNIX:/run/dc_server.sock (Connection was closed cleanly.); "
        "1 requests in flight answered DISCONNECTED, later ones empty until it is back",
        "the server at UNIX:/run/dc_server is still unreachable after 5m00s (Connection was "
        "refused by other side.); 59 requests answered empty so far",
        "the server at UNIX:/run/dc_server is still unreachable after 10m00s (Connection was "
        "refused by other side.); 119 requests answered empty so far",
        "the server at UNIX:/run/dc_server.sock is back after 12m05s; 144 requests were "
        "answered empty meanwhile",
    ]
    # One attempt at once after the loss, then one per retry period.
    assert server.attempts == 1 + 1 + 12 * 12 + 1
    assert proxy.link.state is LinkState.CONNECTED


def test_a_server_never_reached_is_one_line_and_a_stop_none():
    proxy = Proxy()
    server = MemoryServer("/run/dc_server.sock", up=False)
    with capturedLogs() as events:
        started(proxy, server)
        for _ in range(50):
            proxy.clock.advance(5)
        proxy.link.stop()
        proxy.clock.advance(50)
    assert link_lines(events) == [
        "cannot reach the server at UNIX:/run/dc_server (Connection was refused by other "
        "side.); answering requests empty until it is back"]
    assert server.attempts == 51
    assert proxy.link.state is LinkState.STOPPED
    assert not proxy.clock.getDelayedCalls()


def test_a_malformed_reply_is_one_line_and_the_close_that_follows_none():
    proxy = Proxy()
    proxy.connect_upstream(IPv4Address("TCP", "10.0.0.5", 9001))
    proto, transport = proxy.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
    with capturedLogs() as events:
        proxy.upstream.dataReceived(b"\xff" * 14)
        proxy.upstream.dataReceived(b"\xff" * 14)
        proxy.lose_upstream()
    [line] = link_lines(events)
    assert line.startswith("dropped the server connection to 10.0.0.5:9001: malformed reply")
    assert proxy.link.state is LinkState.AWAY


def test_a_dropped_server_is_tried_again_once_its_connection_has_closed():
    proxy = Proxy()
    server = MemoryServer("/run/dc_server.sock")
    started(proxy, server)
    proxy.clock.advance(60)
    server.protocol.dataReceived(b"\xff" * 14)
    assert server.transport.disconnecting and server.attempts == 1
    server.drop()
    assert server.attempts == 2 and proxy.link.state is LinkState.CONNECTED


def test_the_service_says_nothing_per_attempt_or_connection(tmp_path):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.internet.error import ConnectionRefusedError
    from distcache.client_tap import ClientProxyService
    reactor = MemoryReactorClock()
    service = ClientProxyService(f"UNIX:{tmp_path}/l", "IP:127.0.0.1:9", retry_ms=5000,
                                 reactor=reactor)
    with capturedLogs() as events:
        service.privilegedStartService()
        service.startService()
        for _ in range(61):
            factory = reactor.tcpClients[-1][2]
            factory.clientConnectionFailed(None, ConnectionRefusedError())
            reactor.advance(5)
        service.stopService()
    assert len(reactor.tcpClients) == 62
    lines = [formatEvent(e) for e in events]
    assert [line.split(" (")[0] for line in link_lines(events)] == [
        "cannot reach the server at IP:127.0.0.1:9",
        "the server at IP:127.0.0.1:9 is still unreachable after 5m00s"]
    # Besides the link's lines only the service's own start-up lines: none per attempt.
    others = [line for line in lines if line not in link_lines(events)]
    assert len(others) == 3 and all("127.0.0.1:9" not in line or "started" in line
                                    for line in others), others


def test_every_input_is_specified_in_every_state():
    from distcache.upstream import _INPUTS, _TABLE
    for state in LinkState:
        for name in _INPUTS:
            next_state, outputs = _TABLE[state, name]
            assert isinstance(next_state, LinkState)
            assert all(callable(getattr(ServerLink, output)) for output in outputs)


@settings(max_examples=150, deadline=None)
@given(garbage=st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=6))
def test_random_local_input_never_disturbs_the_others(garbage):
    proxy = Proxy()
    proxy.connect_upstream()
    noisy, noisy_transport = proxy.local()
    good, good_transport = proxy.local()
    for chunk in garbage:
        noisy.dataReceived(chunk)
        good.dataReceived(wire.encode_request(5, wire.OP_HAVE, b"x"))
    for m in proxy.server_requests():
        proxy.answer([m])
    assert [m.uid for m in replies(good_transport)] == [5] * len(garbage)
    assert not good_transport.disconnecting and not proxy.up_transport.disconnecting
    # Whatever the noise decoded to was answered; the rest closed that connection.
    wire.Decoder(expect=True).feed(noisy_transport.value())


def test_malformed_local_connections_are_logged_in_full_only_for_the_first_few():
    proxy = Proxy()
    proxy.connect_upstream()
    with capturedLogs() as events:
        for _ in range(12):
            bad, _ = proxy.local()
            bad.dataReceived(b"\x00\x12garbage-bytes")
        proxy.clock.advance(60)
    lines = [formatEvent(e) for e in events if "local connection" in formatEvent(e)]
    assert len(lines) == 6 and all(line.startswith("closing local") for line in lines[:5])
    assert lines[5] == ("7 more malformed local connections in the last 60 s "
                        "(not logged one by one)")
