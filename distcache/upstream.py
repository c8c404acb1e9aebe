"""dc_client's connection to dc_server, shared by every local client.

:class:`ServerLink` owns that connection's lifecycle as one table of states and inputs:
which server of the configured list it is connected to, when it tries the next one,
when it tries again and when it goes back to the first.  It also does the routing
across it: requests out with fresh upstream uids, replies back to the local request
they answer, empty answers while no server can be reached.
"""

from __future__ import annotations

import enum
from typing import Deque, Dict, List, Optional, Protocol as Interface, Sequence, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from distcache import wire
from distcache.address import address_text
from distcache.sending import send

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
    """Where dc_client stands with its servers."""

    STARTING = "starting"    # no server reached yet; attempts go down the list
    CONNECTED = "connected"  # requests are forwarded; on a later server, the earlier probed
    BLOCKED = "blocked"      # connected, but the server stops reading: locals are paused
    DROPPING = "dropping"    # the server sent nonsense: aborted, its close still to come
    AWAY = "away"            # lost or unreachable: requests are answered empty
    STOPPED = "stopped"      # the service stopped: no connection, no attempts


_S = LinkState
_INPUTS = ("start", "connected", "attempt_failed", "round_failed", "retry_due", "lost",
           "malformed", "full", "ready", "stop")

# The link's specification: (state, input) -> (next state, outputs in order).  Every
# input is listed for every state; "()" marks inputs that change nothing there.
#
# A round of attempts goes down the server list at once: ``attempt_failed`` says a
# later server is left to try, ``round_failed`` that none is.  While connected to a
# later server, the earlier ones are probed by such a round every retry period
# (``retry_due``); one that answers takes over (``connected``), and the connection it
# replaces finishes the requests in flight on it before it is closed.  Attempts and
# the retry timer are cancelled by every transition that leaves them meaningless.
_CONNECTED_ON = {
    "start": (_S.CONNECTED, ()),
    "connected": (_S.CONNECTED, ("_switch", "_say_switched", "_probe_later")),
    "attempt_failed": (_S.CONNECTED, ("_note_failure", "_try_next")),
    "round_failed": (_S.CONNECTED, ("_note_failure", "_retry_later")),
    "retry_due": (_S.CONNECTED, ("_try_first",)),
    "lost": (_S.AWAY, ("_cancel", "_answer_in_flight", "_begin_outage", "_say_lost",
                       "_reconnect")),
    "malformed": (_S.DROPPING, ("_cancel", "_abort", "_answer_in_flight", "_begin_outage",
                                "_say_dropped")),
    "full": (_S.BLOCKED, ("_pause_locals",)),
    "ready": (_S.CONNECTED, ()),
    "stop": (_S.STOPPED, ("_cancel", "_close")),
}

