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

import enum
from collections import deque
from typing import Deque, Dict, List, Optional, Set

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from distcache import wire
from distcache.address import address_text

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


class LinkState(enum.Enum):
    """Where dc_client stands with its server."""

    STARTING = "starting"    # no connection attempt has finished yet
    CONNECTED = "connected"  # requests are forwarded
    BLOCKED = "blocked"      # connected, but the server stops reading: locals are paused
    DROPPING = "dropping"    # the server sent nonsense: aborted, its close still to come
    AWAY = "away"            # lost or unreachable: requests are answered empty


_S = LinkState
_INPUTS = ("connected", "attempt_failed", "lost", "malformed", "full", "ready")

# The link's specification: (state, input) -> (next state, outputs in order).  Every
# input is listed for every state; "()" marks inputs that change nothing there (most
# cannot happen, since the reconnecting service makes one connection at a time).
_TABLE = {
    (_S.STARTING, "connected"): (_S.CONNECTED, ("_use", "_say_connected")),
    (_S.STARTING, "attempt_failed"): (_S.AWAY, ("_begin_outage", "_say_unreachable")),
    (_S.STARTING, "lost"): (_S.STARTING, ()),
    (_S.STARTING, "malformed"): (_S.STARTING, ()),
    (_S.STARTING, "full"): (_S.STARTING, ()),
    (_S.STARTING, "ready"): (_S.STARTING, ()),

    (_S.CONNECTED, "connected"): (_S.CONNECTED, ()),
    (_S.CONNECTED, "attempt_failed"): (_S.CONNECTED, ()),
    (_S.CONNECTED, "lost"): (_S.AWAY, ("_answer_in_flight", "_begin_outage", "_say_lost")),
    (_S.CONNECTED, "malformed"): (_S.DROPPING, ("_abort", "_answer_in_flight",
                                                "_begin_outage", "_say_dropped")),
    (_S.CONNECTED, "full"): (_S.BLOCKED, ("_pause_locals",)),
    (_S.CONNECTED, "ready"): (_S.CONNECTED, ()),

    (_S.BLOCKED, "connected"): (_S.BLOCKED, ()),
    (_S.BLOCKED, "attempt_failed"): (_S.BLOCKED, ()),
    (_S.BLOCKED, "lost"): (_S.AWAY, ("_answer_in_flight", "_resume_locals",
                                     "_begin_outage", "_say_lost")),
    (_S.BLOCKED, "malformed"): (_S.DROPPING, ("_abort", "_answer_in_flight", "_resume_locals",
                                              "_begin_outage", "_say_dropped")),
    (_S.BLOCKED, "full"): (_S.BLOCKED, ()),
    (_S.BLOCKED, "ready"): (_S.CONNECTED, ("_resume_locals",)),

    (_S.DROPPING, "connected"): (_S.CONNECTED, ("_use", "_say_back")),
    (_S.DROPPING, "attempt_failed"): (_S.DROPPING, ()),
    (_S.DROPPING, "lost"): (_S.AWAY, ()),
    (_S.DROPPING, "malformed"): (_S.DROPPING, ()),
    (_S.DROPPING, "full"): (_S.DROPPING, ()),
    (_S.DROPPING, "ready"): (_S.DROPPING, ()),

    (_S.AWAY, "connected"): (_S.CONNECTED, ("_use", "_say_back")),
    (_S.AWAY, "attempt_failed"): (_S.AWAY, ("_remind",)),
    (_S.AWAY, "lost"): (_S.AWAY, ()),
    (_S.AWAY, "malformed"): (_S.AWAY, ()),
    (_S.AWAY, "full"): (_S.AWAY, ()),
    (_S.AWAY, "ready"): (_S.AWAY, ()),
}
assert set(_TABLE) == {(state, i) for state in LinkState for i in _INPUTS}

#: While the server stays away, a reminder at most this often (seconds).
REMINDER_INTERVAL = 300.0


