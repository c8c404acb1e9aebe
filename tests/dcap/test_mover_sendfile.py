"""The sendfile stream on a real socketpair with a small send buffer, in the reactor.

One end of the pair is the data channel's transport (adopted by the reactor);
the test plays the client on the other end, reading when it chooses, so the
stream meets partial sends and a full socket (EAGAIN) and has to wait.
"""

import os
import socket
import struct
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.protocol import Factory

from distcache.dcap import mover_codec as mc
from distcache.dcap import sendfile
from distcache.dcap.mover import ChannelState, DataChannel
from distcache.dcap.sendfile import SendfileStream
from distcache.dcap.transfer import Transfer
from polling import poll_until

SMALL = 4096
BLOCK = 1024 * 1024


def _sleep(reactor, seconds=0.005):
    return task.deferLater(reactor, seconds, lambda: None)


def _until(reactor, predicate, what):
    """Wait on the reactor until predicate() holds (what: for the reader)."""
    return poll_until(predicate, timeout=10.0, interval=0.002, reactor=reactor)


class _Once(Factory):
    noisy = False

    def __init__(self, protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


@pytest.fixture
def stored(tmp_path):
    payload = os.urandom(2 * BLOCK + 1234)
    path = tmp_path / "stored"
    path.write_bytes(payload)
    return path, payload


@pytest.fixture
def sent_sizes(monkeypatch):
    """What each os.sendfile call asked for and sent (the real call, recorded)."""
    calls = []
    real = os.sendfile

    def recording(out_fd, in_fd, offset, count):
        n = real(out_fd, in_fd, offset, count)
        calls.append((count, n))
        return n

    monkeypatch.setattr(sendfile.os, "sendfile", recording)
    return calls


@defer.inlineCallbacks
def _connected(reactor, path, size):
    """A client-passive channel on one end of a socketpair; the client end, hello read."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    transfer = Transfer(7, source=open(path, "rb"), size=size, label="r test", block_size=BLOCK)
    channel = DataChannel(transfer=transfer)
    reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _Once(channel))
    ours.close()
    theirs.setblocking(False)
    hello = yield _recv_exactly(reactor, theirs, 8)
    assert hello == mc.client_hello(7)
    return channel, transfer, theirs


@defer.inlineCallbacks
def _recv_exactly(reactor, sock, n, chunk=SMALL):
    out = bytearray()
    deadline = time.monotonic() + 10
    while len(out) < n:
        try:
            data = sock.recv(min(chunk, n - len(out)))
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError("peer sent %d of %d bytes" % (len(out), n))
            yield _sleep(reactor, 0.001)
            continue
        if not data:
            raise AssertionError("connection closed after %d of %d bytes" % (len(out), n))
        out += data
    return bytes(out)


@pytest_twisted.inlineCallbacks
def test_a_read_waits_for_room_and_arrives_whole(stored, sent_sizes):
    from twisted.internet import reactor
    path, payload = stored
    channel, transfer, client = yield _connected(reactor, path, len(payload))
    try:
        client.send(mc.encode_seek_and_read(0, mc.SEEK_SET, len(payload)) + mc.encode_locate())
        yield _until(reactor, lambda: channel.state is ChannelState.STREAMING, "the read to start")
        stream = channel._stream
        assert isinstance(stream, SendfileStream)
        # The client reads nothing: the socket fills and the stream waits on the reactor.
        yield _until(reactor, lambda: stream.registered, "the stream to wait for room")
        assert stream in reactor.getWriters()
        sent_before = transfer.bytes_out
        yield _sleep(reactor, 0.05)
        assert transfer.bytes_out == sent_before < len(payload)

        expected = bytearray(mc.ack(mc.SEEK_AND_READ) + mc.DATA_HEADER)
        for offset in range(0, len(payload), BLOCK):
            block = payload[offset:offset + BLOCK]
            expected += struct.pack(">i", len(block)) + block
        expected += mc.DATA_END + mc.fin(mc.SEEK_AND_READ) + mc.locate_ack(len(payload), len(payload))
        got = yield _recv_exactly(reactor, client, len(expected), chunk=1000)
        assert got == bytes(expected)
        assert channel.state is ChannelState.IDLE
        assert stream not in reactor.getWriters()
        # os.sendfile really sent parts of blocks: the file went out in pieces
        assert any(n < count for count, n in sent_sizes)
        assert sum(n for _, n in sent_sizes) == len(payload)
        client.send(mc.encode_close())
        yield _until(reactor, lambda: transfer.ended, "the close")
        assert transfer.outcome.result is None
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_a_killed_transfer_stops_its_blocked_stream(stored):
    from twisted.internet import reactor
    path, payload = stored
    channel, transfer, client = yield _connected(reactor, path, len(payload))
    outcome = []
    transfer.outcome.addBoth(outcome.append)
    try:
        client.send(mc.encode_read(len(payload)))
        yield _until(reactor, lambda: channel._stream is not None and channel._stream.registered,
                     "the stream to block")
        stream = channel._stream
        transfer.kill("open deadline passed during the read")
        yield _until(reactor, lambda: channel.state is ChannelState.CLOSED, "the connection to close")
        assert stream.stopped and stream not in reactor.getWriters()
        assert outcome and outcome[0].rc != 0
        # the client gets what was sent before the abort, then the end of the connection
        received = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                data = client.recv(65536)
            except BlockingIOError:
                assert time.monotonic() < deadline
                yield _sleep(reactor)
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            received += len(data)
        assert received < len(payload)
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_a_client_that_goes_away_mid_stream_fails_the_transfer(stored):
    from twisted.internet import reactor
    path, payload = stored
    channel, transfer, client = yield _connected(reactor, path, len(payload))
    outcome = []
    transfer.outcome.addBoth(outcome.append)
    client.send(mc.encode_read(len(payload)))
    yield _until(reactor, lambda: channel._stream is not None and channel._stream.registered,
                 "the stream to block")
    stream = channel._stream
    client.close()
    yield _until(reactor, lambda: transfer.ended, "the transfer to fail")
    assert outcome[0].rc != 0 and "lost" in outcome[0].message
    assert channel.state is ChannelState.CLOSED
    assert stream.stopped and stream not in reactor.getWriters()