_TABLE = {
    (_S.STARTING, "start"): (_S.STARTING, ("_try_first",)),
    (_S.STARTING, "connected"): (_S.CONNECTED, ("_use", "_say_connected", "_probe_later")),
    (_S.STARTING, "attempt_failed"): (_S.STARTING, ("_note_failure", "_try_next")),
    (_S.STARTING, "round_failed"): (_S.AWAY, ("_note_failure", "_begin_outage",
                                              "_say_unreachable", "_retry_later")),
    (_S.STARTING, "retry_due"): (_S.STARTING, ()),
    (_S.STARTING, "lost"): (_S.STARTING, ()),
    (_S.STARTING, "malformed"): (_S.STARTING, ()),
    (_S.STARTING, "full"): (_S.STARTING, ()),
    (_S.STARTING, "ready"): (_S.STARTING, ()),
    (_S.STARTING, "stop"): (_S.STOPPED, ("_cancel",)),

    **{(_S.CONNECTED, name): row for name, row in _CONNECTED_ON.items()},

    (_S.BLOCKED, "start"): (_S.BLOCKED, ()),
    (_S.BLOCKED, "connected"): (_S.CONNECTED, ("_switch", "_resume_locals", "_say_switched",
                                               "_probe_later")),
    (_S.BLOCKED, "attempt_failed"): (_S.BLOCKED, ("_note_failure", "_try_next")),
    (_S.BLOCKED, "round_failed"): (_S.BLOCKED, ("_note_failure", "_retry_later")),
    (_S.BLOCKED, "retry_due"): (_S.BLOCKED, ("_try_first",)),
    (_S.BLOCKED, "lost"): (_S.AWAY, ("_cancel", "_answer_in_flight", "_resume_locals",
                                     "_begin_outage", "_say_lost", "_reconnect")),
    (_S.BLOCKED, "malformed"): (_S.DROPPING, ("_cancel", "_abort", "_answer_in_flight",
                                              "_resume_locals", "_begin_outage",
                                              "_say_dropped")),
    (_S.BLOCKED, "full"): (_S.BLOCKED, ()),
    (_S.BLOCKED, "ready"): (_S.CONNECTED, ("_resume_locals",)),
    (_S.BLOCKED, "stop"): (_S.STOPPED, ("_cancel", "_resume_locals", "_close")),

    (_S.DROPPING, "start"): (_S.DROPPING, ()),
    (_S.DROPPING, "connected"): (_S.CONNECTED, ("_use", "_say_back", "_probe_later")),
    (_S.DROPPING, "attempt_failed"): (_S.DROPPING, ()),
    (_S.DROPPING, "round_failed"): (_S.DROPPING, ()),
    (_S.DROPPING, "retry_due"): (_S.DROPPING, ()),
    (_S.DROPPING, "lost"): (_S.AWAY, ("_reconnect",)),
    (_S.DROPPING, "malformed"): (_S.DROPPING, ()),
    (_S.DROPPING, "full"): (_S.DROPPING, ()),
    (_S.DROPPING, "ready"): (_S.DROPPING, ()),
    (_S.DROPPING, "stop"): (_S.STOPPED, ("_cancel",)),

    (_S.AWAY, "start"): (_S.AWAY, ()),
    (_S.AWAY, "connected"): (_S.CONNECTED, ("_use", "_say_back", "_probe_later")),
    (_S.AWAY, "attempt_failed"): (_S.AWAY, ("_note_failure", "_try_next")),
    (_S.AWAY, "round_failed"): (_S.AWAY, ("_note_failure", "_remind", "_retry_later")),
    (_S.AWAY, "retry_due"): (_S.AWAY, ("_try_first",)),
    (_S.AWAY, "lost"): (_S.AWAY, ()),
    (_S.AWAY, "malformed"): (_S.AWAY, ()),
    (_S.AWAY, "full"): (_S.AWAY, ()),
    (_S.AWAY, "ready"): (_S.AWAY, ()),
    (_S.AWAY, "stop"): (_S.STOPPED, ("_cancel",)),

    (_S.STOPPED, "start"): (_S.STARTING, ("_try_first",)),
    (_S.STOPPED, "connected"): (_S.STOPPED, ("_refuse",)),
    (_S.STOPPED, "attempt_failed"): (_S.STOPPED, ()),
    (_S.STOPPED, "round_failed"): (_S.STOPPED, ()),
    (_S.STOPPED, "retry_due"): (_S.STOPPED, ()),
    (_S.STOPPED, "lost"): (_S.STOPPED, ()),
    (_S.STOPPED, "malformed"): (_S.STOPPED, ()),
    (_S.STOPPED, "full"): (_S.STOPPED, ()),
    (_S.STOPPED, "ready"): (_S.STOPPED, ()),
    (_S.STOPPED, "stop"): (_S.STOPPED, ()),
}
assert set(_TABLE) == {(state, i) for state in LinkState for i in _INPUTS}

