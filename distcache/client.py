"""The distcache client for Twisted programs: one connection, many requests in flight.

Every call sends its request at once and returns a Deferred; requests pipeline on the
connection and each reply is matched to its request by uid.  A reply that cannot be
matched, or bytes that are not a reply, mean the connection can no longer be trusted:
it is closed and every outstanding call fails with the reason.

    cache = yield connect(reactor, "UNIX:/tmp/scache")
    stored = yield cache.add(b"session-id", b"session data", 300000)
    data = yield cache.get(b"session-id")        # bytes, or None when absent

The blocking API for programs without a reactor is :mod:`distcache.blocking`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from distcache import address, wire
from distcache.replies import (CacheConnectionLost, CacheDisconnected, CacheError,
                               CacheUnavailable, MalformedReply, UnexpectedReply,
                               add_payload, check_id, read_reply)

__all__ = [
    "CacheClientProtocol", "connect", "CacheError", "CacheConnectionLost",
    "CacheUnavailable", "CacheDisconnected", "MalformedReply", "UnexpectedReply",
]

_UID_MASK = 0xFFFFFFFF


class CacheClientProtocol(Protocol):
    """A pipelining distcache client connection.

    ``add`` fires with True only when the server stored the session (result 0x00);
    ``add_status`` fires with the result byte itself.  ``get`` fires with the data or
    None, ``remove`` and ``has`` with True or False.  Failures are :class:`CacheError`.
    A call may be cancelled (``d.addTimeout(...)`` does so): its late reply is dropped
    and the connection carries on.
    """

    log = Logger(namespace="distcache.client")

    def __init__(self):
        self._decoder = wire.Decoder(expect=True)
        # uid -> (operation, Deferred), in the order the requests were sent.
        self._pending: "OrderedDict[int, tuple]" = OrderedDict()
        self._next_uid = 1
        self._lost: Optional[CacheError] = None
        self.connected = False

    # Calls --------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def add_status(self, session_id: bytes, data: bytes, timeout_ms: int) -> defer.Deferred:
        """Store a session; fires with the server's result byte."""
        try:
            payload = add_payload(session_id, data, timeout_ms)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        return self._request(wire.OP_ADD, payload)

    def add(self, session_id: bytes, data: bytes, timeout_ms: int) -> defer.Deferred:
        """Store a session; fires with True only when it was stored (0x00)."""
        return self.add_status(session_id, data, timeout_ms).addCallback(
            lambda status: status == wire.OK)

    def get(self, session_id: bytes) -> defer.Deferred:
        """Fetch a session's data; fires with bytes, or None when the cache lacks it."""
        return self._id_request(wire.OP_GET, session_id)

    def remove(self, session_id: bytes) -> defer.Deferred:
        """Forget a session; fires with True when it was there."""
        return self._id_request(wire.OP_REMOVE, session_id)

    def has(self, session_id: bytes) -> defer.Deferred:
        """Ask whether the cache holds a session; fires with True or False."""
        return self._id_request(wire.OP_HAVE, session_id)

    def close(self) -> None:
        """Hang up; calls still outstanding fail with :class:`CacheConnectionLost`."""
        if self.transport is not None:
            self.transport.loseConnection()

    def _id_request(self, op: int, session_id: bytes) -> defer.Deferred:
        try:
            session_id = check_id(session_id)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        return self._request(op, session_id)

    def _request(self, op: int, payload: bytes) -> defer.Deferred:
        if self._lost is not None:
            return defer.fail(self._lost)
        if not self.connected:
            return defer.fail(CacheConnectionLost("not connected"))
        pending = self._pending
        uid = self._next_uid
        while uid in pending:  # after a wrap, a uid may still await its reply
            uid = (uid + 1) & _UID_MASK
        self._next_uid = (uid + 1) & _UID_MASK
        d = defer.Deferred(lambda _: self._forget(uid))
        self._pending[uid] = (op, d)
        self.transport.write(wire.encode_request(uid, op, payload))
        return d

    def _forget(self, uid: int) -> None:
        """A cancelled call: its reply will still come, and is then dropped."""
        pending = self._pending.get(uid)
        if pending is not None:
            self._pending[uid] = (pending[0], None)

    # Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        if self._lost is not None:  # abandoned: what still arrives is not trusted
            return
        messages, error = self._decoder.receive(data)
        self._answer_all(messages)
        if error is not None and self._lost is None:
            self._abandon(MalformedReply(f"malformed reply: {error}"))

    def _answer_all(self, messages) -> None:
        for message in messages:
            if self._lost is not None:
                return
            pending = self._pending.pop(message.uid, None)
            if pending is None:
                self._abandon(UnexpectedReply(
                    f"reply with uid {message.uid}, which no request carries"))
                return
            op, d = pending
            if d is None:
                d = defer.Deferred()  # cancelled: check the reply, then drop it
                d.addErrback(lambda _: None)
            if message.op != op:
                self._abandon(UnexpectedReply(
                    f"{wire.OP_NAMES[message.op]} reply to a {wire.OP_NAMES[op]} request "
                    f"(uid {message.uid})"), d)
                return
            try:
                value = read_reply(op, message.payload)
            except CacheError as e:
                d.errback(e)
            else:
                d.callback(value)

    def _abandon(self, error: CacheError, first: Optional[defer.Deferred] = None) -> None:
        """The stream cannot be trusted: fail everything and hang up."""
        self.log.warn("closing cache connection: {error}", error=error)
        if first is not None:
            first.errback(error)
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail_all(self, error: CacheError) -> None:
        self._lost = error
        pending, self._pending = self._pending, OrderedDict()
        for _op, d in pending.values():
            if d is not None:
                d.errback(Failure(error))

    def connectionLost(self, reason=None) -> None:
        self.connected = False
        if self._lost is None:
            detail = reason.getErrorMessage() if reason is not None else "closed"
            self._fail_all(CacheConnectionLost(f"connection to the cache lost: {detail}"))


def connect(reactor, where: str) -> defer.Deferred:
    """Connect to a cache (libnal address or Twisted endpoint string).

    Fires with a connected :class:`CacheClientProtocol`.
    """
    endpoint = address.client_endpoint(reactor, address.parse(where))
    return endpoint.connect(Factory.forProtocol(CacheClientProtocol))
