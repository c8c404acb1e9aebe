"""The data channel's state table: every event in every state has a defined outcome.

Channels are driven into each state through their real inputs (StringTransport,
real pool uploads in tmp), then handed one event of each kind.
"""

import io
import typing

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from distcache.dcap import mover_codec as mc
from distcache.dcap.mover import EVENTS, HANDLERS, HELLO_TIMEOUT, ChannelState, DataChannel
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool
from distcache.dcap.transfer import Transfer
from distcache.dcap.dataport import DataPort


def passive_port(transfer, challenge, on_accept, clock=None, hello_timeout=HELLO_TIMEOUT):
    """A data port on which transfer waits under challenge."""
    port = DataPort(clock=clock, hello_timeout=hello_timeout)
    port.expect(transfer, challenge, on_accept)
    return port

S = ChannelState

SAMPLES = {
    mc.Hello: mc.Hello(5, b"chal"),
    mc.Read: mc.Read(3),
    mc.Seek: mc.Seek(1, mc.SEEK_SET),
    mc.SeekAndRead: mc.SeekAndRead(0, mc.SEEK_SET, 2),
    mc.Write: mc.Write(),
    mc.SeekAndWrite: mc.SeekAndWrite(0, mc.SEEK_SET),
    mc.ReadV: mc.ReadV(((0, 1),)),
    mc.Locate: mc.Locate(),
    mc.Close: mc.Close(None),
    mc.Unsupported: mc.Unsupported(mc.STATUS),
    mc.DataChunk: mc.DataChunk(b"xyz"),
    mc.DataEnd: mc.DataEnd(),
}

#: What each event may do in each state; everything else is out of turn
#: (a protocol violation) or, once closed, ignored.
ALLOWED = {
    (S.AWAITING_HELLO, mc.Hello),
    (S.IDLE, mc.Read), (S.IDLE, mc.Seek), (S.IDLE, mc.SeekAndRead), (S.IDLE, mc.Write),
    (S.IDLE, mc.SeekAndWrite), (S.IDLE, mc.ReadV), (S.IDLE, mc.Locate), (S.IDLE, mc.Close),
    (S.IDLE, mc.Unsupported),
    (S.RECEIVING, mc.DataChunk), (S.RECEIVING, mc.DataEnd),
}

#: The state each allowed event leaves the channel in (the transfer writable).
NEXT = {
    mc.Hello: S.IDLE, mc.Write: S.RECEIVING, mc.SeekAndWrite: S.RECEIVING, mc.Close: S.CLOSED,
    mc.DataChunk: S.RECEIVING, mc.DataEnd: S.IDLE,
}


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path / "root"), fsync=False)
    yield p
    p.namespace.close()


class HeldWorkers:
    """Storage workers whose work waits until the test lets it run (as threads would)."""

    def __init__(self):
        self.waiting = []

    def _hold(self, fn, *args, **kwargs):
        from twisted.internet import defer
        d = defer.Deferred()
        self.waiting.append((d, fn, args, kwargs))
        return d

    disk = database = _hold

    def run_all(self):
        while self.waiting:
            d, fn, args, kwargs = self.waiting.pop(0)
            try:
                d.callback(fn(*args, **kwargs))
            except Exception as e:
                d.errback(e)


class PausingTransport(StringTransport):
    """Pauses its producer after every write, as a full socket buffer would."""

    def write(self, data):
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, seq):
        self.write(b"".join(seq))


def channel_in(state, pool):
    """A channel with a writable transfer of 8 stored bytes, in `state`."""
    up = pool.open_write("/f", ROOT, 0o644, replace=True)
    up.file.write(b"abcdefgh")
    up.file.flush()
    transfer = Transfer(5, upload=up, size=8, label="w /f", block_size=2)
    transfer.outcome.addErrback(lambda f: None)
    transport = PausingTransport()
    if state is S.AWAITING_HELLO:
        factory = passive_port(transfer, "chal", lambda: None, clock=Clock())
        channel = factory.buildProtocol(None)
        channel.makeConnection(transport)
        return channel, transport, transfer
    channel = DataChannel(transfer=transfer)
    channel.makeConnection(transport)
    if state is S.RECEIVING:
        channel.dataReceived(mc.encode_write() + mc.DATA_HEADER)
    elif state is S.STREAMING:
        channel.dataReceived(mc.encode_read(8))
    elif state is S.CLOSED:
        channel.dataReceived(mc.encode_close())
    elif state is S.COMMITTING:
        pool.workers = HeldWorkers()
        channel.dataReceived(mc.encode_close())
    assert channel.state is state
    transport.clear()
    return channel, transport, transfer