#: While no server can be reached, a reminder at most this often (seconds).
REMINDER_INTERVAL = 300.0
#: Seconds a connection made during an outage must hold before the outage is called
#: over (at most the retry period): one outage is one "lost" and one "back" line.
SETTLE = 1.0


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

    The state (:class:`LinkState`) changes only through the inputs in ``_INPUTS``, as
    ``_TABLE`` says.  ``servers`` are tried in order: while the first cannot be reached
    the next is tried at once, and so on; when none answers, the round is repeated every
    ``retry`` seconds.  While connected to a later server, the earlier ones are probed
    every ``retry`` seconds and the first that answers takes over.

    The link hands out upstream uids (a wrapping 32-bit counter that skips uids still in
    flight), remembers which local request each in-flight uid belongs to (per server
    connection), and answers for the server while none is connected.  The log gets one
    line when a server goes, a reminder every :data:`REMINDER_INTERVAL` while none can
    be reached, and one line for each connection made, naming the server and why it is
    not the first when it is not.
    """

    log = Logger()

    def __init__(self, clock=None, server: str = "(unnamed)",
                 servers: Optional[Sequence[str]] = None, retry: float = 5.0):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.servers: List[str] = list(servers) if servers else [server]
        self.server = self.servers[0]
        self.retry = retry
        self.state = LinkState.STARTING
        self.locals: Set["LocalClient"] = set()
        #: clients of the link that are not connections (dc_client's memcache relay):
        #: paused and resumed with the locals, not counted among them
        self.stores: Set["LocalClient"] = set()
        self._upstream: Optional[UpstreamProtocol] = None  # set while CONNECTED or BLOCKED
        self._dropping: Optional[UpstreamProtocol] = None  # aborted, its close to come
        self._retiring: Set[UpstreamProtocol] = set()      # replaced, finishing their requests
        self._open: Set[UpstreamProtocol] = set()          # every server connection not closed
        self._endpoints: list = []
        self._factory = UpstreamFactory(self)
        self._attempt: Optional[Deferred] = None
        self._timer = None
        self._trying = 0            # the server index the current attempt is for
        self._at = 0                # the server index of the connection in use (or last used)
        self._was_at = 0            # ... when the last outage began
        self._failures: Dict[int, str] = {}
        self._closed_waiters: List[Deferred] = []
        self._next_uid = 1
        self._peer = self.server
        self._connected_at = 0.0
        self._away_since = 0.0
        self._reminded_at = 0.0
        self._settling = None   # the timer that calls an outage over (see SETTLE)
        self._flapped = False   # a connection made during the outage was lost at once
        self._answered_before = 0
        self._disconnected_now = 0
        self._replaced_peer = ""
        self._replaced_in_flight = 0
        # Counters, for logs and tests.
        self.forwarded = 0
        self.answered_unreachable = 0
        self.answered_disconnected = 0
        self.dropped_replies = 0
        self.connects = 0
        self.switches = 0

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

    @property
    def at(self) -> Optional[int]:
        """The index in ``servers`` of the server requests go to, while there is one."""
        return self._at if self._upstream is not None else None

    @property
    def in_flight(self) -> "Dict[int, Pending]":
        """The requests sent on the connection in use and not yet answered, by uid."""
        return self._upstream.in_flight if self._upstream is not None else {}

    @property
    def outstanding(self) -> int:
        """Requests sent to any server and not yet answered (a replaced one included)."""
        return sum(len(p.in_flight) for p in self._open)

    # Inputs.
    def _input(self, name: str, arg=None) -> None:
        self.state, outputs = _TABLE[self.state, name]
        for output in outputs:
            getattr(self, output)(arg)

    def start(self, endpoints: Sequence) -> None:
        """Begin connecting: ``endpoints`` are the servers' client endpoints, in order."""
        self._endpoints = list(endpoints)
        self._input("start")

    def stop(self) -> Deferred:
        """Close every server connection and stop trying; fires once all are closed."""
        self._input("stop")
        if not self._open:
            return succeed(None)
        d = Deferred()
        self._closed_waiters.append(d)
        return d

    def connected_to(self, protocol: "UpstreamProtocol") -> None:
        """A connection to a server is made."""
        self._open.add(protocol)
        self._input("connected", protocol)

    def lost(self, protocol: "UpstreamProtocol", why: str) -> None:
        """A server connection closed."""
        self._open.discard(protocol)
        if protocol is self._upstream:
            self._input("lost", why)
        elif protocol is self._dropping:
            self._dropping = None
            self._input("lost", why)
        else:  # replaced, or closed at stop: its requests get DISCONNECTED
            self._retiring.discard(protocol)
            self._answer(protocol)
        if not self._open and self._closed_waiters:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def malformed(self, protocol: "UpstreamProtocol", why: str) -> None:
        """A server sent something that is not an answer: drop that connection."""
        if protocol is self._upstream:
            self._input("malformed", why)
        elif protocol in self._retiring:
            self._retiring.discard(protocol)
            protocol.transport.abortConnection()
            n = self._answer(protocol)
            self.log.warn("dropped the replaced server connection to {peer}: {why}; {n} "
                          "requests in flight answered DISCONNECTED",
                          peer=address_text(protocol.transport.getPeer()), why=why, n=n)

    def full(self, protocol: "UpstreamProtocol") -> None:
        """A server connection's send buffer is full."""
        if protocol is self._upstream:
            self._input("full")

    def ready(self, protocol: "UpstreamProtocol") -> None:
        """A server connection's send buffer has drained."""
        if protocol is self._upstream:
            self._input("ready")

    def _attempt_made(self, protocol, d: Deferred) -> None:
        # ``connected`` came with the protocol's connectionMade, just before this.
        if d is self._attempt:
            self._attempt = None
        return None

    def _attempt_failed(self, failure, d: Deferred) -> None:
        if d is not self._attempt:   # cancelled or no longer wanted
            return None
        self._attempt = None
        # A round goes down the list to its end, or, while connected, up to the server
        # in use.
        end = self._at if self._upstream is not None else len(self._endpoints)
        self._input("attempt_failed" if self._trying + 1 < end else "round_failed",
                    failure.getErrorMessage())
        return None

    # Outputs: one step each.
    def _try_first(self, _arg=None) -> None:
        self._try(0)

    def _try_next(self, _arg=None) -> None:
        self._try(self._trying + 1)

    def _try(self, index: int) -> None:
        if not self._endpoints:   # a link driven by hand (tests) makes no attempts
            return
        self._trying = index
        d = self._endpoints[index].connect(self._factory)
        self._attempt = d
        d.addCallbacks(self._attempt_made, self._attempt_failed,
                       callbackArgs=(d,), errbackArgs=(d,))

    def _note_failure(self, why: str) -> None:
        self._failures[self._trying] = why

    def _retry_later(self, _arg=None) -> None:
        self._timer = self.clock.callLater(self.retry, self._input, "retry_due")

    def _probe_later(self, _arg=None) -> None:
        if self._at > 0 and self._endpoints:
            self._retry_later()

    def _reconnect(self, _why=None) -> None:
        """After a loss: a round from the first server at once, but a server that closed a
        connection younger than the retry period is not tried again before the period is
        over (the next one is tried at once), so one that accepts and closes at once does
        not make dc_client spin."""
        young = self._connected_at + self.retry - self.clock.seconds()
        if young <= 0:
            self._try_first()
        elif self._at + 1 < len(self._endpoints):
            self._try(self._at + 1)
        else:
            self._timer = self.clock.callLater(young, self._input, "retry_due")

    def _cancel(self, _arg=None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()

    def _use(self, protocol: "UpstreamProtocol") -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._attempt = None   # it fires with this protocol right after
        self._dropping = None  # a dropped connection's close no longer matters
        self._upstream = protocol
        self._at = self._trying
        self._failures.pop(self._at, None)
        self.connects += 1
        self._connected_at = self.clock.seconds()
        self._peer = address_text(protocol.transport.getPeer())

    def _switch(self, protocol: "UpstreamProtocol") -> None:
        """An earlier server answers: it takes new requests, the old one finishes its own."""
        old = self._upstream
        self._replaced_peer = self._peer
        self._replaced_in_flight = len(old.in_flight)
        if old.in_flight:
            self._retiring.add(old)
        else:
            old.transport.loseConnection()
        self._upstream = None
        self.switches += 1
        self._use(protocol)

    def _refuse(self, protocol: "UpstreamProtocol") -> None:
        protocol.transport.loseConnection()

    def _close(self, _arg=None) -> None:
        settling, self._settling = self._settling, None
        if settling is not None and settling.active():
            settling.cancel()
        self._upstream = None
        self._retiring.clear()
        for protocol in list(self._open):
            protocol.transport.loseConnection()

    def _abort(self, _why: str) -> None:
        self._dropping = self._upstream
        self._upstream.transport.abortConnection()

    def _answer_in_flight(self, _why: str) -> None:
        """Answer every request in flight on the connection in use with DISCONNECTED."""
        protocol, self._upstream = self._upstream, None
        self._disconnected_now = self._answer(protocol)

    def _answer(self, protocol: "UpstreamProtocol") -> int:
        in_flight, protocol.in_flight = protocol.in_flight, {}
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
        return len(in_flight)

    def _pause_locals(self, _arg=None) -> None:
        for local in [*self.locals, *self.stores]:
            local.pause(PAUSE_UPSTREAM)

    def _resume_locals(self, _arg=None) -> None:
        for local in [*self.locals, *self.stores]:
            local.resume(PAUSE_UPSTREAM)

    def _begin_outage(self, _why: str) -> None:
        settling, self._settling = self._settling, None
        if settling is not None and settling.active():
            # A connection made a moment ago is gone again (a server killed a moment
            # ago may still accept, then reset): the outage that was ending goes on.
            settling.cancel()
            self._flapped = True
            return
        self._was_at = self._at
        self._away_since = self._reminded_at = self.clock.seconds()
        self._answered_before = self.answered_unreachable

    # Log lines.
    def _why_not_earlier(self) -> str:
        """Why the servers before the one in use are not used, for the log."""
        return "; ".join(f"{self.servers[i]}: {self._failures[i]}"
                         for i in range(self._at) if i in self._failures)

    def _which(self) -> str:
        return "" if len(self.servers) == 1 else f" (server {self._at + 1} of {len(self.servers)})"

    def _reasons(self, why: str) -> str:
        return "; ".join(f"{s}: {self._failures.get(i, why)}"
                         for i, s in enumerate(self.servers))

    def _unreachable_text(self, why: str) -> str:
        if len(self.servers) == 1:
            return f"the server at {self.server} ({why})"
        return f"any server ({self._reasons(why)})"

    @property
    def _until(self) -> str:
        return "it is back" if len(self.servers) == 1 else "a server answers"

    def _say_connected(self, _protocol) -> None:
        if self._at == 0:
            self.log.info("connected to the server at {peer}", peer=self._peer)
        else:
            self.log.info("connected to the server at {peer}{which}, since {why}",
                          peer=self._peer, which=self._which(), why=self._why_not_earlier())

    def _say_unreachable(self, why: str) -> None:
        self.log.warn("cannot reach {what}; answering requests empty until {until}",
                      what=self._unreachable_text(why), until=self._until)

    def _say_lost(self, why: str) -> None:
        if self._flapped:
            self._flapped = False
            return
        self.log.warn("lost the server at {peer} ({why}); {n} requests in flight answered "
                      "DISCONNECTED, later ones empty until {until}",
                      peer=self._peer, why=why, n=self._disconnected_now, until=self._until)

    def _say_dropped(self, why: str) -> None:
        if self._flapped:
            self._flapped = False
            return
        self.log.warn("dropped the server connection to {peer}: {why}; {n} requests in flight "
                      "answered DISCONNECTED, later ones empty until {until}",
                      peer=self._peer, why=why, n=self._disconnected_now, until=self._until)

    def _remind(self, why: str) -> None:
        now = self.clock.seconds()
        if now - self._reminded_at < REMINDER_INTERVAL:
            return
        self._reminded_at = now
        if len(self.servers) == 1:
            what = f"the server at {self.server} is still unreachable"
        else:
            what = "no server is reachable"
        self.log.warn("{what} after {away} ({why}); {n} requests answered empty so far",
                      what=what, away=duration_text(now - self._away_since),
                      why=why if len(self.servers) == 1 else self._reasons(why),
                      n=self.answered_unreachable - self._answered_before)

    def _say_back(self, _protocol) -> None:
        """Say the outage is over once the new connection has held for SETTLE seconds."""
        self._settling = self.clock.callLater(min(SETTLE, self.retry), self._settled)

    def _settled(self) -> None:
        self._settling = None
        if self._at == self._was_at:
            what, since = "the server at {peer}{which} is back", ""
        else:
            what = "switched to the server at {peer}{which}"
            since = f", since {self._why_not_earlier()}" if self._at > 0 else ""
        self.log.info(what + " after {away}{since}; {n} requests were answered empty "
                      "meanwhile", peer=self._peer, which=self._which(),
                      away=duration_text(self.clock.seconds() - self._away_since),
                      since=since, n=self.answered_unreachable - self._answered_before)

    def _say_switched(self, _protocol) -> None:
        self.log.info("switched to the server at {peer}{which}, which answers again; the "
                      "connection to {old} finishes its {n} requests in flight and closes",
                      peer=self._peer, which=self._which(), old=self._replaced_peer,
                      n=self._replaced_in_flight)

    # Requests from local clients, replies from the server.
    def relay(self, local: "LocalClient", messages: List[wire.Message]) -> None:
        """Forward one read's worth of requests, or answer them when no server is connected."""
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
        in_flight = upstream.in_flight
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
        send(upstream.transport, _EMPTY.join(out))

    def answers(self, protocol: "UpstreamProtocol", messages: List[wire.Message]) -> None:
        """Route one read's worth of replies from ``protocol`` back to the local clients."""
        retiring = protocol in self._retiring
        if protocol is not self._upstream and not retiring:
            return  # dropped or closing: what was still on the way is not trusted
        in_flight = protocol.in_flight
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
            self.malformed(protocol, f"malformed reply from the server: {mismatch}")
        elif retiring and not in_flight:
            self._retiring.discard(protocol)
            protocol.transport.loseConnection()


@implementer(IPushProducer)
class UpstreamProtocol(Protocol):
    """A connection to dc_server: its bytes become replies, its events the link's inputs."""

    def __init__(self, link: ServerLink):
        self.link = link
        self.in_flight: Dict[int, Pending] = {}   # requests sent on it, by upstream uid
        self._decoder = wire.Decoder(expect=True)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.transport.registerProducer(self, True)
        self.link.connected_to(self)

    def connectionLost(self, reason) -> None:
        self.link.lost(self, reason.getErrorMessage())

    # IPushProducer: when the server stops reading, stop reading the local clients.
    def pauseProducing(self) -> None:
        self.link.full(self)

    def resumeProducing(self) -> None:
        self.link.ready(self)

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        messages, error = self._decoder.receive(data)
        link = self.link
        if messages:
            link.answers(self, messages)
        if error is not None:
            link.malformed(self, f"malformed reply from the server: {error}")


class UpstreamFactory(Factory):
    """Builds the server connections the link asks its endpoints for."""

    noisy = False

    def __init__(self, link: ServerLink):
        self.link = link

    def buildProtocol(self, addr) -> UpstreamProtocol:
        protocol = UpstreamProtocol(self.link)
        protocol.factory = self
        return protocol
