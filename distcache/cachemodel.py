"""What a cache must hold, as far as a client that alone uses it can know.

dc_test checks every answer against this model.  Unlike the C tool's, it knows that
sessions expire and that a full cache evicts: where the cache may lawfully answer
either way (a session near its expiry, or one that a full cache may have evicted), both
answers are accepted and the answer teaches the model which it was.

Times are the client's own monotonic seconds.  An operation is known only to have
reached the server somewhere between ``sent`` and ``answered``, so an ADD's expiry lies
in ``[sent + timeout, answered + timeout]``; ``slack`` widens that window for clocks
that tick at slightly different rates.
"""

from __future__ import annotations

import enum
from typing import List, Optional


class Presence(enum.Enum):
    ABSENT = "absent"
    PRESENT = "present"
    EITHER = "present or absent"


class Surprise(Exception):
    """The cache answered what it must not have."""


class Session:
    """One test session and what is known of it."""

    __slots__ = ("session_id", "data", "held", "expiry_lo", "expiry_hi", "evictable")

    def __init__(self, session_id: bytes, data: bytes):
        self.session_id = session_id
        self.data = data
        self.held = False          # last known to be in the cache (maybe since expired)
        self.expiry_lo = 0.0
        self.expiry_hi = 0.0
        self.evictable = False     # a full cache may have dropped it since

    def presence(self, sent: float, answered: float, slack: float) -> Presence:
        if not self.held or sent >= self.expiry_hi + slack:
            return Presence.ABSENT
        if answered < self.expiry_lo - slack and not self.evictable:
            return Presence.PRESENT
        return Presence.EITHER


class CacheModel:
    """The sessions of one test run, checked operation by operation.

    ``capacity`` is how many sessions the cache holds at most (0: no limit).  Each
    ``*_done`` method takes the operation's send and answer times and the answer, and
    raises :class:`Surprise` when the answer is impossible.
    """

    def __init__(self, sessions: List[Session], capacity: int = 0, slack: float = 0.25):
        self.sessions = sessions
        self.capacity = capacity
        self.slack = slack
        self.held = sum(1 for s in sessions if s.held)

    def presence(self, index: int, sent: float, answered: float) -> Presence:
        return self.sessions[index].presence(sent, answered, self.slack)

    def _hold(self, session: Session, held: bool) -> None:
        if held != session.held:
            self.held += 1 if held else -1
            session.held = held

    def add_done(self, index: int, sent: float, answered: float, timeout_ms: int,
                 status: int) -> None:
        session = self.sessions[index]
        expected = session.presence(sent, answered, self.slack)
        if status == 0x00:
            if expected is Presence.PRESENT:
                raise Surprise("add succeeded and shouldn't have (the session was cached)")
            if self.capacity and self.held - session.held >= self.capacity:
                # The cache had to make room: any other session may have gone.
                for i, other in enumerate(self.sessions):
                    if other.held and i != index:
                        other.evictable = True
            self._hold(session, True)
            session.evictable = False
            session.expiry_lo = sent + timeout_ms / 1000.0
            session.expiry_hi = answered + timeout_ms / 1000.0
        elif status == 0x65:
            if expected is Presence.ABSENT:
                raise Surprise("add failed! (the cache claims a session it must not hold)")
            session.evictable = False
        else:
            raise Surprise(f"add failed! (result 0x{status:02x})")

    def get_done(self, index: int, sent: float, answered: float,
                 data: Optional[bytes]) -> None:
        session = self.sessions[index]
        expected = session.presence(sent, answered, self.slack)
        if data is None:
            if expected is Presence.PRESENT:
                raise Surprise("get failed! (the session should be cached)")
            self._hold(session, False)
            return
        if expected is Presence.ABSENT:
            raise Surprise("get succeeded and shouldn't have!")
        if data != session.data:
            raise Surprise(f"received mismatched session ({len(data)} bytes, "
                           f"{len(session.data)} expected)")
        session.evictable = False

    def have_done(self, index: int, sent: float, answered: float, present: bool) -> None:
        session = self.sessions[index]
        expected = session.presence(sent, answered, self.slack)
        if present:
            if expected is Presence.ABSENT:
                raise Surprise("have succeeded and shouldn't have!")
            session.evictable = False
        else:
            if expected is Presence.PRESENT:
                raise Surprise("have failed! (the session should be cached)")
            self._hold(session, False)

    def remove_done(self, index: int, sent: float, answered: float, removed: bool) -> None:
        session = self.sessions[index]
        expected = session.presence(sent, answered, self.slack)
        if removed and expected is Presence.ABSENT:
            raise Surprise("remove succeeded and shouldn't have!")
        if not removed and expected is Presence.PRESENT:
            raise Surprise("remove failed! (the session should be cached)")
        self._hold(session, False)
