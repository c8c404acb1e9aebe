"""dc_server: the distcache protocol answered from a session store.

Each connection decodes requests and answers them in order.  Answers already in hand
are written at once, batched per read; when the store answers with a Deferred, later
answers wait behind it so the order is kept.  A malformed request closes the connection
once everything before it is answered; a store failure closes it at once, after the
answers that were ready before the failed one.  A connection whose peer stops reading is
paused (it is its own transport's producer), so memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from distcache import wire
from distcache.address import address_text
from distcache.sending import send

_NOTOK = b"\x01"
_OK = b"\x00"
_encode_response = wire.encode_response
_pack_header = wire.HEADER.pack
_LEVEL, _FRAME_MAX, _GET, _ADD = wire.PROTO_LEVEL, wire.FRAME_MAX, wire.OP_GET, wire.OP_ADD
_RESULT_BYTES = [bytes((n,)) for n in range(256)]
# Answers that are values, not Deferreds or Failures: checked by exact type, since
# isinstance against Deferred (a generic class) goes through the ABC machinery.
_PLAIN = frozenset((bytes, bool, int, type(None)))


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

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason) -> None:
        self.factory.connections -= 1
        self.state = CLOSED
        self._queue.clear()

    # IPushProducer: the transport pauses us when its send buffer fills.
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self.state is not OPEN:
            return
        messages, error = self._decoder.receive(data)
        out: List[bytes] = []
        failure = None
        try:
            for message in messages:
                failure = self._answer(message, out)
                if failure is not None:
                    break
        except wire.ProtocolError as e:
            error = e
        if out:
            send(self.transport, b"".join(out))
        factory = self.factory
        factory.activity.operations += len(messages)
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
        if type(result) in _PLAIN:  # the local store's answers: no Deferred, no Failure
            if queue:
                queue.append([message, result])
            else:
                out.append(_reply(message, result))
            return None
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
            send(self.transport, b"".join(out))
        if failure is not None:
            self._store_failed(failure)
        elif not queue and self.state is DRAINING:
            self._close(self._fault)

    def _store_failed(self, failure: Failure) -> None:
        self.log.failure("session store failed", failure)
        self._close("session store failure")

    def _close(self, why: str) -> None:
        self.log.warn("closing connection from {peer}: {why}",
                      peer=address_text(self.transport.getPeer()), why=why)
        self.state = CLOSED
        self._queue.clear()
        self.transport.loseConnection()


def _reply(message: wire.Message, result) -> bytes:
    op = message.op
    if op == _GET:
        payload = _NOTOK if result is None else result
    elif op == _ADD:
        payload = _RESULT_BYTES[result]
    else:
        payload = _OK if result else _NOTOK
    size = len(payload)
    if size <= _FRAME_MAX:  # one frame, framed here without encode's checks
        return _pack_header(_LEVEL, 1, message.uid, 0, op, 1, size) + payload
    return _encode_response(message.uid, op, payload)


class CacheServerFactory(Factory):
    """What the connections of one dc_server share: the store and the counters."""

    protocol = CacheServerProtocol
    noisy = False

    def __init__(self, store, progress: int = 0, clock=None):
        self.store = store
        self.connections = 0
        self.protocol_errors = 0
        self.activity = ActivityReport(store, progress)
        self._clock = clock
        self._ticker: Optional[LoopingCall] = None

    def startFactory(self) -> None:
        if self._ticker is None:
            self._ticker = LoopingCall(self.activity.tick)
            if self._clock is not None:
                self._ticker.clock = self._clock
            self._ticker.start(1.0, now=False)

    def stopFactory(self) -> None:
        self.activity.tick()  # the last changes before shutdown are reported too
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
