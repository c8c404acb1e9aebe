"""The shared data port: connections find their transfer by the challenge they present."""

import io

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from distcache.dcap import mover_codec as mc
from distcache.dcap.dataport import DataPort
from distcache.dcap.mover import ChannelState, new_challenge
from distcache.dcap.transfer import Transfer


def transfer(sid, data=b"data"):
    t = Transfer(sid, source=io.BytesIO(data), size=len(data))
    t.outcome.addErrback(lambda f: None)
    return t


def connect(port, hello=None):
    channel = port.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    if hello is not None:
        channel.dataReceived(hello)
    return channel, transport


def test_each_connection_reaches_the_transfer_of_its_challenge():
    port = DataPort(clock=Clock())
    accepted = []
    waiting = {}
    for sid in (1, 2, 3):
        challenge = new_challenge()
        waiting[sid] = (transfer(sid, b"file %d" % sid), challenge)
        port.expect(waiting[sid][0], challenge, lambda sid=sid: accepted.append(sid))
    for sid in (3, 1, 2):
        t, challenge = waiting[sid]
        channel, data = connect(port, mc.encode_hello(sid, challenge.encode()))
        assert channel.state is ChannelState.IDLE and channel.transfer is t
        channel.dataReceived(mc.encode_read(100))
        assert (b"file %d" % sid) in data.value()
    assert accepted == [3, 1, 2]
    assert port.waiting_movers == 0


def test_a_challenge_is_good_once():
    port = DataPort(clock=Clock())
    t = transfer(7)
    port.expect(t, "once", lambda: None)
    first, _ = connect(port, mc.encode_hello(7, b"once"))
    assert first.transfer is t
    second, transport = connect(port, mc.encode_hello(7, b"once"))
    assert second.state is ChannelState.CLOSED and transport.disconnecting
    assert second.transfer is None


def test_wrong_session_id_or_challenge_is_refused_and_keeps_the_registration():
    port = DataPort(clock=Clock())
    t = transfer(9)
    port.expect(t, "s3cret", lambda: None)
    for hello in (mc.encode_hello(8, b"s3cret"), mc.encode_hello(9, b"s3cre"),
                  mc.encode_hello(9, b"s3cret!"), mc.encode_hello(9, b"")):
        channel, transport = connect(port, hello)
        assert channel.state is ChannelState.CLOSED and transport.disconnecting
    assert port.waiting_movers == 1
    assert port.verify(9, b"s3cret") is t


def test_a_withdrawn_or_ended_transfer_cannot_be_claimed():
    port = DataPort(clock=Clock())
    gone = port.expect(transfer(1), "a", lambda: None)
    gone.stopListening()
    gone.stopListening()
    assert port.verify(1, b"a") is None
    ended = transfer(2)
    port.expect(ended, "b", lambda: None)
    ended.kill("client gone")
    assert port.verify(2, b"b") is None


def test_a_connection_without_a_valid_hello_is_closed_after_the_timeout():
    clock = Clock()
    port = DataPort(clock=clock, hello_timeout=3)
    port.expect(transfer(4), "chal", lambda: None)
    channel, transport = connect(port, mc.encode_hello(4, b"chal")[:5])  # a partial hello
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and channel.state is ChannelState.CLOSED
    assert port.waiting_movers == 1  # the real client may still come


def test_connections_waiting_for_their_hello_are_limited():
    port = DataPort(clock=Clock(), max_waiting=2)
    port.expect(transfer(5), "c", lambda: None)
    first, t1 = connect(port)
    second, t2 = connect(port)
    assert port.buildProtocol(None) is None  # Twisted closes the connection
    first.dataReceived(mc.encode_hello(5, b"c"))  # one is served
    assert port.buildProtocol(None) is not None
    second.connectionLost(None)
    assert port.buildProtocol(None) is not None


@given(st.integers(min_value=-2**31, max_value=2**31 - 1), st.binary(max_size=80))
def test_no_guessed_hello_claims_a_transfer(sid, guess):
    port = DataPort(clock=Clock())
    challenge = new_challenge()
    t = transfer(11)
    port.expect(t, challenge, lambda: None)
    if guess == challenge.encode() and sid == 11:
        return
    assert port.verify(sid, guess) is None
    assert port.verify(11, challenge.encode()) is t
