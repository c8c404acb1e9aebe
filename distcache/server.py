"""dc_server: the distcache protocol answered from a session store.

Each connection decodes requests and answers them in order.  Answers already in hand
are written at once, batched per read; when the store answers with a Deferred, later
answers wait behind it so the order is kept.  A malformed request closes the connection
once everything before it is answered; a store failure closes it at once, after the
answers that were ready before the failed one.  A connection whose peer stops reading is
paused (it is its own transport's producer): it reads no more, and answers no more of
what it has read beyond one batch, so memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional, Set

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from distcache import wire
from distcache.address import address_text
from distcache.ratelimit import RateLimitedLogs

_NOTOK = b"\x01"
_OK = b"\x00"
_encode_response = wire.encode_response


class ActivityReport:
    """The C server's activity line, at most once a second or every ``progress`` operations."""

    log = Logger()

    def __init__(self, store, progress: int = 0):
        self._store = store
        self.progress = progress
        self.operations = 0
        self._reported_ops = 0
        self._reported_sessions = 0

    def counted(self) -> None:
        """Call after operations were counted; reports when ``progress`` more are done."""
        if self.progress and self.operations - self._reported_ops >= self.progress:
            self.report()

    def tick(self) -> None:
        """The once-a-second check: report if anything changed."""
        if (self.operations != self._reported_ops
                or len(self._store) != self._reported_sessions):
            self.report()

    def line(self) -> str:
        sessions = len(self._store)
        delta = sessions - self._reported_sessions
        return ("Info, total operations = %7lu  (+ %5lu), total sessions = %5u  (%c%3u)"
                % (self.operations, self.operations - self._reported_ops, sessions,
                   "-" if delta < 0 else "+", abs(delta)))

    def report(self) -> None:
        self.log.info("{line}", line=self.line())
        self._reported_ops = self.operations
        self._reported_sessions = len(self._store)


# A connection's states.  OPEN: requests are read and answered.  DRAINING: the input
# was malformed; replies to what came before it are still awaited and written, then the
# connection closes.  CLOSED: closing or gone; nothing more is read or written.
OPEN, DRAINING, CLOSED = "open", "draining", "closed"
_PENDING = object()  # an answer the store has not given yet
# Replies are handed to the transport at least every this many requests, so that a
# paused transport stops the answering within one batch (at most 64 large sessions).
_BATCH_MASK = 63


@implementer(IPushProducer)
class CacheServerProtocol(Protocol):
    """One client connection to the cache."""

    log = Logger()

    def __init__(self):
        self._decoder = wire.Decoder(expect=False)
        # [message, answer] slots behind an unanswered Deferred, in request order; the
        # head is always still pending, so anything resolved behind it waits its turn.
        self._queue: Deque[list] = deque()
        self.state = OPEN
        self._fault: Optional[str] = None
        # Requests decoded but not yet answered because the peer is not reading its
        # replies (the transport paused us): answered when it resumes us, in order.
        self._paused = False
        self._held: List[wire.Message] = []
        self._held_error: Optional[wire.ProtocolError] = None
        # Set by every read; the factory's idle sweep clears it and counts quiet sweeps.
        self.active = True
        self.quiet = 0

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections += 1
        factory.open.add(self)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason) -> None:
        self.factory.connections -= 1
        self.factory.open.discard(self)
        self.state = CLOSED
        self._queue.clear()
        self._held = []

    # IPushProducer: the transport pauses us when its send buffer fills.  Then neither
    # is more read nor, past the next few replies, more answered: a peer that pipelines
    # requests for large sessions and never reads costs a bounded amount of memory.
    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._held and self.state is OPEN:
            held, self._held = self._held, []
            error, self._held_error = self._held_error, None
            self._answer_all(held, error)
        if not self._paused and not self._held:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.active = True
        if self.state is not OPEN:
            return
        messages, error = self._decoder.receive(data)
        if self._held:  # still answering an earlier read: these wait behind it
            self._held += messages
            if error is not None:
                self._held_error = error
            return
        self._answer_all(messages, error)

    def _answer_all(self, messages: List[wire.Message], error) -> None:
        """Answer ``messages`` in order; hold the rest when the transport pauses us."""
        out: List[bytes] = []
        failure = None
        answer = self._answer
        done = 0
        try:
            for message in messages:
                failure = answer(message, out)
                done += 1
                if failure is not None:
                    break
                if not done & _BATCH_MASK and out:
                    # hand a batch over; the transport pauses us once its buffer is full
                    self.transport.write(b"".join(out))
                    out = []
                    if self._paused and done < len(messages):
                        self._held = messages[done:]
                        self._held_error, error = error, None
                        break
        except wire.ProtocolError as e:
            error = e
        if out:
            self.transport.write(b"".join(out))
        factory = self.factory
        factory.activity.operations += done
        factory.activity.counted()
        if failure is not None:
            self._store_failed(failure)
        elif error is not None:
            factory.protocol_errors += 1
            if self._queue:
                self.state = DRAINING
                self._fault = str(error)
            else:
                self._close(str(error))

    def _answer(self, message: wire.Message, out: List[bytes]) -> Optional[Failure]:
        """Answer one request into ``out``, or queue it behind a pending answer.

        Returns the store's failure when it failed at once.
        """
        store = self.factory.store
        op = message.op
        payload = message.payload
        if op == wire.OP_GET:
            result = store.get(payload)
        elif op == wire.OP_HAVE:
            result = store.have(payload)
        elif op == wire.OP_REMOVE:
            result = store.remove(payload)
        else:
            request = wire.parse_add(payload)
            if isinstance(request, int):
                result = request
            else:
                result = store.add(request.session_id, request.data, request.timeout_ms)
        queue = self._queue
        if isinstance(result, defer.Deferred):
            slot = [message, _PENDING]
            result.addBoth(self._resolved, slot)  # may fire at once
            if slot[1] is _PENDING or queue:
                queue.append(slot)
                return None
            result = slot[1]
        elif queue:
            queue.append([message, result])
            return None
        if isinstance(result, Failure):
            return result
        out.append(_reply(message, result))
        return None

    def _resolved(self, result, slot) -> None:
        slot[1] = result
        if self.state is not CLOSED:
            self._drain()

    def _drain(self) -> None:
        """Write the answers now at the head of the queue; close if that was all."""
        queue = self._queue
        out = []
        failure = None
        while queue and queue[0][1] is not _PENDING:
            message, answer = queue.popleft()
            if isinstance(answer, Failure):
                failure = answer
                break
            out.append(_reply(message, answer))
        if out:
            self.transport.write(b"".join(out))
        if failure is not None:
            self._store_failed(failure)
        elif not queue and self.state is DRAINING:
            self._close(self._fault)

    @property
    def busy(self) -> bool:
        """Requests still being answered: not idle, however long the peer is quiet."""
        return bool(self._held or self._queue or self._paused)

    def close_idle(self) -> None:
        """The idle sweep found nothing read for the idle timeout: hang up."""
        self.factory.idle_closed += 1
        self.state = CLOSED
        self.transport.loseConnection()

    def _store_failed(self, failure: Failure) -> None:
        self.log.failure("session store failed", failure)
        self._close("session store failure", "connections closed on a store failure")

    def _close(self, why: str, kind: str = "malformed connections") -> None:
        self.factory.warnings[kind].warn("closing connection from {peer}: {why}",
                                         peer=address_text(self.transport.getPeer()), why=why)
        self.state = CLOSED
        self._queue.clear()
        self._held = []
        self.transport.loseConnection()


