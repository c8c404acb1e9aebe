"""dc_client's connection to dc_server, shared by every local client.

:class:`ServerLink` owns that connection's lifecycle as one table of states and inputs
and does the routing across it: requests out with fresh upstream uids, replies back
to the local request they answer, empty answers while the server is away.
"""

from __future__ import annotations

import enum
from typing import Deque, Dict, List, Optional, Protocol as Interface, Set

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


class LocalClient(Interface):
    """What the link needs of a local connection (``distcache.proxy.LocalProtocol``)."""

    waiting: "Deque[Pending]"
    gone: bool

    def ready(self, pending: "Pending") -> bool: ...

    def flush(self) -> None: ...

    def write_now(self, replies: List[bytes]) -> None: ...

    def pause(self, reason: int) -> None: ...

    def resume(self, reason: int) -> None: ...


class Pending:
    """One local request awaiting its reply; ``reply`` holds the framed answer once known."""

    __slots__ = ("local", "uid", "op", "reply")

    def __init__(self, local: "LocalClient", uid: int, op: int, reply: Optional[bytes] = None):
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
        self.locals: Set["LocalClient"] = set()
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
        self.connects = 0

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
        self.connects += 1
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
    def relay(self, local: "LocalClient", messages: List[wire.Message]) -> None:
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
