"""dc_client end to end: real unix sockets, the in-process dc_server, the reactor's clock."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

from distcache import wire
from distcache.client_tap import ClientProxyService
from distcache.server import CacheServerFactory
from distcache.store import SessionStore

from proxy_support import collector_factory, requests_and_replies

RETRY_MS = 150


class TrackingServerFactory(CacheServerFactory):
    """dc_server's factory, remembering its connections so a test can kill them."""

    def __init__(self, store, clock):
        super().__init__(store, clock=clock)
        self.protocols = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol


class Rig:
    """A dc_server and a dc_client on unix sockets in a private directory."""

    def __init__(self, reactor, server_up=True, listen_backlog=None):
        self.reactor = reactor
        self.dir = tempfile.mkdtemp(prefix="dcc", dir="/tmp")
        self.server_path = f"{self.dir}/server"
        self.local_path = f"{self.dir}/local"
        self.server_port = None
        self.server_factory = None
        if server_up:
            self.start_server()
        listen = f"UNIX:{self.local_path}"
        if listen_backlog:
            listen = f"unix:{self.local_path}:backlog={listen_backlog}"
        self.proxy = ClientProxyService(listen, f"UNIX:{self.server_path}", retry_ms=RETRY_MS,
                                        reactor=reactor)
        self.proxy.privilegedStartService()
        self.proxy.startService()
        self.clients = []

    @property
    def link(self):
        return self.proxy.link

    def start_server(self):
        self.server_factory = TrackingServerFactory(SessionStore(self.reactor, 4096),
                                                    self.reactor)
        self.server_port = self.reactor.listenUNIX(self.server_path, self.server_factory)

    @defer.inlineCallbacks
    def kill_server(self):
        """Stop listening and cut every server connection, as a killed process would."""
        yield self.server_port.stopListening()
        for protocol in self.server_factory.protocols:
            protocol.transport.abortConnection()
        self.server_factory.stopFactory()
        self.server_port = None

    @defer.inlineCallbacks
    def connect(self, n=1):
        endpoint = UNIXClientEndpoint(self.reactor, self.local_path)
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
        yield self.proxy.stopService()
        if self.server_port is not None:
            yield self.kill_server()
        # Let the aborted connections finish closing before the next test.
        yield task.deferLater(self.reactor, 0.01, lambda: None)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def reactor():
    from twisted.internet import reactor
    return reactor


def have(uid, session_id=b"sess"):
    return wire.encode_request(uid, wire.OP_HAVE, session_id)