def _reply(message: wire.Message, result) -> bytes:
    op = message.op
    if op == wire.OP_GET:
        payload = _NOTOK if result is None else result
    elif op == wire.OP_ADD:
        payload = bytes((result,))
    else:
        payload = _OK if result else _NOTOK
    return _encode_response(message.uid, op, payload)


class CacheServerFactory(Factory):
    """What the connections of one dc_server share: the store and the counters."""

    protocol = CacheServerProtocol
    noisy = False
    log = Logger()

    def __init__(self, store, progress: int = 0, clock=None, idle_timeout: float = 0):
        self.store = store
        self.connections = 0
        self.open: Set[CacheServerProtocol] = set()
        self.protocol_errors = 0
        self.idle_closed = 0
        self.activity = ActivityReport(store, progress)
        if clock is None:
            from twisted.internet import reactor as clock
        self.warnings = RateLimitedLogs(CacheServerProtocol.log, clock)
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._ticker: Optional[LoopingCall] = None
        self._sweeper: Optional[LoopingCall] = None

    def _looping(self, call, interval: float) -> LoopingCall:
        loop = LoopingCall(call)
        if self._clock is not None:
            loop.clock = self._clock
        loop.start(interval, now=False)
        return loop

    def startFactory(self) -> None:
        if self._ticker is None:
            self._ticker = self._looping(self.activity.tick, 1.0)
        if self._sweeper is None and self.idle_timeout > 0:
            self._sweeper = self._looping(self.sweep_idle, self.idle_timeout / 2)

    def sweep_idle(self) -> None:
        """Every half idle-timeout: close what nothing was read from for two sweeps running.

        A flag per read rather than a timer per connection keeps reads cheap; a
        connection is closed after between one and one and a half idle-timeouts.
        """
        idle = []
        for protocol in self.open:
            if protocol.active or protocol.busy:
                protocol.active = False
                protocol.quiet = 0
            else:
                protocol.quiet += 1
                if protocol.quiet >= 2:
                    idle.append(protocol)
        for protocol in idle:
            protocol.close_idle()
        if idle:
            self.log.info("closed {n} connections idle for {seconds:g} s or more (--idle-timeout)",
                          n=len(idle), seconds=self.idle_timeout)

    def stopFactory(self) -> None:
        self.activity.tick()  # the last changes before shutdown are reported too
        self.warnings.stop()
        for name in ("_ticker", "_sweeper"):
            loop = getattr(self, name)
            if loop is not None and loop.running:
                loop.stop()
            setattr(self, name, None)