def test_the_table_covers_every_event_in_every_state():
    assert set(typing.get_args(mc.Event)) == set(EVENTS) == set(SAMPLES)
    assert set(HANDLERS) == {(state, kind) for state in ChannelState for kind in EVENTS}
    assert all(callable(handler) for handler in HANDLERS.values())


@pytest.mark.parametrize("state", list(ChannelState), ids=lambda s: s.name)
@pytest.mark.parametrize("kind", EVENTS, ids=lambda k: k.__name__)
def test_every_event_in_every_state_has_its_outcome(pool, state, kind):
    channel, transport, transfer = channel_in(state, pool)
    channel.dispatch(SAMPLES[kind])
    if state in (S.COMMITTING, S.CLOSED):
        assert transport.value() == b""
        assert channel.state is state
        assert not transport.disconnected
    elif (state, kind) in ALLOWED:
        assert not transport.disconnected
        assert channel.state is NEXT.get(kind, S.STREAMING if kind in (mc.Read, mc.SeekAndRead, mc.ReadV)
                                         else S.IDLE)
        if kind is mc.DataChunk:
            assert transfer.bytes_in == 3
        elif kind is not mc.Hello:
            assert transport.value()  # every request is answered
    else:
        # out of turn: the connection is aborted and the transfer fails
        assert transport.disconnected
        assert channel.state is S.CLOSED
        if channel.transfer is not None:
            assert transfer.ended and transfer.outcome.result is not None


def test_requests_pipelined_behind_a_streaming_read_wait_for_it(pool):
    channel, transport, transfer = channel_in(S.IDLE, pool)
    channel.dataReceived(mc.encode_read(8) + mc.encode_locate())
    assert channel.state is S.STREAMING
    while channel.state is S.STREAMING:
        assert mc.locate_ack(0, 0)[:12] not in transport.value()  # no LOCATE ack yet
        transport.producer.resumeProducing()
    assert channel.state is S.IDLE
    assert transport.value().endswith(mc.locate_ack(8, 8))


def test_a_connection_without_a_hello_is_dropped_after_the_timeout():
    clock = Clock()
    transfer = Transfer(4, source=io.BytesIO(b"data"), size=4)
    factory = passive_port(transfer, "chal", lambda: None, clock=clock, hello_timeout=3)
    channel = factory.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(mc.encode_hello(4, b"ch")[:6])  # part of a hello is not a hello
    clock.advance(2.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected
    assert channel.state is S.CLOSED
    assert not transfer.ended  # the right client may still come
    channel.dataReceived(mc.encode_hello(4, b"chal")[6:])
    assert factory.waiting_movers == 1


def test_a_timely_hello_cancels_the_timer():
    clock = Clock()
    transfer = Transfer(4, source=io.BytesIO(b"data"), size=4)
    factory = passive_port(transfer, "chal", lambda: None, clock=clock)
    channel = factory.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    clock.advance(HELLO_TIMEOUT - 1)
    channel.dataReceived(mc.encode_hello(4, b"chal"))
    assert channel.state is S.IDLE and factory.waiting_movers == 0
    assert clock.getDelayedCalls() == []
    clock.advance(HELLO_TIMEOUT)
    assert not transport.disconnected


def test_a_connection_lost_while_waiting_for_its_hello_leaves_no_timer():
    clock = Clock()
    transfer = Transfer(4, source=io.BytesIO(b"data"), size=4)
    channel = passive_port(transfer, "chal", lambda: None, clock=clock).buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.connectionLost(None)
    assert clock.getDelayedCalls() == []
    assert not transfer.ended


def test_a_close_is_answered_once_the_commit_is_done_even_if_the_client_left(pool):
    channel, transport, transfer = channel_in(S.COMMITTING, pool)
    assert not transfer.ended and transport.value() == b""
    channel.connectionLost(None)          # the client gave up waiting
    assert not transfer.ended             # the commit, not the lost connection, decides
    pool.workers.run_all()
    assert transfer.ended and transfer.outcome.result is None
    assert channel.state is S.CLOSED
    assert pool.namespace.lookup("/f", ROOT).size == 8


def test_a_failed_commit_answers_the_close_with_the_error(pool):
    channel, transport, transfer = channel_in(S.IDLE, pool)
    pool.workers = HeldWorkers()
    channel.dataReceived(mc.encode_close(adler32=12345))   # not the data's checksum
    assert channel.state is S.COMMITTING
    pool.workers.run_all()
    assert channel.state is S.CLOSED
    assert transfer.ended and transfer.outcome.result is not None
    assert transport.disconnecting
