"""dc_client: many local connections multiplexed onto one connection to dc_server.

Every request read from a local client is re-framed with a fresh upstream uid and sent
on the shared server connection; the reply is routed back by that uid, given the local
uid again and written in the local connection's own order.  Replies are batched per
read on both sides, and no Deferred is made per message.

While no server is reachable each request is answered at once with an empty
payload, as the C dc_client does; requests in flight when a server connection drops
are answered with the single byte 0x02 (DISCONNECTED).  Which server is used, and when
another takes over, is the link's business (:mod:`distcache.upstream`); replies are
written in each local connection's own order whichever connection they came on.  A local client that hangs up
with requests in flight costs nothing: their late replies are dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from distcache import wire
from distcache.address import address_text
from distcache.ratelimit import RateLimitedLogs
from distcache.upstream import (PAUSE_BACKLOG, PAUSE_CLOSING, PAUSE_UPSTREAM, PAUSE_WRITE,
                                UID_MASK, LinkState, Pending, ServerLink, UpstreamFactory,
                                UpstreamProtocol, no_delay)

__all__ = ["LocalProtocol", "LocalFactory", "ServerLink", "LinkState", "UpstreamFactory",
           "UpstreamProtocol", "Pending", "UID_MASK"]

_EMPTY = b""


@implementer(IPushProducer)
class LocalProtocol(Protocol):
    """One local client: requests out to the server link, replies back in request order."""

    log = Logger()
    # Requests of one client sent to the server and not yet answered.  Beyond this the
    # client's requests are held back and it is not read, so a client that pipelines
    # without reading its replies cannot make the proxy buffer without bound.
    max_outstanding = 128

    def __init__(self):
        self._decoder = wire.Decoder(expect=False)
        self.waiting: Deque[Pending] = deque()
        self.gone = False
        self._held: Deque[wire.Message] = deque()
        self._out: List[bytes] = []
        self._paused = 0
        self._idle_call = None
        self._last = 0.0

    def connectionMade(self) -> None:
        factory = self.factory
        link = factory.link
        link.locals.add(self)
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        if link.blocked:
            self.pause(PAUSE_UPSTREAM)
        if factory.idle:
            self._last = factory.clock.seconds()
            self._idle_call = factory.clock.callLater(factory.idle, self._idle_check)

    def connectionLost(self, reason) -> None:
        self.gone = True
        self.factory.link.locals.discard(self)
        # Late replies find ``gone`` set and are dropped; their uids stay reserved
        # until the server answers them.
        self.waiting.clear()
        self._held.clear()
        self._out = []
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def dataReceived(self, data: bytes) -> None:
        messages, error = self._decoder.receive(data)  # nothing more once it has failed
        factory = self.factory
        if factory.idle:
            self._last = factory.clock.seconds()
        if error is not None:
            factory.warnings["malformed local connections"].warn(
                "closing local connection from {peer}: {error}",
                peer=address_text(self.transport.getPeer()), error=str(error))
            self.pause(PAUSE_CLOSING)
        if not self._held and len(self.waiting) + len(messages) < self.max_outstanding:
            if messages:
                factory.link.relay(self, messages)
            if error is not None:
                self._release()
        else:
            self._held.extend(messages)
            self._release()

    def _release(self) -> None:
        """Forward held requests while there is room; pause, resume or close to match."""
        if self.gone:
            return
        held = self._held
        waiting = self.waiting
        limit = self.max_outstanding
        while held and not self._paused & PAUSE_WRITE and len(waiting) < limit:
            room = limit - len(waiting)
            batch = [held.popleft() for _ in range(min(room, len(held)))]
            self.factory.link.relay(self, batch)  # answered at once if the server is away
        if held or len(waiting) >= limit:
            self.pause(PAUSE_BACKLOG)
        elif len(waiting) <= limit // 2:
            self.resume(PAUSE_BACKLOG)
        if self._decoder.failed is not None and not held and not waiting:
            self.transport.loseConnection()

    # Replies.
    def ready(self, pending: Pending) -> bool:
        """A reply is known; queue what can now go out in order.  True if ``flush`` is due."""
        waiting = self.waiting
        if self.gone or not waiting or waiting[0] is not pending:
            return False
        out = self._out
        while waiting and waiting[0].reply is not None:
            out.append(waiting.popleft().reply)
        return True

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        self.write_now(out)
        if self._paused:
            self._release()

    def write_now(self, replies: List[bytes]) -> None:
        self.transport.write(_EMPTY.join(replies))
        factory = self.factory
        if factory.idle:
            self._last = factory.clock.seconds()

    # Reading is paused for any of several reasons and resumes when none is left.
    def pause(self, reason: int) -> None:
        if not self._paused and not self.gone:
            self.transport.pauseProducing()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.gone:
                self.transport.resumeProducing()

    # IPushProducer: the transport pauses us when the client stops reading replies.
    def pauseProducing(self) -> None:
        self.pause(PAUSE_WRITE)

    def resumeProducing(self) -> None:
        self.resume(PAUSE_WRITE)
        if self._held:
            self._release()

    def stopProducing(self) -> None:
        pass

    def _idle_check(self) -> None:
        """Close when idle ``--idle`` long with nothing outstanding; otherwise look again later."""
        factory = self.factory
        idle = factory.idle
        self._idle_call = None
        if self.gone:
            return
        if self.waiting:
            delay = idle
        else:
            delay = self._last + idle - factory.clock.seconds()
            if delay <= 0:
                self.log.info("closing local connection from {peer}: idle for {idle}s",
                              peer=address_text(self.transport.getPeer()), idle=idle)
                self.transport.loseConnection()
                return
        self._idle_call = factory.clock.callLater(delay, self._idle_check)


class LocalFactory(Factory):
    """What the local connections share: the server link, the clock and the idle limit."""

    protocol = LocalProtocol
    noisy = False

    def __init__(self, link: ServerLink, clock=None, idle: float = 0.0):
        if clock is None:
            from twisted.internet import reactor as clock
        self.link = link
        self.clock = clock
        self.idle = idle
        self.warnings = RateLimitedLogs(LocalProtocol.log, clock)
