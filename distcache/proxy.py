"""dc_client: many local connections multiplexed onto one connection to dc_server.

Every request read from a local client is re-framed with a fresh upstream uid and sent
on the shared server connection; the reply is routed back by that uid, given the local
uid again and written in the local connection's own order.  Replies are batched per
read on both sides, and no Deferred is made per message.

While the server is unreachable each request is answered at once with an empty
payload, as the C dc_client does; requests in flight when the server connection drops
are answered with the single byte 0x02 (DISCONNECTED).  A local client that hangs up
with requests in flight costs nothing: their late replies are dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional, Set

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from distcache import wire

UID_MASK = 0xFFFFFFFF
_EMPTY = b""
_DISCONNECTED = bytes((wire.DISCONNECTED,))
_encode_request = wire.encode_request
_encode_response = wire.encode_response

# Why a local connection is not being read (a bit mask; reading resumes at zero).
PAUSE_WRITE = 1      # its own send buffer is full: the client is not reading replies
PAUSE_BACKLOG = 2    # too many of its requests are in flight
PAUSE_UPSTREAM = 4   # the server connection's send buffer is full
PAUSE_CLOSING = 8    # malformed input: answering what came before, then closing


def no_delay(transport) -> None:
    """Small requests and replies go out at once over TCP, not held back by Nagle."""
    if ITCPTransport.providedBy(transport):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


class Pending:
    """One local request awaiting its reply; ``reply`` holds the framed answer once known."""

    __slots__ = ("local", "uid", "op", "reply")

    def __init__(self, local: "LocalProtocol", uid: int, op: int, reply: Optional[bytes] = None):
        self.local = local
        self.uid = uid
        self.op = op
        self.reply = reply


class ServerLink:
    """The one server connection that every local client shares.

    It hands out upstream uids (a wrapping 32-bit counter that skips uids still in
    flight), remembers which local request each in-flight uid belongs to, and answers
    for the server while there is no connection.
    """

    log = Logger()

    def __init__(self):
        self.protocol: Optional[UpstreamProtocol] = None
        self.in_flight: Dict[int, Pending] = {}
        self.locals: Set[LocalProtocol] = set()
        self.paused = False
        self._next_uid = 1
        self._unreachable_because: Optional[str] = None
        # Counters, for logs and tests.
        self.forwarded = 0
        self.answered_unreachable = 0
        self.answered_disconnected = 0
        self.dropped_replies = 0
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    # The server connection comes and goes.
    def attach(self, protocol: "UpstreamProtocol") -> None:
        self.protocol = protocol
        self.connects += 1
        self._unreachable_because = None
        self.log.info("connected to the server at {peer}", peer=protocol.transport.getPeer())

    def detach(self, protocol: "UpstreamProtocol", why: str) -> None:
        """The server connection is gone: answer everything in flight with DISCONNECTED."""
        if self.protocol is not protocol:
            return
        self.protocol = None
        in_flight, self.in_flight = self.in_flight, {}
        touched = set()
        for pending in in_flight.values():
            pending.reply = _encode_response(pending.uid, pending.op, _DISCONNECTED)
            local = pending.local
            if local.ready(pending):
                touched.add(local)
            elif local.gone:
                self.dropped_replies += 1
        self.answered_disconnected += len(in_flight)
        for local in touched:
            local.flush()
        if self.paused:
            self.resume_locals()
        self.log.warn("lost the server connection ({why}); {n} requests in flight answered "
                      "DISCONNECTED", why=why, n=len(in_flight))

    def unreachable(self, why: str) -> None:
        """A connection attempt failed; say so once per outage and reason, not per attempt."""
        if why != self._unreachable_because:
            self._unreachable_because = why
            self.log.warn("cannot reach the server ({why}); answering requests empty "
                          "until it is back", why=why)

    # Requests from local clients.
    def relay(self, local: "LocalProtocol", messages: List[wire.Message]) -> None:
        """Forward one read's worth of requests, or answer them when the server is away."""
        protocol = self.protocol
        waiting = local.waiting
        if protocol is None:
            self.answered_unreachable += len(messages)
            replies = [_encode_response(m.uid, m.op, _EMPTY) for m in messages]
            if not waiting:
                local.write_now(replies)
                return
            for m, reply in zip(messages, replies):
                waiting.append(Pending(local, m.uid, m.op, reply))
            return
        in_flight = self.in_flight
        uid = self._next_uid
        out = []
        for m in messages:
            while uid in in_flight:
                uid = (uid + 1) & UID_MASK
            pending = Pending(local, m.uid, m.op)
            in_flight[uid] = pending
            waiting.append(pending)
            out.append(_encode_request(uid, m.op, m.payload))
            uid = (uid + 1) & UID_MASK
        self._next_uid = uid
        self.forwarded += len(messages)
        protocol.transport.write(_EMPTY.join(out))

    # Back-pressure from the server connection reaches every local client.
    def pause_locals(self) -> None:
        self.paused = True
        for local in self.locals:
            local.pause(PAUSE_UPSTREAM)

    def resume_locals(self) -> None:
        self.paused = False
        for local in list(self.locals):
            local.resume(PAUSE_UPSTREAM)


