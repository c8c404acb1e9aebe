"""Server-passive ports open, serve and close without Twisted's per-port log lines."""

import io
import socket

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher

from distcache.dcap import mover_codec as mc
from distcache.dcap.doorpolicy import DoorPolicy
from distcache.dcap.mover import QuietPort, listen_for_mover
from distcache.dcap.transfer import Transfer
from polling import poll_until
from distcache.dcap.dataport import DataPort
from distcache.dcap.mover import HELLO_TIMEOUT


def passive_port(transfer, challenge, on_accept, clock=None, hello_timeout=HELLO_TIMEOUT):
    """A data port on which transfer waits under challenge."""
    port = DataPort(clock=clock, hello_timeout=hello_timeout)
    port.expect(transfer, challenge, on_accept)
    return port

CHATTER = ("starting on", "Port", "Closed", "Starting factory", "Stopping factory")


class Captured:
    def __init__(self):
        self.lines = []

    def __call__(self, event):
        self.lines.append(formatEvent(event))

    def chatter(self):
        return [line for line in self.lines if any(word in line for word in CHATTER)]


@pytest_twisted.inlineCallbacks
def test_a_plain_port_chatters_and_a_mover_port_does_not():
    from twisted.internet import reactor
    captured = Captured()
    globalLogPublisher.addObserver(captured)
    try:
        # Twisted's own port, as a control: this is the chatter the mover avoids.
        plain = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        yield plain.stopListening()
        assert captured.chatter(), "the control port logged nothing: the capture does not work"
        del captured.lines[:]

        transfer = Transfer(3, source=io.BytesIO(b"hello"), size=5)
        accepted = []
        factory = passive_port(transfer, "chal", lambda: accepted.append(True))
        port = listen_for_mover(reactor, "127.0.0.1", factory)
        assert isinstance(port, QuietPort)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(mc.encode_hello(3, b"chal") + mc.encode_close())
        client.setblocking(False)
        d = defer.Deferred()
        transfer.outcome.addCallback(d.callback)
        assert (yield d) is None
        yield port.stopListening()
        client.close()
        assert accepted == [True]
        assert captured.chatter() == []
        assert any("data connection for session 3" in line for line in captured.lines)
    finally:
        globalLogPublisher.removeObserver(captured)


@pytest_twisted.inlineCallbacks
def test_the_door_policy_opens_one_quiet_data_port_and_closes_it_on_stop():
    from twisted.internet import reactor
    captured = Captured()
    globalLogPublisher.addObserver(captured)
    try:
        policy = DoorPolicy(clock=reactor)
        first = policy.expect_mover(reactor, "127.0.0.1", Transfer(4, source=io.BytesIO(b""), size=0),
                                    "c1", lambda: None)
        second = policy.expect_mover(reactor, "127.0.0.1", Transfer(5, source=io.BytesIO(b""), size=0),
                                     "c2", lambda: None)
        number = first.getHost().port
        assert second.getHost().port == number
        first.stopListening()
        second.stopListening()
        listener = policy.data_ports["127.0.0.1"].listener
        policy.stop()
        yield poll_until(lambda: not listener.connected, reactor=reactor)
        probe = socket.socket()
        probe.bind(("127.0.0.1", number))  # the port is really closed
        probe.close()
        assert captured.chatter() == []
        assert sum("data port listening on 127.0.0.1:%d" % number in line
                   for line in captured.lines) == 1
    finally:
        globalLogPublisher.removeObserver(captured)


@pytest_twisted.inlineCallbacks
def test_a_quiet_port_on_ipv6_loopback():
    from twisted.internet import reactor
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = listen_for_mover(reactor, "::1", Factory())
    assert port.getHost().host == "::1" and port.getHost().port > 0
    yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_client_passive_transfer_logs_its_transfer_and_nothing_of_twisted():
    from twisted.internet import reactor
    from distcache.dcap.mover import DataChannel, connect_to_client
    captured = Captured()
    globalLogPublisher.addObserver(captured)
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        transfer = Transfer(6, source=io.BytesIO(b"x"), size=1, label="r /x")
        channel = DataChannel(transfer=transfer)
        yield connect_to_client(reactor, "127.0.0.1", listener.getsockname()[1], channel)
        client, _ = listener.accept()
        client.sendall(mc.encode_close())
        d = defer.Deferred()
        transfer.outcome.addCallback(d.callback)
        assert (yield d) is None
        client.close()
        yield poll_until(lambda: not channel.transport.connected, reactor=reactor)  # torn down
        assert captured.chatter() == []
        assert any("transfer 6 (r /x) closed" in line for line in captured.lines)
    finally:
        listener.close()
        globalLogPublisher.removeObserver(captured)
