"""One passive data port shared by every server-passive mover.

A pool listens on a single data port, as dCache's pools do, and hands each
incoming data connection to the transfer whose challenge it presents.  The
number of concurrent transfers is therefore not bounded by the size of the
port range a firewall opens.

Each waiting transfer is an `ExpectedMover`: registered under its
challenge when the door answers ``connect``, claimed by the first
connection whose hello carries that challenge and the session id, and
forgotten when its open ends without a connection.  A challenge is good
once.  The registry is keyed by the SHA-256 of the challenge, so finding
an entry takes time that does not depend on how much of a guess matches a
real challenge; the challenge itself is then compared in constant time.
A connection that does not present a valid challenge within the hello
timeout is closed (`mover.DataChannel`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Dict, Optional

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from distcache.dcap.mover import HELLO_TIMEOUT, ChannelState, DataChannel
from distcache.dcap.transfer import Transfer

log = Logger()

#: Data connections that may wait for their hello at once; more are refused.
MAX_WAITING_CONNECTIONS = 1024
#: ... and from one peer address, so that one host cannot take every place.
MAX_WAITING_PER_PEER = 256


def _key(challenge: bytes) -> bytes:
    return hashlib.sha256(challenge).digest()


class ExpectedMover:
    """One transfer waiting on the shared port for its data connection.

    It stands where a per-transfer listening port used to: ``getHost()``
    names the port the client is told, ``stopListening()`` withdraws the
    registration (the session calls it when the open ends, connected or not).
    """

    def __init__(self, port: "DataPort", challenge: bytes, transfer: Transfer,
                 on_accept: Callable[[], None]):
        self.port = port
        self.challenge = challenge
        self.transfer = transfer
        self.on_accept = on_accept

    def getHost(self):
        return self.port.getHost()

    def stopListening(self) -> None:
        self.port.forget(self)


class DataPort(Factory):
    """The factory behind a pool's one data port, and its registry of waiting movers.

    `listener` is the listening port once the owner has bound it.
    """

    noisy = False

    def __init__(self, clock=None, hello_timeout: float = HELLO_TIMEOUT,
                 max_waiting: int = MAX_WAITING_CONNECTIONS,
                 max_waiting_per_peer: int = MAX_WAITING_PER_PEER):
        self.clock = clock
        self.hello_timeout = hello_timeout
        self.max_waiting = max_waiting
        self.max_waiting_per_peer = max_waiting_per_peer
        self._by_peer: Dict[str, int] = {}   # waiting connections per peer address
        self._full_peers = set()             # peers at their limit, logged once each
        self.listener = None
        self._expected: Dict[bytes, ExpectedMover] = {}
        self._waiting = set()   # channels that have not presented a valid hello yet
        self._full_logged = False

    # -- the registry ------------------------------------------------------

    def expect(self, transfer: Transfer, challenge: str,
               on_accept: Callable[[], None]) -> ExpectedMover:
        """Register transfer under challenge until a connection claims it."""
        raw = challenge.encode("ascii")
        entry = ExpectedMover(self, raw, transfer, on_accept)
        self._expected[_key(raw)] = entry
        return entry

    def forget(self, entry: ExpectedMover) -> None:
        key = _key(entry.challenge)
        if self._expected.get(key) is entry:
            del self._expected[key]

    @property
    def waiting_movers(self) -> int:
        """Transfers registered and not yet claimed."""
        return len(self._expected)

    def verify(self, sid: int, challenge: bytes) -> Optional[Transfer]:
        """The transfer this hello claims, or None; a claimed challenge is gone."""
        key = _key(challenge)
        entry = self._expected.get(key)
        if entry is None or not hmac.compare_digest(entry.challenge, challenge):
            return None
        if entry.transfer.sid != sid or entry.transfer.ended:
            return None
        del self._expected[key]
        entry.on_accept()
        return entry.transfer

    # -- connections -----------------------------------------------------------

    def getHost(self):
        return self.listener.getHost()

    def buildProtocol(self, addr):
        if len(self._waiting) >= self.max_waiting:
            if not self._full_logged:
                log.warn("data port: {n} connections already wait for their hello; "
                         "refusing more until some are served", n=self.max_waiting)
                self._full_logged = True
            return None
        self._full_logged = False
        host = getattr(addr, "host", None)
        if host is not None and self._by_peer.get(host, 0) >= self.max_waiting_per_peer:
            if host not in self._full_peers:
                log.warn("data port: {n} connections from {peer} already wait for their "
                         "hello; refusing more from it until some are served",
                         n=self.max_waiting_per_peer, peer=host)
                self._full_peers.add(host)
            return None
        channel = _SharedChannel(self, verify=self.verify, clock=self.clock,
                                 hello_timeout=self.hello_timeout)
        channel.peer_host = host
        self._waiting.add(channel)
        if host is not None:
            self._by_peer[host] = self._by_peer.get(host, 0) + 1
        return channel

    def _settled(self, channel) -> None:
        if channel not in self._waiting:
            return
        self._waiting.discard(channel)
        host = channel.peer_host
        if host is not None:
            left = self._by_peer.get(host, 1) - 1
            if left > 0:
                self._by_peer[host] = left
            else:
                self._by_peer.pop(host, None)
            if left < self.max_waiting_per_peer:
                self._full_peers.discard(host)


class _SharedChannel(DataChannel):
    """A data channel that tells the shared port when it stops waiting for its hello."""

    def __init__(self, port: DataPort, **kwargs):
        super().__init__(**kwargs)
        self._port = port
        self.peer_host = None

    def dispatch(self, event) -> None:
        super().dispatch(event)
        if self.state is not ChannelState.AWAITING_HELLO:
            self._port._settled(self)

    def connectionLost(self, reason) -> None:
        self._port._settled(self)
        super().connectionLost(reason)