@implementer(IPushProducer)
class UpstreamProtocol(Protocol):
    """The connection to dc_server: replies in, routed to the local clients by uid."""

    log = Logger()

    def __init__(self, link: ServerLink):
        self.link = link
        self._decoder = wire.Decoder(expect=True)
        self._dropped = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self.link.attach(self)

    def connectionLost(self, reason) -> None:
        self.link.detach(self, reason.getErrorMessage())

    # IPushProducer: when the server stops reading, stop reading the local clients.
    def pauseProducing(self) -> None:
        self.link.pause_locals()

    def resumeProducing(self) -> None:
        self.link.resume_locals()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        messages, error = self._decoder.receive(data)
        link = self.link
        in_flight = link.in_flight
        touched = set()
        for m in messages:
            pending = in_flight.pop(m.uid, None)
            if pending is None or pending.op != m.op:
                if pending is not None:
                    in_flight[m.uid] = pending
                error = wire.ProtocolError(
                    f"reply uid={m.uid} {wire.OP_NAMES[m.op]} matches no request in flight")
                break
            pending.reply = _encode_response(pending.uid, m.op, m.payload)
            local = pending.local
            if local.ready(pending):
                touched.add(local)
            elif local.gone:
                link.dropped_replies += 1
        for local in touched:
            local.flush()
        if error is not None:
            self.drop(f"malformed reply from the server: {error}")

    def drop(self, why: str) -> None:
        """Give up on this connection; the reconnecting client makes a new one."""
        self._dropped = True
        self.link.detach(self, why)
        self.transport.abortConnection()


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Wraps the server's endpoint so that failed connection attempts reach the log."""

    def __init__(self, endpoint, link: ServerLink):
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory):
        return self._endpoint.connect(factory).addErrback(self._failed)

    def _failed(self, failure):
        if not failure.check(CancelledError):
            self._link.unreachable(failure.getErrorMessage())
        return failure


class UpstreamFactory(Factory):
    """Builds the server connection for the reconnecting client."""

    noisy = False

    def __init__(self, link: ServerLink):
        self.link = link

    def buildProtocol(self, addr) -> UpstreamProtocol:
        protocol = UpstreamProtocol(self.link)
        protocol.factory = self
        return protocol


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
        if link.paused:
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
        if self._paused & PAUSE_CLOSING:
            return
        messages, error = self._decoder.receive(data)
        factory = self.factory
        if factory.idle:
            self._last = factory.clock.seconds()
        if error is not None:
            self.log.warn("closing local connection from {peer}: {error}",
                          peer=self.transport.getPeer(), error=error)
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
        if self._paused & PAUSE_CLOSING and not held and not waiting:
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
                              peer=self.transport.getPeer(), idle=idle)
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
