"""dc_server's memory per connection stays bounded when the peer pipelines and never reads.

On a transport that pauses its producer when its buffer passes a size, as Twisted's
socket transports do, and on a real dc_server process measured by its RSS.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from distcache import wire
from distcache.server import CacheServerFactory
from distcache.store import SessionStore

from cache_support import DcServerProcess
from polling import wait_until

BIG = os.urandom(32768 - 8 - 3)  # the largest session one message carries
BUFFER = 65536                   # Twisted's FileDescriptor.bufferSize


class BufferingTransport(StringTransport):
    """Pauses its producer once more than BUFFER bytes wait, like a socket transport."""

    def __init__(self):
        super().__init__()
        self.reading = True
        self.held_back = False
        self.peak = 0

    def write(self, data):
        super().write(data)
        self.peak = max(self.peak, len(self.value()))
        if len(self.value()) > BUFFER and not self.held_back:
            self.held_back = True
            self.producer.pauseProducing()

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True

    def drain(self) -> bytes:
        """The peer reads everything; the producer is resumed as Twisted does."""
        data = self.value()
        self.clear()
        if self.held_back:
            self.held_back = False
            self.producer.resumeProducing()
        return data


def test_a_peer_that_does_not_read_stops_the_answering_within_a_batch():
    factory = CacheServerFactory(SessionStore(Clock()))
    proto = factory.buildProtocol(None)
    transport = BufferingTransport()
    proto.makeConnection(transport)
    proto.dataReceived(wire.encode_request(0, wire.OP_ADD,
                                           wire.encode_add_payload(b"big", BIG, 60000)))
    transport.drain()
    count = 1000  # replies of 32 MB, were they all answered at once
    stream = b"".join(wire.encode_request(uid, wire.OP_GET, b"big")
                      for uid in range(1, count + 1))
    proto.dataReceived(stream)
    assert not transport.reading
    assert transport.peak < BUFFER + 64 * len(BIG) + 4096   # not count * 32 KiB
    # more input while held waits behind it, malformed input after it too
    proto.dataReceived(wire.encode_request(count + 1, wire.OP_HAVE, b"big") + b"\xff" * 16)
    got = []
    decoder = wire.Decoder(expect=True)
    for _ in range(count):
        got += decoder.feed(transport.drain())
        if transport.disconnecting and not transport.value():
            break
    assert [m.uid for m in got] == list(range(1, count + 2))
    assert all(m.payload == BIG for m in got[:-1])
    assert transport.disconnecting and factory.protocol_errors == 1
    assert factory.activity.operations == count + 2


def test_reading_resumes_once_everything_held_is_answered():
    factory = CacheServerFactory(SessionStore(Clock()))
    proto = factory.buildProtocol(None)
    transport = BufferingTransport()
    proto.makeConnection(transport)
    proto.dataReceived(wire.encode_request(0, wire.OP_ADD,
                                           wire.encode_add_payload(b"big", BIG, 60000)))
    proto.dataReceived(b"".join(wire.encode_request(uid, wire.OP_GET, b"big")
                                for uid in range(1, 200)))
    rounds = 0
    while not transport.reading:
        transport.drain()
        rounds += 1
    assert rounds > 1 and not proto._held
    proto.dataReceived(wire.encode_request(500, wire.OP_HAVE, b"big"))
    assert wire.Decoder(expect=True).feed(transport.drain())[-1].uid == 500


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):  # the peak: what was taken, even if given back
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_five_connections_that_never_read_cost_a_bounded_amount(sockdir):
    server = DcServerProcess(os.path.join(sockdir, "cache"), sessions=16).start()
    conns = []
    try:
        pid = server.process.pid
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(server.path)
            s.sendall(wire.encode_request(0, wire.OP_ADD,
                                          wire.encode_add_payload(b"big", BIG, 600000)))
            assert s.recv(100)
        before = rss_mb(pid)
        gets = b"".join(wire.encode_request(uid, wire.OP_GET, b"big") for uid in range(1, 20001))
        for _ in range(5):
            c = socket.socket(socket.AF_UNIX)
            c.connect(server.path)
            c.setblocking(False)
            conns.append(c)
            sent, stalled_since = 0, None
            while sent < len(gets):  # until the server has stopped reading for a while
                try:
                    sent += c.send(gets[sent:])
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 0.5:
                        break
                    time.sleep(0.02)
            assert sent > 100000  # the server read that much before it stopped reading
        # the server is still answering others at once
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(server.path)
            s.sendall(wire.encode_request(9, wire.OP_HAVE, b"big"))
            assert wait_until(lambda: s.recv(100))
        grown = rss_mb(pid) - before
        # unbounded, each took 100+ MB (5 took the peak from 47 to 775 MB)
        assert grown < 40, f"dc_server grew {grown:.0f} MB for 5 connections"
    finally:
        for c in conns:
            c.close()
        server.stop()
