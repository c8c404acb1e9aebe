"""dc_server: the distcache protocol answered from a session store.

Each connection decodes requests and answers them in order.  Answers already in hand
are written at once, batched per read; when the store answers with a Deferred, later
answers wait behind it so the order is kept.  A connection whose peer stops reading is
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


@implementer(IPushProducer)
class CacheServerProtocol(Protocol):
    """One client connection to the cache."""

    log = Logger()

    def __init__(self):
        self._decoder = wire.Decoder(expect=False)
        # Replies waiting behind an unanswered Deferred, in request order.
        self._queue: Optional[Deque] = None
        self._closing = False

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason) -> None:
        self.factory.connections -= 1
        self._queue = None

    # IPushProducer: the transport pauses us when its send buffer fills.
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        messages, error = self._decoder.receive(data)
        out: List[bytes] = []
        try:
            for message in messages:
                self._answer(message, out)
        except wire.ProtocolError as e:
            error = e
        if out:
            self.transport.write(b"".join(out))
        factory = self.factory
        factory.activity.operations += len(messages)
        factory.activity.counted()
        if error is not None:
            self._fail(error)

    def _answer(self, message: wire.Message, out: List[bytes]) -> None:
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
        if self._queue is None and not isinstance(result, defer.Deferred):
            out.append(_reply(message, result))
            return
        if self._queue is None:
            self._queue = deque()
        slot = [message, result]
        self._queue.append(slot)
        if isinstance(result, defer.Deferred):
            result.addBoth(self._resolved, slot)

    def _resolved(self, result, slot) -> None:
        slot[1] = result
        queue = self._queue
        if queue is None:  # connection gone
            return
        out = []
        while queue and not isinstance(queue[0][1], defer.Deferred):
            message, answer = queue.popleft()
            if isinstance(answer, Failure):
                self.log.failure("session store failed", answer)
                self._fail(wire.ProtocolError("session store failure"))
                return
            out.append(_reply(message, answer))
        if not queue:
            self._queue = None
        if out:
            self.transport.write(b"".join(out))

    def _fail(self, error: wire.ProtocolError) -> None:
        self.factory.protocol_errors += 1
        peer = self.transport.getPeer()
        self.log.warn("closing connection from {peer}: {error}", peer=peer, error=error)
        self._closing = True
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
