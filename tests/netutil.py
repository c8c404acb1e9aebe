"""Small real-socket helpers shared by the end-to-end tests."""

import socket

from twisted.internet import defer, endpoints, protocol, reactor


class Collector(protocol.Protocol):
    """Sends what it is given and fires once ``want`` bytes came back."""

    def __init__(self, payload, want):
        self.payload = payload
        self.want = want
        self.received = bytearray()
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        if self.want == 0:
            self._finish()

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.want and not self.done.called:
            self._finish()

    def _finish(self):
        self.done.callback(bytes(self.received))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(bytes(self.received))


async def exchange(description, payload, want):
    """Connect to a Twisted client endpoint string, send, and read ``want`` bytes."""
    proto = Collector(payload, want)
    await endpoints.connectProtocol(endpoints.clientFromString(reactor, description), proto)
    return await proto.done


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def blocking_exchange(family, addr, payload, want, timeout=5.0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    s.sendall(payload)
    got = b""
    while len(got) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got
