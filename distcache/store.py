"""The session store: what dc_server remembers, for how long, and what it forgets first.

The local store is a dict for lookups plus a heap ordered by expiry, so every operation
costs O(log n) whatever the number of sessions (the C server scans a sorted array).
Stale heap entries, left behind by REMOVE or by an id added again, are skipped lazily
and compacted away before they can outnumber the live ones, so memory stays bounded by
the session limit.

:class:`ISessionStore` is the seam for a shared store: its methods may return a
Deferred instead of a value, and the server keeps replies in request order either way.
"""

from __future__ import annotations

import heapq
import struct
from typing import Dict, List, Optional

from zope.interface import Interface, implementer

from distcache import wire


class ISessionStore(Interface):
    """Where sessions live.  Each method returns its answer, or a Deferred of it."""

    def add(session_id, data, timeout_ms):
        """Store a session; return a wire result byte (OK or ERR_MATCHING_SESSION)."""

    def get(session_id):
        """Return the session's data, or None when absent or expired."""

    def remove(session_id):
        """Forget a session; True when it was there."""

    def have(session_id):
        """True when the session is there and not expired."""

    def __len__():
        """How many sessions are held (expired ones may be counted until purged)."""


_EXPIRY = struct.Struct(">Q")


class _Record(bytes):
    """One stored session: expiry (8 bytes, big-endian), id length (1 byte), id, data.

    It hashes and compares equal as its id, so the dict can use the record itself as
    the key and no separate id object is kept.  Ordering (``<``, used by the heap) is
    plain bytes order: expiry first, ties broken by id.
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self[9:9 + self[8]])

    def __eq__(self, other) -> bool:
        # Against another record, the reflected call compares the two ids.
        return self[9:9 + self[8]] == other

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)


@implementer(ISessionStore)
class SessionStore:
    """A bounded, expiring session cache on one machine.

    ``clock`` provides ``seconds()`` (an ``IReactorTime``); expiry is measured in
    milliseconds of that clock, as the C server does.

    Each session is one object, a :class:`_Record` holding its expiry, id and data.
    The dict maps the id to the record (the record itself is the key) and the heap holds
    the same objects, so the heap's bytes order is expiry order and a heap entry is live
    exactly when the dict still maps its id to that very object.  One object per session
    instead of an id, two tuples and an int keeps a stored session near 130 bytes beyond
    its id and data (330 before).
    """

    def __init__(self, clock, max_sessions: int = 512):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._clock = clock
        self.max_sessions = max_sessions
        self._sessions: Dict[bytes, _Record] = {}  # id (the record, as key) -> record
        self._heap: List[bytes] = []               # records, live or stale
        self.evictions = 0
        self.expirations = 0
        self.bytes = 0  # data bytes held, for metrics

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session_id: bytes, data: bytes, timeout_ms: int) -> int:
        now = self._now_ms()
        sessions = self._sessions
        held = sessions.get(session_id)
        if held is not None:
            if _expiry(held) > now:
                return wire.ERR_MATCHING_SESSION
            del sessions[session_id]
            self.bytes -= _data_len(held)
            self.expirations += 1
        if len(sessions) >= self.max_sessions:
            self._make_room(now)
        record = _Record(b"".join((_EXPIRY.pack(now + timeout_ms), bytes((len(session_id),)),
                                   session_id, data)))
        sessions[record] = record
        self.bytes += len(data)
        heapq.heappush(self._heap, record)
        if len(self._heap) > 2 * len(sessions) + 64:
            self._compact()
        return wire.OK

    def get(self, session_id: bytes) -> Optional[bytes]:
        held = self._sessions.get(session_id)
        if held is None:
            return None
        if _unpack_expiry(held)[0] <= int(self._clock.seconds() * 1000):
            self._expire(session_id)
            return None
        return held[9 + held[8]:]

    def have(self, session_id: bytes) -> bool:
        held = self._sessions.get(session_id)
        if held is None:
            return False
        if _expiry(held) <= self._now_ms():
            self._expire(session_id)
            return False
        return True

    def remove(self, session_id: bytes) -> bool:
        held = self._sessions.pop(session_id, None)
        if held is None:
            return False
        self.bytes -= _data_len(held)
        if _expiry(held) <= self._now_ms():
            self.expirations += 1
            return False
        return True

    def purge(self) -> int:
        """Drop every expired session now; return how many went."""
        return self._drop_due(self._now_ms(), evict=0)

    def clear(self) -> int:
        """Forget every session (memcache ``flush_all``); return how many were held."""
        held = len(self._sessions)
        self._sessions.clear()
        self._heap = []
        self.bytes = 0
        return held

    def _expire(self, session_id: bytes) -> None:
        self.bytes -= _data_len(self._sessions.pop(session_id))
        self.expirations += 1

    def _make_room(self, now: int) -> None:
        """Drop the expired sessions, or failing that the one expiring soonest."""
        if not self._drop_due(now, evict=0):
            self._drop_due(now, evict=1)

    def _drop_due(self, now: int, evict: int) -> int:
        """Pop heap entries due by ``now`` (and ``evict`` live ones beyond that)."""
        heap = self._heap
        sessions = self._sessions
        dropped = 0
        while heap:
            record = heap[0]
            live = sessions.get(record) is record
            if live and _expiry(record) > now:
                if not evict:
                    break
                evict -= 1
                self.evictions += 1
            elif live:
                self.expirations += 1
            heapq.heappop(heap)
            if live:
                del sessions[record]
                self.bytes -= _data_len(record)
                dropped += 1
        return dropped

    def _compact(self) -> None:
        self._heap = list(self._sessions.values())
        heapq.heapify(self._heap)


_unpack_expiry = _EXPIRY.unpack_from


def _expiry(record: bytes) -> int:
    return _unpack_expiry(record)[0]


def _data_len(record: bytes) -> int:
    return len(record) - 9 - record[8]

