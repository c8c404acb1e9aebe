"""dc_snoop end to end on unix sockets: bytes compared on both sides, report lines checked."""

from __future__ import annotations

import random
import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import UNIXClientEndpoint

from distcache import wire
from distcache.server import CacheServerFactory
from distcache.snoop_tap import SnoopService
from distcache.store import SessionStore

from proxy_support import collector_factory, requests_and_replies


class RecordingServer(protocol.Protocol):
    """Records what reaches the server and sends back a fixed blob, then closes on request."""

    def connectionMade(self):
        self.received = bytearray()
        self.factory.connections.append(self)
        self.transport.write(self.factory.blob)

    def dataReceived(self, data):
        self.received += data


class RecordingFactory(protocol.Factory):
    protocol = RecordingServer

    def __init__(self, blob):
        self.blob = blob
        self.connections = []


class SnoopRig:
    def __init__(self, reactor, server_factory=None):
        self.reactor = reactor
        self.dir = tempfile.mkdtemp(prefix="dcs", dir="/tmp")
        self.lines = []
        self.server_port = None
        if server_factory is not None:
            self.server_port = reactor.listenUNIX(f"{self.dir}/server", server_factory)
        self.snoop = SnoopService(f"UNIX:{self.dir}/snoop", f"UNIX:{self.dir}/server",
                                  reactor=reactor, report=self.lines.append)
        self.snoop.privilegedStartService()
        self.snoop.startService()
        self.clients = []

    @defer.inlineCallbacks
    def connect(self, n=1):
        endpoint = UNIXClientEndpoint(self.reactor, f"{self.dir}/snoop")
        made = yield defer.gatherResults([endpoint.connect(collector_factory())
                                          for _ in range(n)])
        self.clients += made
        return made

    @defer.inlineCallbacks
    def until(self, predicate, timeout=5.0):
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                raise AssertionError("condition not reached in time")
            yield task.deferLater(self.reactor, 0.01, lambda: None)
            waited += 0.01

    @defer.inlineCallbacks
    def close(self):
        for client in self.clients:
            client.transport.abortConnection()
        yield self.snoop.stopService()
        if self.server_port is not None:
            yield self.server_port.stopListening()
        yield task.deferLater(self.reactor, 0.01, lambda: None)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def reactor():
    from twisted.internet import reactor
    return reactor


@pytest_twisted.inlineCallbacks
def test_golden_session_through_snoop_and_its_report(reactor):
    requests, expected = requests_and_replies("distcache-c-golden.log")
    server = CacheServerFactory(SessionStore(reactor, 64), clock=reactor)
    rig = SnoopRig(reactor, server)
    try:
        (client,) = yield rig.connect()
        client.transport.write(b"".join(requests))
        yield client.wait_replies(len(requests))
        assert bytes(client.received) == b"".join(expected)
        client.transport.loseConnection()
        yield rig.until(lambda: any("closed by" in line for line in rig.lines))
        assert rig.lines[0].startswith("pair 1 open: client ")
        messages = [line for line in rig.lines if " uid=" in line]
        assert len(messages) == 16
        assert 'pair 1 C>S uid=4 GET request 9 bytes id="sess-0001"' in messages
        assert "pair 1 S>C uid=2 ADD response 1 byte result=MATCHING_SESSION" in messages
        assert rig.lines[-1].startswith("pair 1 closed by the client after ")
        assert rig.lines[-1].endswith("C>S 236 bytes in 8 messages; S>C 137 bytes in 8 messages")
    finally:
        yield rig.close()
        server.stopFactory()


@pytest_twisted.inlineCallbacks
def test_arbitrary_bytes_cross_unchanged_both_ways_on_many_pairs(reactor):
    rng = random.Random(1234)
    blob = rng.randbytes(150_000)
    server = RecordingFactory(blob)
    rig = SnoopRig(reactor, server)
    try:
        clients = yield rig.connect(5)
        sent = []
        for client in clients:
            # A valid request first, then noise: decoding fails, forwarding does not.
            data = (wire.encode_request(1, wire.OP_HAVE, b"ok")
                    + rng.randbytes(100_000))
            sent.append(data)
            for i in range(0, len(data), 8192):
                client.transport.write(data[i:i + 8192])
        yield rig.until(lambda: len(server.connections) == 5 and all(
            len(c.received) == 100_000 + 16 for c in server.connections)
            and all(len(c.received) == len(blob) for c in clients))
        assert sorted(bytes(c.received) for c in server.connections) == sorted(sent)
        assert all(bytes(c.received) == blob for c in clients)
        # The server side closes first this time.
        for connection in server.connections:
            connection.transport.loseConnection()
        yield defer.gatherResults([c.lost_d for c in clients])
        yield rig.until(lambda: sum("closed by the server" in line for line in rig.lines) == 5)
        for n in range(1, 6):
            mine = [line for line in rig.lines if line.startswith(f"pair {n} ")]
            assert f'pair {n} C>S uid=1 HAVE request 2 bytes id="ok"' in mine
            assert any(line.startswith(f"pair {n} C>S malformed after 1 messages")
                       for line in mine)
            assert any(line.startswith(f"pair {n} S>C malformed after 0 messages")
                       for line in mine)
            assert mine[-1].endswith("C>S 100016 bytes in 1 messages (undecoded after the "
                                     "fault); S>C 150000 bytes in 0 messages (undecoded "
                                     "after the fault)")
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_an_unreachable_server_closes_the_client_and_says_why(reactor):
    rig = SnoopRig(reactor)
    try:
        (client,) = yield rig.connect()
        client.transport.write(wire.encode_request(1, wire.OP_GET, b"x"))
        yield client.lost_d
        assert rig.lines[0].startswith("pair 1 cannot reach the server: ")
        assert rig.lines[-1].startswith("pair 1 closed for want of a server after ")
        assert rig.lines[-1].endswith("S>C 0 bytes in 0 messages")
        assert len(rig.lines) == 2
    finally:
        yield rig.close()
