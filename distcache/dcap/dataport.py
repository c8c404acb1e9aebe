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
                 max_waiting: int = MAX_WAITING_CONNECTIONS):
        self.clock = clock
        self.hello_timeout = hello_timeout
        self.max_waiting = max_waiting
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
        channel = _SharedChannel(self, verify=self.verify, clock=self.clock,
                                 hello_timeout=self.hello_timeout)
        self._waiting.add(channel)
        return channel

    def _settled(self, channel) -> None:
        self._waiting.discard(channel)


class _SharedChannel(DataChannel):
    """A data channel that tells the shared port when it stops waiting for its hello."""

    def __init__(self, port: DataPort, **kwargs):
        super().__init__(**kwargs)
        self._port = port

    def dispatch(self, event) -> None:
        super().dispatch(event)
        if self.state is not ChannelState.AWAITING_HELLO:
            self._port._settled(self)

    def connectionLost(self, reason) -> None:
        self._port._settled(self)
        super().connectionLost(reason)
