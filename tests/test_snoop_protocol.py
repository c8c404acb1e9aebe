"""dc_snoop's protocols on in-memory transports, with an endpoint the test completes."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from distcache import snoop, wire
from distcache.snoop import SnoopFactory, address_text


class HeldEndpoint:
    """A client endpoint whose connection attempts the test completes or fails."""

    def __init__(self):
        self.attempts = []
        self.cancellable = True

    def connect(self, factory):
        d = defer.Deferred(None if self.cancellable else lambda d: None)
        self.attempts.append((factory, d))
        return d

    def succeed(self):
        factory, d = self.attempts.pop(0)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=UNIXAddress("/run/scache"))
        protocol.makeConnection(transport)
        if not d.called:  # a cancelled attempt has already failed
            d.callback(protocol)
        return protocol, transport

    def fail(self):
        _factory, d = self.attempts.pop(0)
        d.errback(Failure(ConnectionRefusedError()))


class Snoop:
    def __init__(self):
        self.endpoint = HeldEndpoint()
        self.lines = []
        self.factory = SnoopFactory(self.endpoint, clock=task.Clock(), report=self.lines.append)

    def accept(self):
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 40000))
        protocol.makeConnection(transport)
        return protocol, transport


def closed(protocol):
    protocol.connectionLost(Failure(ConnectionDone()))


def test_bytes_before_the_server_answers_are_kept_and_sent_in_order():
    s = Snoop()
    client, client_t = s.accept()
    assert client_t.producerState == "paused"
    request = wire.encode_request(1, wire.OP_HAVE, b"id")
    client.dataReceived(request[:5])
    client.dataReceived(request[5:])
    server, server_t = s.endpoint.succeed()
    assert server_t.value() == request
    assert client_t.producerState == "producing"
    # Each side is the other's producer: a full buffer on one side stops reading the other.
    assert server_t.producer is client_t and client_t.producer is server_t
    assert s.lines == ['pair 1 C>S uid=1 HAVE request 2 bytes id="id"',
                       "pair 1 open: client 10.0.0.7:40000 <-> server UNIX:/run/scache"]


def test_both_directions_are_forwarded_unchanged_and_reported_at_close():
    s = Snoop()
    client, client_t = s.accept()
    server, server_t = s.endpoint.succeed()
    junk = b"\x00\x11\x00\x00\x05" + bytes(range(200))
    client.dataReceived(junk)
    reply = wire.encode_response(9, wire.OP_GET, b"\x01")
    server.dataReceived(reply)
    assert server_t.value() == junk and client_t.value() == reply
    closed(client)
    assert server_t.disconnecting
    closed(server)  # the close that follows adds nothing
    assert s.lines[1] == "pair 1 C>S malformed after 0 messages: is_response byte 5; " \
                         "the rest is forwarded without decoding"
    assert s.lines[2] == "pair 1 S>C uid=9 GET response 1 byte result=NOTOK (miss)"
    assert s.lines[3] == ("pair 1 closed by the client after 0.000s: C>S 205 bytes in 0 "
                          "messages (undecoded after the fault); S>C 15 bytes in 1 messages")
    assert len(s.lines) == 4


def test_the_server_closing_first_closes_the_client():
    s = Snoop()
    client, client_t = s.accept()
    server, _ = s.endpoint.succeed()
    server.dataReceived(wire.encode_response(1, wire.OP_GET, b"partial")[:10])
    closed(server)
    assert client_t.disconnecting
    assert s.lines[-1].endswith("S>C 10 bytes in 0 messages and 10 bytes of an unfinished message")
    assert "closed by the server" in s.lines[-1]


def test_a_client_leaving_cancels_the_server_connection_attempt():
    s = Snoop()
    client, _ = s.accept()
    [(_factory, attempt)] = s.endpoint.attempts
    closed(client)
    assert attempt.called  # cancelled: nothing is left connecting for nobody
    assert len(s.lines) == 1 and s.lines[0].startswith("pair 1 closed by the client")


def test_a_server_connection_made_for_a_client_already_gone_is_closed():
    s = Snoop()
    s.endpoint.cancellable = False  # an endpoint that connects despite the cancel
    client, _ = s.accept()
    closed(client)
    server, server_t = s.endpoint.succeed()
    assert server_t.disconnecting
    assert len(s.lines) == 1


def test_an_unreachable_server():
    s = Snoop()
    client, client_t = s.accept()
    s.endpoint.fail()
    assert client_t.disconnecting
    assert s.lines[0].startswith("pair 1 cannot reach the server: Connection was refused")
    closed(client)
    assert len(s.lines) == 2


def test_pairs_are_numbered():
    s = Snoop()
    s.accept(), s.accept(), s.accept()
    assert s.factory.pairs == 3


def test_a_failing_analyser_never_stops_the_forwarding(monkeypatch):
    s = Snoop()
    client, _ = s.accept()
    server, server_t = s.endpoint.succeed()

    def broken(self, data):
        raise RuntimeError("boom")

    monkeypatch.setattr(snoop.StreamAnalyser, "feed", broken)
    client.dataReceived(b"abc")
    client.dataReceived(b"def")
    assert server_t.value() == b"abcdef"
    assert s.lines[-1] == "pair 1 C>S analysis stopped: RuntimeError('boom')"
    assert sum("analysis stopped" in line for line in s.lines) == 1
    monkeypatch.undo()
    closed(client)
    assert s.lines[-1].endswith("C>S 6 bytes in 0 messages (undecoded after the fault); "
                                "S>C 0 bytes in 0 messages")


def test_addresses_read_well():
    assert address_text(IPv4Address("TCP", "127.0.0.1", 9001)) == "127.0.0.1:9001"
    assert address_text(IPv6Address("TCP", "::1", 9001)) == "[::1]:9001"
    assert address_text(UNIXAddress(b"/tmp/scache")) == "UNIX:/tmp/scache"
    assert address_text(UNIXAddress(None)) == "UNIX (unnamed)"