@pytest_twisted.inlineCallbacks
def test_golden_vector_through_dc_client_byte_for_byte(reactor):
    requests, expected = requests_and_replies("distcache-c-golden.log")
    rig = Rig(reactor)
    try:
        yield rig.until(lambda: rig.link.connected)
        (client,) = yield rig.connect()
        for n, request in enumerate(requests, 1):
            client.transport.write(request)
            yield client.wait_replies(n)
        assert bytes(client.received) == b"".join(expected)
        # The sequence leaves the cache as it found it, so it can run again, pipelined
        # in one write on a second connection: the same bytes, in order.
        (piped,) = yield rig.connect()
        piped.transport.write(b"".join(requests))
        yield piped.wait_replies(len(requests))
        assert bytes(piped.received) == b"".join(expected)
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_server_unreachable_answers_match_the_c_client(reactor):
    requests, expected = requests_and_replies("distcache-c-client-server-down.log")
    rig = Rig(reactor, server_up=False)
    try:
        (client,) = yield rig.connect()
        client.transport.write(b"".join(requests))
        yield client.wait_replies(len(requests))
        assert bytes(client.received) == b"".join(expected)
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_server_killed_and_restarted_under_load(reactor):
    rig = Rig(reactor)
    try:
        yield rig.until(lambda: rig.link.connected)
        clients = yield rig.connect(40)
        per_client = 5
        # Hold the server's reading so the requests are surely in flight when it dies.
        for protocol in rig.server_factory.protocols:
            protocol.transport.pauseProducing()
        for client in clients:
            client.transport.write(b"".join(have(uid) for uid in range(per_client)))
        yield rig.until(lambda: len(rig.link.in_flight) == 40 * per_client)
        yield rig.kill_server()
        results = yield defer.gatherResults([c.wait_replies(per_client) for c in clients])
        for replies in results:
            assert [(m.uid, m.payload) for m in replies] == [
                (uid, b"\x02") for uid in range(per_client)]
        # While it is down, every request is answered at once, empty.
        for client in clients:
            client.transport.write(have(100))
        yield defer.gatherResults([c.wait_replies(per_client + 1) for c in clients])
        assert {c.replies[-1] for c in clients} == {wire.Message(True, 100, wire.OP_HAVE, b"")}
        # Back up: after one retry period the same connections are served again.
        rig.start_server()
        yield rig.until(lambda: rig.link.connected, timeout=RETRY_MS / 1000 * 5)
        for client in clients:
            client.transport.write(have(200))
        yield defer.gatherResults([c.wait_replies(per_client + 2) for c in clients])
        assert {c.replies[-1] for c in clients} == {wire.Message(True, 200, wire.OP_HAVE, b"\x01")}
        assert rig.link.answered_disconnected == 40 * per_client
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_a_thousand_local_clients_at_once(reactor):
    rig = Rig(reactor, listen_backlog=1024)
    try:
        yield rig.until(lambda: rig.link.connected)
        clients = yield rig.connect(1000)
        for n, client in enumerate(clients):
            sid = b"session-%04d" % n
            client.transport.write(
                wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(sid, b"d%d" % n, 60000))
                + wire.encode_request(2, wire.OP_GET, sid))
        results = yield defer.gatherResults([c.wait_replies(2) for c in clients])
        for n, replies in enumerate(results):
            assert replies == [wire.Message(True, 1, wire.OP_ADD, b"\x00"),
                               wire.Message(True, 2, wire.OP_GET, b"d%d" % n)]
        assert len(rig.link.locals) == 1000
        assert not rig.link.in_flight
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_a_client_hanging_up_mid_request(reactor):
    rig = Rig(reactor)
    try:
        yield rig.until(lambda: rig.link.connected)
        leaver, stayer = yield rig.connect(2)
        for protocol in rig.server_factory.protocols:
            protocol.transport.pauseProducing()
        leaver.transport.write(have(1))
        yield rig.until(lambda: len(rig.link.in_flight) == 1)
        leaver.transport.loseConnection()
        yield leaver.lost_d
        yield rig.until(lambda: len(rig.link.locals) == 1)
        for protocol in rig.server_factory.protocols:
            protocol.transport.resumeProducing()
        stayer.transport.write(have(2))
        replies = yield stayer.wait_replies(1)
        assert replies == [wire.Message(True, 2, wire.OP_HAVE, b"\x01")]
        assert rig.link.dropped_replies == 1 and rig.link.connected
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_malformed_local_input_closes_that_client_only(reactor):
    rig = Rig(reactor)
    try:
        yield rig.until(lambda: rig.link.connected)
        bad, good = yield rig.connect(2)
        good.transport.write(have(1))
        bad.transport.write(have(9) + b"\x00\x11\x00\x00\x07 not a frame header")
        good.transport.write(have(2))
        yield bad.lost_d
        assert bad.replies == [wire.Message(True, 9, wire.OP_HAVE, b"\x01")]
        replies = yield good.wait_replies(2)
        assert [m.uid for m in replies] == [1, 2]
        assert rig.link.connected
    finally:
        yield rig.close()


@pytest_twisted.inlineCallbacks
def test_golden_vector_over_tcp_on_both_legs(reactor):
    from twisted.internet.endpoints import TCP4ClientEndpoint
    requests, expected = requests_and_replies("distcache-c-golden.log")
    server = CacheServerFactory(SessionStore(reactor, 64), clock=reactor)
    server_port = reactor.listenTCP(0, server, interface="127.0.0.1")
    proxy = ClientProxyService("IP:127.0.0.1:0", f"IP:127.0.0.1:{server_port.getHost().port}",
                               retry_ms=RETRY_MS, reactor=reactor)
    proxy.startService()
    client = None
    try:
        while not proxy.link.connected:
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert proxy.link.upstream.transport.getTcpNoDelay()
        port = list(proxy)[0].port.getHost().port
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(collector_factory())
        client.transport.write(b"".join(requests))
        yield client.wait_replies(len(requests))
        assert bytes(client.received) == b"".join(expected)
    finally:
        if client is not None:
            client.transport.abortConnection()
        yield proxy.stopService()
        yield server_port.stopListening()
        server.stopFactory()
