"""dc_client's memcache listener: a session store that lives on the other side of the link.

:class:`RelayStore` turns store calls into distcache requests on dc_client's one
upstream connection (the :class:`~distcache.proxy.ServerLink` every local client
shares), so memcache and distcache clients of one host share one server connection,
and the server may be this suite's dc_server or the C one.  To the link it looks like
one more local connection: requests go out through ``relay``, replies come back in
request order through ``ready`` and ``flush``, and when the server connection is full
every memcache connection stops being read until it drains, as the local ones do.

While the server is away a GET is a miss (the client makes a full handshake) and a
write is refused with ``SERVER_ERROR``, mirroring dc_client's empty answers.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Tuple

from twisted.internet import defer
from zope.interface import implementer

from distcache import wire
from distcache.memcache_server import StoreUnavailable
from distcache.store import ISessionStore

UID_MASK = 0xFFFFFFFF
_FRAME_ONE = wire.HEADER_SIZE + wire.FRAME_MAX
_DISCONNECTED = bytes((wire.DISCONNECTED,))


def _payload(framed: bytes) -> bytes:
    """The payload of one framed reply (as the link hands it on)."""
    if len(framed) <= _FRAME_ONE:
        return framed[wire.HEADER_SIZE:]
    return wire.Decoder(expect=True).feed(framed)[0].payload


def _unavailable(payload: bytes) -> StoreUnavailable:
    if payload == _DISCONNECTED:
        return StoreUnavailable("distcache server connection lost")
    return StoreUnavailable("distcache server unavailable")


_NOT_DATA = (b"\x01", _DISCONNECTED, b"")  # miss, connection lost, server away


def _get(payload: bytes):
    # A value of exactly one byte 0x01 or 0x02 cannot be told from these answers
    # (see distcache.replies); TLS sessions are far longer.
    return None if payload in _NOT_DATA else payload


def _add(payload: bytes):
    if len(payload) != 1 or payload == _DISCONNECTED:
        raise _unavailable(payload)
    return payload[0]


def _flag(payload: bytes) -> bool:
    if payload not in (b"\x00", b"\x01"):
        raise _unavailable(payload)
    return payload == b"\x00"


@implementer(ISessionStore)
class RelayStore:
    """Store calls as requests on dc_client's shared upstream link.

    To the link it is a :class:`distcache.upstream.LocalClient`.
    """

    def __init__(self, link):
        self.link = link
        link.stores.add(self)
        #: The MemcacheFactory whose connections make the requests (it is paused and
        #: resumed with the server connection); set by whoever builds it.
        self.front = None
        # What the link expects of a local connection:
        self.waiting: Deque = deque()
        self.gone = False
        self._calls: Deque[Tuple[defer.Deferred, object]] = deque()
        self._answered: List = []
        self._uid = 0
        # Counters.
        self.requests = 0
        self.offline = 0

    def _call(self, op: int, payload: bytes, parse) -> defer.Deferred:
        d = defer.Deferred()
        self._calls.append((d, parse))
        self._uid = (self._uid + 1) & UID_MASK
        self.requests += 1
        self.link.relay(self, [wire.Message(False, self._uid, op, payload)])
        return d

    # ISessionStore.
    def add(self, session_id: bytes, data: bytes, timeout_ms: int) -> defer.Deferred:
        return self._call(wire.OP_ADD, wire.encode_add_payload(session_id, data, timeout_ms),
                          _add)

    def get(self, session_id: bytes) -> defer.Deferred:
        return self._call(wire.OP_GET, session_id, _get)

    def remove(self, session_id: bytes) -> defer.Deferred:
        return self._call(wire.OP_REMOVE, session_id, _flag)

    def have(self, session_id: bytes) -> defer.Deferred:
        return self._call(wire.OP_HAVE, session_id, _flag)

    def clear(self):
        raise StoreUnavailable("flush_all cannot pass through dc_client: distcache has "
                               "no such operation")

    def __len__(self) -> int:
        return 0

    # The link's side: replies, in request order.
    def ready(self, pending) -> bool:
        waiting = self.waiting
        if not waiting or waiting[0] is not pending:
            return False
        while waiting and waiting[0].reply is not None:
            self._answered.append(waiting.popleft().reply)
        return True

    def flush(self) -> None:
        answered, self._answered = self._answered, []
        self._fire(answered)

    def write_now(self, replies: List[bytes]) -> None:
        """The link answers at once for a server it cannot reach."""
        self._fire(replies)

    def _fire(self, replies: List[bytes]) -> None:
        for framed in replies:
            d, parse = self._calls.popleft()
            payload = _payload(framed)
            if payload in (b"", _DISCONNECTED):
                self.offline += 1
            try:
                result = parse(payload)
            except StoreUnavailable as e:
                d.errback(e)
            else:
                d.callback(result)

    def pause(self, reason: int) -> None:
        """The link's back-pressure: the server stops reading, so the memcache clients wait."""
        if self.front is not None:
            self.front.store_full()

    def resume(self, reason: int) -> None:
        if self.front is not None:
            self.front.store_ready()


def relay_stats(link, relay: RelayStore):
    """dc_client's part of the memcache stats reply."""

    def pairs() -> list:
        return [
            ("distcache_upstream_up", int(link.connected)),
            ("distcache_requests_relayed", link.forwarded),
            ("distcache_offline_answers", link.answered_unreachable),
            ("distcache_in_flight", link.outstanding),
            ("distcache_local_connections", len(link.locals)),
        ]

    return pairs
