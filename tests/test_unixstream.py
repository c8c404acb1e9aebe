"""UNIX stream endpoints read with recv: same bytes, same lifecycle, same listening rules."""

from __future__ import annotations

import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads, unix
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from distcache import address, unixstream
from polling import poll_until as poll


class Collect(Protocol):
    """Keeps what arrives; echoes it when ``echo`` is set; records how it ended."""

    echo = False

    def __init__(self):
        self.data = bytearray()
        self.reads = 0
        self.ended = defer.Deferred()
        self.made = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.reads += 1
        self.data += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason):
        self.ended.callback((reason,))  # a Failure passed alone would errback


class Echo(Collect):
    echo = True


def listen(path, protocol=Collect):
    built = []

    def build():
        p = protocol()
        built.append(p)
        return p

    factory = Factory.forProtocol(build)
    factory.noisy = False
    ep = address.server_endpoint(reactor, address.parse(f"UNIX:{path}"))
    return ep.listen(factory), built


@pytest_twisted.inlineCallbacks
def test_accepted_connections_read_with_recv_and_get_every_byte(sockdir):
    path = os.path.join(sockdir, "s")
    port, built = listen(path)
    port = yield port
    try:
        assert isinstance(port, unixstream.Port)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the suite's default mode kept
        payload = os.urandom(1 << 20)  # many reads of the transport's buffer size
        with socket.socket(socket.AF_UNIX) as peer:
            peer.connect(path)
            yield threads.deferToThread(peer.sendall, payload)  # the reactor keeps reading
            yield poll(lambda: built and len(built[0].data) == len(payload))
            server = built[0]
            assert isinstance(server.transport, unixstream.Server)
            assert bytes(server.data) == payload and server.reads > 1
        (reason,) = yield server.ended
        assert reason.check(ConnectionDone)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_client_endpoint_connects_with_recv_transports_both_ways(sockdir):
    path = os.path.join(sockdir, "echo")
    port, _ = listen(path, Echo)
    port = yield port
    try:
        ep = address.client_endpoint(reactor, address.parse(f"UNIX:{path}"))
        client = yield ep.connect(Factory.forProtocol(Collect))
        assert isinstance(client.transport, unixstream.Client)
        client.transport.write(b"request bytes")
        yield poll(lambda: bytes(client.data) == b"request bytes")
        client.transport.loseConnection()
        (reason,) = yield client.ended
        assert reason.check(ConnectionDone)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connecting_to_nothing_fails_as_before(sockdir):
    ep = address.client_endpoint(reactor, address.parse(f"UNIX:{os.path.join(sockdir, 'none')}"))
    with pytest.raises(Exception) as caught:
        yield ep.connect(Factory.forProtocol(Collect))
    assert "No such file" in str(caught.value) or "refused" in str(caught.value).lower()


@pytest_twisted.inlineCallbacks
def test_the_lock_file_still_keeps_a_second_listener_off(sockdir):
    path = os.path.join(sockdir, "locked")
    first = yield reactor_listen_with_lock(path)
    try:
        with pytest.raises(CannotListenError):
            yield reactor_listen_with_lock(path)
    finally:
        yield first.stopListening()


def reactor_listen_with_lock(path):
    ep = address.server_endpoint(reactor, address.parse(f"unix:{path}:lockfile=1"))
    return ep.listen(Factory.forProtocol(Protocol))


def test_a_reactor_that_is_not_posix_is_handed_over_unchanged():
    memory = MemoryReactor()
    assert unixstream.reactor_for(memory) is memory
    ep = address.server_endpoint(memory, address.parse("UNIX:/nonexistent/sock"))
    ep.listen(Factory.forProtocol(Protocol))
    assert memory.unixServers and memory.unixServers[0][0] == "/nonexistent/sock"


def test_the_transports_are_twisteds_own_but_for_reading():
    assert issubclass(unixstream.Server, unix.Server)
    assert issubclass(unixstream.Client, unix.Client)
    assert unixstream.Server.doRead is not unix.Server.doRead
    assert unixstream.Client.doRead is not unix.Client.doRead
