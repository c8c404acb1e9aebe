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
from typing import Dict, List, Optional, Tuple

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


@implementer(ISessionStore)
class SessionStore:
    """A bounded, expiring session cache on one machine.

    ``clock`` provides ``seconds()`` (an ``IReactorTime``); expiry is measured in
    milliseconds of that clock, as the C server does.
    """

    def __init__(self, clock, max_sessions: int = 512):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._clock = clock
        self.max_sessions = max_sessions
        # id -> (expiry_ms, data)
        self._sessions: Dict[bytes, Tuple[int, bytes]] = {}
        # (expiry_ms, id); an entry is live only if _sessions[id][0] == expiry_ms
        self._heap: List[Tuple[int, bytes]] = []
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
            if held[0] > now:
                return wire.ERR_MATCHING_SESSION
            del sessions[session_id]
            self.bytes -= len(held[1])
            self.expirations += 1
        if len(sessions) >= self.max_sessions:
            self._make_room(now)
        expiry = now + timeout_ms
        sessions[session_id] = (expiry, data)
        self.bytes += len(data)
        heapq.heappush(self._heap, (expiry, session_id))
        if len(self._heap) > 2 * len(sessions) + 64:
            self._compact()
        return wire.OK

    def get(self, session_id: bytes) -> Optional[bytes]:
        held = self._sessions.get(session_id)
        if held is None:
            return None
        if held[0] <= self._now_ms():
            self._expire(session_id)
            return None
        return held[1]

    def have(self, session_id: bytes) -> bool:
        return self.get(session_id) is not None

    def remove(self, session_id: bytes) -> bool:
        held = self._sessions.pop(session_id, None)
        if held is None:
            return False
        self.bytes -= len(held[1])
        if held[0] <= self._now_ms():
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
        self.bytes -= len(self._sessions.pop(session_id)[1])
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
            expiry, sid = heap[0]
            held = sessions.get(sid)
            live = held is not None and held[0] == expiry
            if live and expiry > now:
                if not evict:
                    break
                evict -= 1
                self.evictions += 1
            elif live:
                self.expirations += 1
            heapq.heappop(heap)
            if live:
                del sessions[sid]
                self.bytes -= len(held[1])
                dropped += 1
        return dropped

    def _compact(self) -> None:
        sessions = self._sessions
        self._heap = [(exp, sid) for sid, (exp, _) in sessions.items()]
        heapq.heapify(self._heap)
