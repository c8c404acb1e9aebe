"""sending.send on a real socket transport: at once when nothing is queued, else in order behind it."""

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from distcache.sending import send


class Producer:
    def __init__(self):
        self.paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@pytest.fixture
def pair():
    """A socket transport (with a MemoryReactor for its fd registrations) and its peer."""
    ours, peer = socket.socketpair()
    reactor = MemoryReactor()
    transport = tcp.Connection(ours, Protocol(), reactor)
    transport.connected = True
    peer.setblocking(False)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def received(peer) -> bytes:
    got = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def test_nothing_queued_goes_out_at_once(pair):
    transport, peer, reactor = pair
    send(transport, b"reply one")
    send(transport, b"reply two")
    assert received(peer) == b"reply onereply two"
    assert transport not in reactor.getWriters()  # no turn of the loop was asked for


def test_queued_bytes_keep_their_place(pair):
    transport, peer, reactor = pair
    transport.write(b"first ")
    send(transport, b"second")
    assert received(peer) == b""          # the queued bytes go first, on the reactor's turn
    assert transport in reactor.getWriters()
    assert transport.doWrite() is None
    assert received(peer) == b"first second"


def test_a_full_socket_queues_the_rest_in_order_and_pauses_the_producer(pair):
    transport, peer, reactor = pair
    producer = Producer()
    transport.registerProducer(producer, True)
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes and the buffer size
    send(transport, data)
    queued = len(transport.dataBuffer) + transport._tempDataLen
    assert 0 < queued < len(data)
    assert producer.paused == 1
    send(transport, b"after")             # behind the queued rest, not ahead of it
    got = received(peer)
    for _ in range(10000):
        if len(got) == len(data) + 5:
            break
        transport.doWrite()
        got += received(peer)
    assert got == data + b"after"


def test_a_closing_connection_is_left_to_the_transport(pair):
    transport, peer, reactor = pair
    transport.loseConnection()
    send(transport, b"late")
    assert received(peer) == b""


def test_a_failed_socket_is_left_to_the_transport(pair):
    transport, peer, reactor = pair
    peer.close()
    send(transport, b"to nobody")        # EPIPE: queued, the transport's doWrite reports it
    assert transport in reactor.getWriters()
    assert transport.doWrite() is not None


def test_other_transports_use_write():
    transport = StringTransport()
    send(transport, b"bytes")
    assert transport.value() == b"bytes"