def duration_text(seconds: float) -> str:
    """``42s``, ``5m07s``, ``3h02m``: how long an outage lasted, for the log."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class ServerLink:
    """The one server connection that every local client shares, and its state.

    The state (:class:`LinkState`) changes only through the inputs ``connected``,
    ``attempt_failed``, ``lost``, ``malformed``, ``full`` and ``ready``, as ``_TABLE``
    says.  The link hands out upstream uids (a wrapping 32-bit counter that skips uids
    still in flight), remembers which local request each in-flight uid belongs to, and
    answers for the server while it is away.  The log gets one line when the server
    goes, a reminder every :data:`REMINDER_INTERVAL` while it stays away, and one line
    when it is back.
    """

    log = Logger()

    def __init__(self, clock=None, server: str = "(unnamed)"):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.server = server
        self.state = LinkState.STARTING
        self.in_flight: Dict[int, Pending] = {}
        self.locals: Set[LocalProtocol] = set()
        self._upstream: Optional[UpstreamProtocol] = None  # set while CONNECTED or BLOCKED
        self._next_uid = 1
        self._peer = server
        self._away_since = 0.0
        self._reminded_at = 0.0
        self._answered_before = 0
        self._disconnected_now = 0
        # Counters, for logs and tests.
        self.forwarded = 0
        self.answered_unreachable = 0
        self.answered_disconnected = 0
        self.dropped_replies = 0

    @property
    def connected(self) -> bool:
        return self._upstream is not None

    @property
    def blocked(self) -> bool:
        return self.state is LinkState.BLOCKED

    @property
    def upstream(self) -> "Optional[UpstreamProtocol]":
        """The server connection requests go to, while there is one."""
        return self._upstream

    # Inputs.
    def _input(self, name: str, arg=None) -> None:
        self.state, outputs = _TABLE[self.state, name]
        for output in outputs:
            getattr(self, output)(arg)

    def connected_to(self, protocol: "UpstreamProtocol") -> None:
        """A connection to the server is made."""
        self._input("connected", protocol)

    def attempt_failed(self, why: str) -> None:
        """A connection attempt failed."""
        self._input("attempt_failed", why)

    def lost(self, why: str) -> None:
        """The server connection closed."""
        self._input("lost", why)

    def malformed(self, why: str) -> None:
        """The server sent something that is not an answer: drop the connection."""
        self._input("malformed", why)

    def full(self) -> None:
        """The server connection's send buffer is full."""
        self._input("full")

    def ready(self) -> None:
        """The server connection's send buffer has drained."""
        self._input("ready")

    # Outputs: one step each.
    def _use(self, protocol: "UpstreamProtocol") -> None:
        self._upstream = protocol
        self._peer = address_text(protocol.transport.getPeer())

    def _abort(self, _why: str) -> None:
        self._upstream.transport.abortConnection()

    def _answer_in_flight(self, _why: str) -> None:
        """Answer every request in flight with DISCONNECTED."""
        self._upstream = None
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
        self._disconnected_now = len(in_flight)
        for local in touched:
            local.flush()

    def _pause_locals(self, _arg=None) -> None:
        for local in self.locals:
            local.pause(PAUSE_UPSTREAM)

    def _resume_locals(self, _arg=None) -> None:
        for local in list(self.locals):
            local.resume(PAUSE_UPSTREAM)

    def _begin_outage(self, _why: str) -> None:
        self._away_since = self._reminded_at = self.clock.seconds()
        self._answered_before = self.answered_unreachable

    def _say_connected(self, _protocol) -> None:
        self.log.info("connected to the server at {peer}", peer=self._peer)

    def _say_unreachable(self, why: str) -> None:
        self.log.warn("cannot reach the server at {server} ({why}); answering requests empty "
                      "until it is back", server=self.server, why=why)

    def _say_lost(self, why: str) -> None:
        self.log.warn("lost the server at {peer} ({why}); {n} requests in flight answered "
                      "DISCONNECTED, later ones empty until it is back",
                      peer=self._peer, why=why, n=self._disconnected_now)

    def _say_dropped(self, why: str) -> None:
        self.log.warn("dropped the server connection to {peer}: {why}; {n} requests in flight "
                      "answered DISCONNECTED, later ones empty until it is back",
                      peer=self._peer, why=why, n=self._disconnected_now)

    def _remind(self, why: str) -> None:
        now = self.clock.seconds()
        if now - self._reminded_at < REMINDER_INTERVAL:
            return
        self._reminded_at = now
        self.log.warn("the server at {server} is still unreachable after {away} ({why}); "
                      "{n} requests answered empty so far", server=self.server,
                      away=duration_text(now - self._away_since), why=why,
                      n=self.answered_unreachable - self._answered_before)

    def _say_back(self, _protocol) -> None:
        self.log.info("the server at {peer} is back after {away}; {n} requests were answered "
                      "empty meanwhile", peer=self._peer,
                      away=duration_text(self.clock.seconds() - self._away_since),
                      n=self.answered_unreachable - self._answered_before)

    # Requests from local clients, replies from the server.
    def relay(self, local: "LocalProtocol", messages: List[wire.Message]) -> None:
        """Forward one read's worth of requests, or answer them when the server is away."""
        upstream = self._upstream
        waiting = local.waiting
        if upstream is None:
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
        upstream.transport.write(_EMPTY.join(out))

    def answers(self, messages: List[wire.Message]) -> None:
        """Route one read's worth of replies back to the local clients."""
        if self._upstream is None:  # dropped: what was still on the way is not trusted
            return
        in_flight = self.in_flight
        touched = set()
        mismatch = None
        for m in messages:
            pending = in_flight.pop(m.uid, None)
            if pending is None or pending.op != m.op:
                if pending is not None:
                    in_flight[m.uid] = pending
                mismatch = (f"reply uid={m.uid} {wire.OP_NAMES[m.op]} matches no "
                            "request in flight")
                break
            pending.reply = _encode_response(pending.uid, m.op, m.payload)
            local = pending.local
            if local.ready(pending):
                touched.add(local)
            elif local.gone:
                self.dropped_replies += 1
        for local in touched:
            local.flush()
        if mismatch is not None:
            self.malformed(f"malformed reply from the server: {mismatch}")


@implementer(IPushProducer)
class UpstreamProtocol(Protocol):
    """The connection to dc_server: its bytes become replies, its events the link's inputs."""

    def __init__(self, link: ServerLink):
        self.link = link
        self._decoder = wire.Decoder(expect=True)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self.link.connected_to(self)

    def connectionLost(self, reason) -> None:
        self.link.lost(reason.getErrorMessage())

    # IPushProducer: when the server stops reading, stop reading the local clients.
    def pauseProducing(self) -> None:
        self.link.full()

    def resumeProducing(self) -> None:
        self.link.ready()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        messages, error = self._decoder.receive(data)
        link = self.link
        if messages:
            link.answers(messages)
        if error is not None:
            link.malformed(f"malformed reply from the server: {error}")


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
            self._link.attempt_failed(failure.getErrorMessage())
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
            self.log.warn("closing local connection from {peer}: {error}",
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
