"""Shared by the dc_client and dc_snoop tests: the captured C vectors and small clients."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from twisted.internet import defer, protocol

from distcache import wire

VECTORS = Path(__file__).resolve().parent / "vectors"


def load_log(name: str) -> List[Tuple[str, bytes]]:
    """A ``<conn> C>S|S>C <count> <hex>`` capture as (direction, bytes) pairs."""
    out = []
    for line in (VECTORS / name).read_text().splitlines():
        if not line.strip():
            continue
        _conn, direction, count, hexdata = line.split()
        data = bytes.fromhex(hexdata)
        assert len(data) == int(count)
        out.append((direction, data))
    return out


def requests_and_replies(name: str) -> Tuple[List[bytes], List[bytes]]:
    log = load_log(name)
    return ([d for k, d in log if k == "C>S"], [d for k, d in log if k == "S>C"])


def multiframe_add() -> bytes:
    return bytes.fromhex("".join((VECTORS / "distcache-c-multiframe-add.hex").read_text().split()))


class Collector(protocol.Protocol):
    """A local client that records every byte and fires when enough replies arrived."""

    def __init__(self):
        self.received = bytearray()
        self.decoder = wire.Decoder(expect=True)
        self.replies: List[wire.Message] = []
        self.connected_d = defer.Deferred()
        self.lost_d = defer.Deferred()
        self._wanted = None

    def connectionMade(self):
        self.connected_d.callback(self)

    def dataReceived(self, data):
        self.received += data
        if self.decoder is not None:
            try:
                self.replies += self.decoder.feed(data)
            except wire.ProtocolError as e:  # not distcache: keep the bytes, stop decoding
                self.replies += e.messages
                self.decoder = None
        self._check()

    def connectionLost(self, reason):
        self.lost_d.callback(None)
        if self._wanted is not None:
            d, self._wanted = self._wanted[1], None
            d.errback(reason)

    def wait_replies(self, n: int) -> defer.Deferred:
        d = defer.Deferred()
        self._wanted = (n, d)
        self._check()
        return d

    def _check(self):
        if self._wanted is not None and len(self.replies) >= self._wanted[0]:
            d, self._wanted = self._wanted[1], None
            d.callback(self.replies)


def collector_factory():
    return protocol.Factory.forProtocol(Collector)


class MemoryServer:
    """A server endpoint in memory: it refuses while ``up`` is false, otherwise each
    attempt connects at once on a StringTransport; ``hold`` keeps attempts pending."""

    def __init__(self, path: str, up: bool = True):
        self.path = path
        self.up = up
        self.hold = False
        self.attempts = 0
        self.connections = []   # (protocol, transport), oldest first
        self.pending = []       # (factory, Deferred) while held
        self._decoders = {}

    def connect(self, factory):
        from twisted.internet.error import ConnectionRefusedError
        from twisted.internet.testing import StringTransport
        from twisted.internet.address import UNIXAddress
        self.attempts += 1
        if self.hold:
            d = defer.Deferred()
            self.pending.append((factory, d))
            return d
        if not self.up:
            return defer.fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=UNIXAddress(self.path.encode()))
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return defer.succeed(protocol)

    @property
    def protocol(self):
        return self.connections[-1][0]

    @property
    def transport(self):
        return self.connections[-1][1]

    def requests(self, index: int = -1) -> List[wire.Message]:
        """The requests received on a connection since the last call."""
        protocol, transport = self.connections[index]
        data = transport.value()
        transport.clear()
        decoder = self._decoders.setdefault(id(protocol), wire.Decoder(expect=False))
        return decoder.feed(data)

    def answer(self, requests, payload=b"\x00", index: int = -1) -> None:
        protocol = self.connections[index][0]
        protocol.dataReceived(b"".join(wire.encode_response(m.uid, m.op, payload)
                                       for m in requests))

    def drop(self, index: int = -1) -> None:
        """The connection closes (the server went away)."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.connections[index][0].connectionLost(Failure(ConnectionDone()))
